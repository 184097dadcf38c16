//! [`StateDir`] owns the state directory: an exclusive lock (two instances on one state
//! directory would interleave checkpoints) and the checkpoint file, written atomically
//! (temp file, fsync, rename, fsync of the directory) so that a crash at any instant leaves
//! either the old or the new checkpoint, never a torn one. A checkpoint that does not parse
//! is an error for the operator (`perapera cursor reset`), never a silent restart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::Checkpoint;

/// Errors of the state directory and checkpoint file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory cannot be created or used.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "state directory {path} is in use by another perapera instance{holder}; \
         run one instance per state directory (set [state] directory to separate them)"
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// " (pid N)" when known.
        holder: String,
    },
    /// The checkpoint file does not parse.
    #[error(
        "checkpoint file {path} is unreadable: {reason}. It was left untouched. \
         To start over, run `perapera cursor reset` (moves it aside; sources then begin \
         at their start_at position)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the checkpoint failed.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The checkpoint file name inside the state directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

const LOCK_FILE: &str = "lock";

/// A locked state directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates the directory if needed and takes its lock.
    pub fn lock(dir: &Path) -> Result<StateDir, StateError> {
        let dir_err = |source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(StateError::Locked {
                    path: dir.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        // Best effort: the pid only makes the "locked" message more helpful.
        let _ = lock.set_len(0);
        let _ = write!(lock, "{}", std::process::id());
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Path of the checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    /// Reads the checkpoint; a missing file is an empty checkpoint.
    pub fn load(&self) -> Result<Checkpoint, StateError> {
        read_checkpoint(&self.checkpoint_path())
    }

    /// Writes the checkpoint atomically and durably.
    pub fn store(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let path = self.checkpoint_path();
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(checkpoint).map_err(|e| io_err(e.into()))?;
        bytes.push(b'\n');
        let tmp = self.dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let write = || -> io::Result<()> {
            // A leftover temp file goes first (if it is a symlink, the link goes, never its
            // target), then the new one is created exclusively and without following links.
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .mode(0o644)
                    .open(&tmp)?
            };
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        })
    }

    /// Moves a (possibly corrupt) checkpoint file aside; returns where it went.
    pub fn move_aside(&self) -> Result<Option<PathBuf>, StateError> {
        let path = self.checkpoint_path();
        if !path.exists() {
            return Ok(None);
        }
        let now = crate::clock::unix_secs();
        let aside = self.dir.join(format!("{CHECKPOINT_FILE}.reset-{now}"));
        fs::rename(&path, &aside).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Some(aside))
    }
}

/// Reads a checkpoint file without taking the lock (for `cursor show`).
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Checkpoint {
                version: Checkpoint::VERSION,
                ..Checkpoint::default()
            })
        }
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse_checkpoint(&bytes, path)
}

/// Parses checkpoint file contents; `path` names the file in errors. Empty, truncated or
/// non-JSON contents, another format version and unknown fields are `Corrupt`.
pub fn parse_checkpoint(bytes: &[u8], path: &Path) -> Result<Checkpoint, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(corrupt("the file is empty".into()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON ({e})")))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(Checkpoint::VERSION) => {}
        Some(v) => {
            return Err(corrupt(format!(
                "format version {v}, this perapera reads version {}",
                Checkpoint::VERSION
            )))
        }
        None => return Err(corrupt("no \"version\" number".into())),
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SourceCheckpoint;

    #[test]
    fn store_load_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::lock(dir.path()).unwrap();
        assert!(matches!(
            StateDir::lock(dir.path()),
            Err(StateError::Locked { .. })
        ));
        assert_eq!(state.load().unwrap().sources.len(), 0);
        let mut cp = Checkpoint {
            version: Checkpoint::VERSION,
            ..Checkpoint::default()
        };
        cp.sources.insert(
            "journal".into(),
            SourceCheckpoint::Journal {
                cursor: "s=1;i=2".into(),
                entry_time_us: 3,
                acked_at_ms: 4,
            },
        );
        state.store(&cp).unwrap();
        assert_eq!(state.load().unwrap(), cp);
        assert_eq!(
            state.load().unwrap().journal_cursor("journal"),
            Some("s=1;i=2")
        );
        drop(state);
        StateDir::lock(dir.path()).unwrap();
    }

    #[test]
    fn a_symlink_planted_as_the_temp_file_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let tmp = dir.path().join(format!("{CHECKPOINT_FILE}.tmp"));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        let state = StateDir::lock(dir.path()).unwrap();
        let cp = Checkpoint {
            version: Checkpoint::VERSION,
            ..Checkpoint::default()
        };
        state.store(&cp).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(state.load().unwrap(), cp);
        assert!(!fs::symlink_metadata(dir.path().join(CHECKPOINT_FILE))
            .unwrap()
            .file_type()
            .is_symlink());
        // A dangling link too.
        fs::remove_file(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        state.store(&cp).unwrap();
        assert!(!victim.exists(), "the link's target was created");
    }

    #[test]
    fn corrupt_checkpoints_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        for bad in [
            "",
            "{\"version\":1,\"sources\":{\"j\":{\"type\":\"journal\",\"cur",
            "{\"version\":2,\"sources\":{}}",
            "{\"sources\":{}}",
            "[1,2]",
        ] {
            fs::write(&path, bad).unwrap();
            let err = read_checkpoint(&path).unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("perapera cursor reset"));
        }
    }
}
