//! Any text given as an endpoint or keys file is either accepted or rejected with an error that
//! renders; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::auth::Keys;
use switchyard::config::EndpointConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match EndpointConfig::parse(text) {
        Ok(config) => {
            // A config that validates must survive its own round trip.
            let again = EndpointConfig::parse(&config.to_file_value().to_string())
                .expect("the file-shaped value of a valid config is valid");
            assert_eq!(config, again);
            let _ = config.summary();
        }
        Err(error) => {
            let _ = error.render();
            let _ = error.to_string();
        }
    }
    if let Err(error) = Keys::parse(text) {
        let _ = error.render();
    }
});
