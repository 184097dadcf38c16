//! Evaluating one include glob against the file system, for the files source.
//!
//! The `glob` crate's walker follows symlinked directories without remembering where it has
//! been (two links to `.` under `**` made a scan that never ends) and reports a directory it
//! cannot list as an error the caller cannot tell from "nothing here". This walker:
//!
//! - matches one path component at a time (`*`, `?`, `[..]` within a component, `**` for any
//!   number of directories), with the `glob` crate's [`glob::Pattern`] per component;
//! - enters every directory at most once per pattern position, by (device, inode), so symlink
//!   loops end and a file reached twice is reported once;
//! - returns the directories it could not list (EMFILE, EACCES, ...) beside the matches, so
//!   that the caller treats what lies under them as *unknown*, never as *gone*.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// What one walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Paths that match, sorted (not yet checked to be regular files).
    pub matches: Vec<PathBuf>,
    /// Directories (or literal path components) that could not be read, with why.
    pub unreadable: Vec<(PathBuf, std::io::Error)>,
}

impl Walk {
    /// True if `path` lies under a directory this walk could not read: whether it still
    /// matches is unknown.
    pub fn unknown(&self, path: &Path) -> bool {
        self.unreadable.iter().any(|(dir, _)| path.starts_with(dir))
    }
}

