//! The forward listener's decoding path on arbitrary bytes: frame scanning (as bytes arrive
//! in pieces), request decoding, JSON requests and the handshake messages must never panic,
//! and a frame the scanner calls complete must be exactly what the decoder consumes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perapera::forward::{self, frame, handshake};

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        // Every prefix is either incomplete, complete or an error: never a panic; and a
        // scanner resumed over the stream in pieces agrees with a fresh scan of the whole.
        let mut resumed = frame::Scanner::default();
        let mut last = Ok(frame::Scan::Incomplete(0));
        for cut in [rest.len() / 3, rest.len() / 2, rest.len()] {
            last = resumed.scan(&rest[..cut], LIMIT);
            if !matches!(last, Ok(frame::Scan::Incomplete(_))) {
                break;
            }
        }
        let whole = frame::scan(rest, LIMIT);
        if let Ok(frame::Scan::Complete(n)) = last {
            assert_eq!(frame::scan(&rest[..n], LIMIT), Ok(frame::Scan::Complete(n)));
        } else {
            assert_eq!(last, whole);
        }
        match whole {
            Ok(frame::Scan::Complete(n)) => {
                let frame = &rest[..n];
                if let Ok(Some(request)) = forward::decode_request(frame, LIMIT) {
                    // What we decoded encodes and decodes to the same events.
                    let again = forward::decode_request(&request.encode(), LIMIT)
                        .expect("our own encoding decodes")
                        .expect("a request");
                    assert_eq!(again.tag, request.tag);
                    assert_eq!(again.mode, request.mode);
                    assert_eq!(again.entries, request.entries);
                    assert_eq!(again.options.chunk, request.options.chunk);
                }
                let _ = forward::decode_ack(frame);
                let _ = handshake::Helo::decode(frame);
                let _ = handshake::Ping::decode(frame);
                let _ = handshake::Pong::decode(frame);
                rest = &rest[n..];
            }
            _ => break,
        }
    }
    if let Ok(frame::Scan::Complete(n)) = frame::JsonScanner::default().scan(data, LIMIT) {
        let _ = forward::decode_json(&data[..n], LIMIT);
    }
});
