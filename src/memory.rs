//! Giving freed memory back to the operating system at the moments we know a lot was just
//! freed (a forward connection that held a large request closed). The allocator is the
//! binary's choice (`main.rs` installs mimalloc and its collect function here); the library
//! only says when. mimalloc purges freed pages after a delay, but only when it is called
//! again: after a flood of large requests ends, an idle listener would keep them resident.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Installs the allocator's "return free memory now" function (once; later calls are ignored).
pub fn set_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Asks the allocator to return free memory now (callers keep this rare: it walks the
/// allocator's heaps).
pub fn release() {
    if let Some(f) = RELEASE.get() {
        f();
    }
}
