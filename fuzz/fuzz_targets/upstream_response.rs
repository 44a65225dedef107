//! Whatever an instance answers, fed to the gateway's HTTP/1.1 response reader in pieces of any
//! size, ends as a response or an error: no panic, no hang, never more body than the framing
//! allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::read_response_in_steps;

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let step = usize::from(control & 0x7f) + 1;
    let to_head_request = control & 0x80 != 0;
    read_response_in_steps(wire, step, to_head_request);
});
