//! The configuration parser on arbitrary text: `Config::parse` must return a config or an
//! error naming the key, never panic; the duration and size parsers likewise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perapera::config::{parse_duration, Config};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::parse(&text, std::path::Path::new("fuzz.toml")) {
        // Every error renders to a message that names the file.
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
    let _ = parse_duration(&text);
});
