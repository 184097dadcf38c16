//! File descriptors: raised to what the system allows, then split between what may take many
//! (a files source's open files, a forward source's connections) so that none can starve the
//! others, the checkpoint, or the sink. A unit without `LimitNOFILE` starts with a soft limit
//! of 1 024: 1 100 matching files used to exhaust it, and the directory listing that failed
//! with EMFILE made every file look deleted (re-shipped from offset 0, for ever).
//!
//! [`fit`] keeps [`RESERVED`] descriptors for everything else (checkpoint and lock files,
//! journal files, librdkafka's sockets and wake-up pipes, inotify, directory listings, the
//! HTTP endpoint, stdio) and, when the configured `max_open_files` and `max_connections`
//! together ask for more than the rest, lowers each in proportion, saying so.

use crate::config::{Config, SourceKind};

/// Descriptors kept for everything but open files and forward connections.
pub const RESERVED: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
pub fn raise_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// A source's descriptor-hungry limit and its key, if it has one.
fn hungry(kind: &mut SourceKind) -> Option<(&'static str, &mut usize)> {
    match kind {
        SourceKind::Files(f) => Some(("max_open_files", &mut f.max_open_files)),
        SourceKind::Forward(f) => Some(("max_connections", &mut f.max_connections)),
        SourceKind::Journal(_) => None,
    }
}

/// Fits the sources' descriptor-hungry limits into `limit`; one message per lowered limit.
pub fn fit(config: &mut Config, limit: u64) -> Vec<String> {
    let available = limit.saturating_sub(RESERVED).max(16);
    let asked: u64 = config
        .sources
        .iter_mut()
        .filter_map(|s| hungry(&mut s.kind).map(|(_, n)| *n as u64))
        .sum();
    if asked <= available {
        return Vec::new();
    }
    let share = |n: usize| ((n as u64 * available) / asked).max(4) as usize;
    let mut notes = Vec::new();
    for s in &mut config.sources {
        let Some((key, value)) = hungry(&mut s.kind) else {
            continue;
        };
        let lowered = share(*value);
        notes.push(format!(
            "source {:?}: {key} lowered from {} to {lowered}: the file descriptor limit is \
             {limit} ({RESERVED} kept for the checkpoint, the sink and the rest); raise \
             LimitNOFILE (systemd) or the container's nofile limit",
            s.name, *value
        ));
        *value = lowered;
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_shared_in_proportion_when_they_do_not_fit() {
        let text =
            "[[source]]\ntype = \"files\"\ninclude = [\"/x/*.log\"]\nmax_open_files = 3000\n\
                    [[source]]\ntype = \"forward\"\nname = \"f\"\nmax_connections = 1000\n\
                    [sink]\ntype = \"stdout\"\n";
        let mut config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        assert!(fit(&mut config, 10_000).is_empty());
        let notes = fit(&mut config, 1024);
        assert_eq!(notes.len(), 2, "{notes:?}");
        let limits: Vec<usize> = config
            .sources
            .iter_mut()
            .filter_map(|s| hungry(&mut s.kind).map(|(_, n)| *n))
            .collect();
        assert_eq!(limits, [672, 224]);
        assert!(limits.iter().sum::<usize>() as u64 + RESERVED <= 1024);
        assert!(
            notes[0].contains("max_open_files lowered from 3000 to 672"),
            "{}",
            notes[0]
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_limit();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit with a valid pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((soft, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }
}
