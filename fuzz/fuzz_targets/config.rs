//! Any text as a config: parsing must return a config or located errors, never panic, and
//! every error must point inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimiter::config::{Config, Origin};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::parse("fuzz.toml", text, &|_| None) {
        assert!(!errors.0.is_empty());
        let lines = text.split('\n').count();
        for e in &errors.0 {
            if let Origin::File { line, column, .. } = e.origin {
                assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
                assert!(column >= 1);
            }
        }
    }
});
