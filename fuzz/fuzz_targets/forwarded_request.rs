//! Whatever a client sends, each request the serve loop's own HTTP/1.1 path accepts is encoded
//! as the gateway forwards it to an instance and read back by httparse: the same method, target,
//! end-to-end headers and body, one Host, one framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::forward_requests;

fuzz_target!(|wire: &[u8]| {
    forward_requests(wire);
});
