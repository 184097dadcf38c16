//! Which file is this? (device, inode) plus a fingerprint of the first bytes.
//!
//! Paths lie under rotation (`app.log` is a different file after a rename), and inodes are
//! reused once a rotated file is deleted, so a new `app.log` can get the old inode. The
//! fingerprint catches that: it is a hash of the first `len` bytes (at most
//! [`FINGERPRINT_BYTES`]), stored with `len`, so a file shorter than that is identified by what
//! it has and re-checked over the same bytes later. The hash is FNV-1a 64, fixed here because
//! it is persisted in checkpoints and must not change between versions (`DefaultHasher` may).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// Bytes hashed for the fingerprint.
pub const FINGERPRINT_BYTES: usize = 256;

/// The identity of a file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// FNV-1a 64 of the first `fingerprint_len` bytes.
    pub fingerprint: u64,
    /// How many bytes the fingerprint covers (0 for an empty file).
    pub fingerprint_len: u32,
}

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Reads up to `len` bytes from the start of `file` with `pread`: the file's read position
/// (where the tailer continues) does not move.
fn head(file: &mut File, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

impl FileId {
    /// Identifies an open file.
    pub fn of(file: &mut File) -> io::Result<FileId> {
        let meta = file.metadata()?;
        let bytes = head(file, FINGERPRINT_BYTES)?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            fingerprint: fnv1a(&bytes),
            fingerprint_len: bytes.len() as u32,
        })
    }

    /// True if `file` is the file this id was taken from: same device and inode, and the same
    /// bytes where the fingerprint was taken. A file that grew since still matches; one that
    /// shrank below the fingerprint (truncated) or holds other bytes (inode reused) does not.
    pub fn matches(&self, file: &mut File) -> io::Result<bool> {
        let meta = file.metadata()?;
        if meta.dev() != self.dev || meta.ino() != self.ino {
            return Ok(false);
        }
        self.same_content(file)
    }

    /// True if `file` (whatever its inode) starts with the bytes this id was taken from: a
    /// copy of this file (copytruncate's rotated copy).
    pub fn same_content(&self, file: &mut File) -> io::Result<bool> {
        let bytes = head(file, self.fingerprint_len as usize)?;
        Ok(bytes.len() == self.fingerprint_len as usize && fnv1a(&bytes) == self.fingerprint)
    }

    /// The same file's id over more bytes, once it has grown past the old fingerprint.
    pub fn refreshed(&self, file: &mut File) -> io::Result<FileId> {
        if self.fingerprint_len as usize >= FINGERPRINT_BYTES {
            return Ok(*self);
        }
        FileId::of(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of FNV-1a 64 (draft-eastlake-fnv).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn identifying_does_not_move_the_read_position() {
        use std::io::{Read, Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut f = File::open(&path).unwrap();
        f.seek(SeekFrom::Start(4)).unwrap();
        let id = FileId::of(&mut f).unwrap();
        assert!(id.matches(&mut f).unwrap());
        let mut rest = String::new();
        f.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "456789");
    }

    #[test]
    fn growth_keeps_identity_truncation_and_reuse_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut w = File::create(&path).unwrap();
        w.write_all(b"first line\n").unwrap();
        let mut r = File::open(&path).unwrap();
        let id = FileId::of(&mut r).unwrap();
        assert_eq!(id.fingerprint_len, 11);
        w.write_all(&[b'x'; 1000]).unwrap();
        assert!(
            id.matches(&mut r).unwrap(),
            "a file that grew is the same file"
        );
        let grown = id.refreshed(&mut r).unwrap();
        assert_eq!(grown.fingerprint_len as usize, FINGERPRINT_BYTES);
        assert!(grown.matches(&mut r).unwrap());
        // copytruncate, then new content: same inode, other bytes.
        w.set_len(0).unwrap();
        let mut w2 = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w2.write_all(b"other content\n").unwrap();
        assert!(!grown.matches(&mut r).unwrap());
        // A different file (another inode) never matches.
        let other = dir.path().join("other.log");
        std::fs::write(&other, b"first line\n").unwrap();
        assert!(!id.matches(&mut File::open(&other).unwrap()).unwrap());
    }
}
