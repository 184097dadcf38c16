//! Giving freed memory back to the operating system at the moments we know a lot was just
//! freed (a forward connection that held a large request closed). The allocator is the
//! binary's choice (`main.rs` installs mimalloc and its collect function here); the library
//! only says when. mimalloc purges freed pages after a delay, but only when it is called
//! again: after a flood of large requests ends, an idle listener would keep them resident.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static RELEASE: OnceLock<fn()> = OnceLock::new();
static LAST_MS: AtomicU64 = AtomicU64::new(0);

/// Installs the allocator's "return free memory now" function (once; later calls are ignored).
pub fn set_release(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Asks the allocator to return free memory, at most once per 100 ms.
pub fn release() {
    let Some(f) = RELEASE.get() else { return };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 100
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        f();
    }
}
