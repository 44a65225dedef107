//! Whatever an instance answers, the head the gateway writes back to an HTTP/1.1 or HTTP/1.0
//! client, read by httparse, has the instance's status and end-to-end lines in order, and one
//! framing that agrees with the instance's (never chunks for HTTP/1.0).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::pass_answer;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    pass_answer(wire, flags & 1 == 1, flags & 2 == 2);
});
