//! Whatever a client sends, read by the serve loop's own HTTP/1.1 path, becomes requests or is
//! left to hyper: no panic, and no head claims a byte it does not have.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::read_requests;

fuzz_target!(|wire: &[u8]| {
    read_requests(wire);
});
