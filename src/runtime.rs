//! A named OS thread running a single-threaded tokio runtime: what the forward listener and
//! the metrics endpoint each run on, so that neither shares the pipeline's runtime (a wedged
//! pipeline must not silence `/health`; a flood of forward connections must not slow acks).

use std::future::Future;
use std::thread::JoinHandle;

/// Starts thread `name` running `task` to completion on its own current-thread runtime. If
/// the runtime cannot be built, the thread logs why (naming `what`) and ends.
pub fn spawn(
    name: String,
    what: String,
    task: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(task),
            Err(e) => tracing::error!(error = %e, "Cannot start the runtime of the {what}"),
        }
    })
}
