//! The checkpoint reader on arbitrary bytes: a checkpoint or a `Corrupt` error, never a
//! panic; what it accepts writes back and reads again to the same checkpoint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perapera::checkpoint::{parse_checkpoint, StateError};

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("checkpoint.json");
    match parse_checkpoint(data, path) {
        Ok(cp) => {
            let bytes = serde_json::to_vec(&cp).expect("a checkpoint serializes");
            let again = parse_checkpoint(&bytes, path).expect("what we write, we read");
            assert_eq!(again, cp);
        }
        Err(StateError::Corrupt { .. }) => {}
        Err(e) => panic!("parsing bytes gave a non-corrupt error: {e}"),
    }
});
