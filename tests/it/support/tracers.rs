//! Tracer writers for the chaos and exactly-once tests.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{entry, write_journal, Entry};

/// How fast [`Tracers`] write.
#[derive(Clone, Copy)]
pub struct Rates {
    pub batch: u64,
    pub batch_pause: Duration,
    pub line_pause: Duration,
    pub rotate_every: u64,
}

/// Journal tracers (`SEQ`, "j<n>", appended with systemd-journal-remote) and file lines
/// ("f-<n>", `app.log` rotated by rename to `app.log.<n>`) written at a steady rate until
/// stopped.
pub struct Tracers {
    stop: Arc<AtomicBool>,
    journal: Arc<AtomicU64>,
    files: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Tracers {
    /// `rates`: journal tracers per batch, the pause between batches, the pause between
    /// lines, and lines per file before it is rotated.
    pub fn start(journal: &Path, logs: &Path, rates: Rates) -> Tracers {
        let Rates {
            batch,
            batch_pause,
            line_pause,
            rotate_every,
        } = rates;
        let stop = Arc::new(AtomicBool::new(false));
        let (jn, fnum) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let journal_writer = {
            let (stop, n, journal) = (stop.clone(), jn.clone(), journal.to_path_buf());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let first = n.load(Ordering::Relaxed);
                    let entries: Vec<Entry> = (first..first + batch)
                        .map(|i| entry(i, 1_700_000_000_000_000 + i * 1000))
                        .collect();
                    write_journal(&journal, &entries);
                    n.store(first + batch, Ordering::Relaxed);
                    std::thread::sleep(batch_pause);
                }
            })
        };
        let files_writer = {
            let (stop, n, logs) = (stop.clone(), fnum.clone(), logs.to_path_buf());
            std::thread::spawn(move || {
                let path = logs.join("app.log");
                let mut f = std::fs::File::create(&path).unwrap();
                let mut rotations = 0;
                while !stop.load(Ordering::Relaxed) {
                    let i = n.load(Ordering::Relaxed);
                    writeln!(f, "f-{i}").unwrap();
                    n.store(i + 1, Ordering::Relaxed);
                    if (i + 1) % rotate_every == 0 {
                        rotations += 1;
                        std::fs::rename(&path, logs.join(format!("app.log.{rotations}"))).unwrap();
                        f = std::fs::File::create(&path).unwrap();
                    }
                    std::thread::sleep(line_pause);
                }
            })
        };
        Tracers {
            stop,
            journal: jn,
            files: fnum,
            threads: vec![journal_writer, files_writer],
        }
    }

    /// Stops them; every tracer written.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let (jn, fnum) = (
            self.journal.load(Ordering::Relaxed),
            self.files.load(Ordering::Relaxed),
        );
        (0..jn)
            .map(|i| format!("j{i}"))
            .chain((0..fnum).map(|i| format!("f-{i}")))
            .collect()
    }
}
