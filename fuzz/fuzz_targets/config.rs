//! The configuration file: any text is a configuration or an error naming what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = config::Config::from_toml(text) {
        assert!(!e.to_string().is_empty());
    }
});