enum Part {
    Literal(std::ffi::OsString),
    Pattern(glob::Pattern),
    /// `**`: zero or more directories.
    Any,
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Walks the absolute glob `pattern`.
pub fn walk(pattern: &str) -> Result<Walk, glob::PatternError> {
    let mut start = PathBuf::new();
    let mut parts: Vec<Part> = Vec::new();
    for c in Path::new(pattern).components() {
        match c {
            Component::RootDir | Component::Prefix(_) if parts.is_empty() => start.push(c),
            Component::CurDir => {}
            Component::Normal(name) => {
                let text = name.to_string_lossy();
                if text == "**" {
                    parts.push(Part::Any);
                } else if has_wildcard(&text) {
                    parts.push(Part::Pattern(glob::Pattern::new(&text)?));
                } else if parts.is_empty() {
                    start.push(name);
                } else {
                    parts.push(Part::Literal(name.to_os_string()));
                }
            }
            other => parts.push(Part::Literal(other.as_os_str().to_os_string())),
        }
    }
    let mut walk = Walk::default();
    if parts.is_empty() {
        // No wildcard: the path itself.
        match std::fs::symlink_metadata(&start) {
            Ok(_) => walk.matches.push(start),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => walk.unreadable.push((start, e)),
        }
        return Ok(walk);
    }
    // (directory, index of the part to match inside it)
    let mut stack: Vec<(PathBuf, usize)> = Vec::new();
    let mut entered: HashSet<(u64, u64, usize)> = HashSet::new();
    let mut found: HashSet<PathBuf> = HashSet::new();
    enter(&start, 0, &mut stack, &mut entered, &mut walk);
    while let Some((dir, i)) = stack.pop() {
        let last = i + 1 == parts.len();
        match &parts[i] {
            Part::Literal(name) => {
                let next = dir.join(name);
                if last {
                    match std::fs::symlink_metadata(&next) {
                        Ok(_) => push(&mut walk, &mut found, next),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => walk.unreadable.push((next, e)),
                    }
                } else {
                    enter(&next, i + 1, &mut stack, &mut entered, &mut walk);
                }
            }
            Part::Pattern(p) => {
                for name in list(&dir, &mut walk) {
                    if !p.matches(&name.to_string_lossy()) {
                        continue;
                    }
                    let next = dir.join(&name);
                    if last {
                        push(&mut walk, &mut found, next);
                    } else {
                        enter(&next, i + 1, &mut stack, &mut entered, &mut walk);
                    }
                }
            }
            Part::Any => {
                // Zero directories: the next part applies here; one more: stay on `**`.
                if last {
                    push(&mut walk, &mut found, dir.clone());
                } else {
                    stack.push((dir.clone(), i + 1));
                }
                for name in list(&dir, &mut walk) {
                    let next = dir.join(&name);
                    if last && !next.is_dir() {
                        push(&mut walk, &mut found, next);
                    } else {
                        enter(&next, i, &mut stack, &mut entered, &mut walk);
                    }
                }
            }
        }
    }
    walk.matches.sort();
    Ok(walk)
}

fn push(walk: &mut Walk, found: &mut HashSet<PathBuf>, path: PathBuf) {
    if found.insert(path.clone()) {
        walk.matches.push(path);
    }
}

/// Queues directory `dir` for part `i`, unless it is not a directory or was entered for `i`.
fn enter(
    dir: &Path,
    i: usize,
    stack: &mut Vec<(PathBuf, usize)>,
    entered: &mut HashSet<(u64, u64, usize)>,
    walk: &mut Walk,
) {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {
            if entered.insert((m.dev(), m.ino(), i)) {
                stack.push((dir.to_path_buf(), i));
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => walk.unreadable.push((dir.to_path_buf(), e)),
    }
}

/// The names in `dir`, sorted; an unreadable directory is recorded and lists nothing.
fn list(dir: &Path, walk: &mut Walk) -> Vec<std::ffi::OsString> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            walk.unreadable.push((dir.to_path_buf(), e));
            return Vec::new();
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => names.push(e.file_name()),
            Err(e) => {
                // A listing cut short is as unknown as one that failed.
                walk.unreadable.push((dir.to_path_buf(), e));
                break;
            }
        }
    }
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x\n").unwrap();
    }

    fn names(w: &Walk, root: &Path) -> Vec<String> {
        w.matches
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn components_match_like_glob_and_double_star_spans_directories() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "a.log",
            "b.txt",
            "x/c.log",
            "x/y/d.log",
            "pods/ns_p_1/app/0.log",
            ".h.log",
        ] {
            touch(&r.join(f));
        }
        let w = walk(&format!("{}/*.log", r.display())).unwrap();
        assert_eq!(names(&w, r), [".h.log", "a.log"]);
        let w = walk(&format!("{}/**/*.log", r.display())).unwrap();
        assert_eq!(
            names(&w, r),
            [
                ".h.log",
                "a.log",
                "pods/ns_p_1/app/0.log",
                "x/c.log",
                "x/y/d.log"
            ]
        );
        let w = walk(&format!("{}/pods/*_*_*/*/[0-9].log", r.display())).unwrap();
        assert_eq!(names(&w, r), ["pods/ns_p_1/app/0.log"]);
        let w = walk(&format!("{}/x/y/d.log", r.display())).unwrap();
        assert_eq!(names(&w, r), ["x/y/d.log"]);
        assert!(walk(&format!("{}/missing/*.log", r.display()))
            .unwrap()
            .matches
            .is_empty());
    }

    #[test]
    fn symlink_loops_end_and_each_file_is_reported_once() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("logs/app.log"));
        std::os::unix::fs::symlink(".", r.join("logs/self")).unwrap();
        std::os::unix::fs::symlink("..", r.join("logs/up")).unwrap();
        std::os::unix::fs::symlink(r.join("logs"), r.join("logs/again")).unwrap();
        let w = walk(&format!("{}/**/*.log", r.display())).unwrap();
        // Reached through every link, but each directory is entered once per position.
        assert!(w.matches.len() <= 4, "{:?}", w.matches);
        assert!(w.matches.contains(&r.join("logs/app.log")));
        assert!(w.unreadable.is_empty());
    }

    #[test]
    fn an_unreadable_directory_is_reported_not_taken_for_empty() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("a/one.log"));
        // A directory component that cannot be resolved (ELOOP; EMFILE and EACCES take the
        // same path) is unreadable, not absent.
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        let w = walk(&format!("{}/loop/*.log", r.display())).unwrap();
        assert!(w.matches.is_empty());
        assert_eq!(w.unreadable.len(), 1, "{:?}", w.unreadable);
        assert!(w.unknown(&r.join("loop/two.log")));
        assert!(!w.unknown(&r.join("a/one.log")));
        let w = walk(&format!("{}/*/*.log", r.display())).unwrap();
        assert_eq!(names(&w, r), ["a/one.log"]);
        assert_eq!(
            w.unreadable.len(),
            1,
            "the looping link: {:?}",
            w.unreadable
        );
    }
}
