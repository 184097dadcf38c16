//! The container log line parsers (CRI, docker json-file), the RFC 3339 timestamp parser and
//! the /var/log/pods path parser on arbitrary bytes: never a panic; a parsed CRI line's text
//! is the tail of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perapera::source::format::{kubernetes_pod_log, parse_cri, parse_docker, parse_rfc3339_ns};

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = parse_cri(data) {
        assert!(data.ends_with(line.text));
    }
    let _ = parse_docker(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_rfc3339_ns(text);
    }
    use std::os::unix::ffi::OsStrExt;
    let _ = kubernetes_pod_log(std::path::Path::new(std::ffi::OsStr::from_bytes(data)));
});
