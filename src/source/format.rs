//! Line formats of container log files and the Kubernetes metadata in their paths.
//!
//! containerd and CRI-O write `<RFC3339Nano> <stdout|stderr> <P|F> <text>`: a long line is cut
//! into `P` (partial) pieces ended by an `F` (full) piece. Docker's json-file driver writes
//! `{"log":"...","stream":"stdout","time":"..."}` per line, and a `log` without a trailing
//! `\n` is a partial piece. Parsing here is pure: the files source joins the pieces and ships a
//! line it cannot parse as it is, never drops it.

use std::path::Path;

/// Which output stream a container line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn parse(s: &[u8]) -> Option<Stream> {
        match s {
            b"stdout" => Some(Stream::Stdout),
            b"stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// A line that does not have the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a {format} log line: {reason}")]
pub struct FormatError {
    format: &'static str,
    reason: &'static str,
}

/// One parsed CRI line (borrowing the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLine<'a> {
    /// The runtime's timestamp, nanoseconds since the epoch.
    pub time_ns: u64,
    /// stdout or stderr.
    pub stream: Stream,
    /// `P`: more pieces of this line follow.
    pub partial: bool,
    /// The text (without the line terminator).
    pub text: &'a [u8],
}

/// Parses `<RFC3339Nano> <stdout|stderr> <P|F> <text>` (the line without its `\n`).
pub fn parse_cri(line: &[u8]) -> Result<CriLine<'_>, FormatError> {
    let err = |reason| FormatError {
        format: "CRI",
        reason,
    };
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = parts.next().ok_or(err("empty line"))?;
    let stream = parts.next().ok_or(err("no stream field"))?;
    let tag = parts.next().ok_or(err("no P/F tag"))?;
    // An empty F line ("... stdout F") has no fourth field.
    let text = parts.next().unwrap_or_default();
    let time_ns = std::str::from_utf8(time)
        .ok()
        .and_then(parse_rfc3339_ns)
        .ok_or(err("invalid RFC 3339 timestamp"))?;
    let stream = Stream::parse(stream).ok_or(err("stream is not stdout or stderr"))?;
    // The tag may carry more flags after a ':' in future runtimes ("F:x"); the first one counts.
    let partial = match tag.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(err("tag is not P or F")),
    };
    Ok(CriLine {
        time_ns,
        stream,
        partial,
        text,
    })
}

/// One parsed docker json-file line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerLine {
    /// `time` as written.
    pub time: Option<String>,
    /// `time`, nanoseconds since the epoch, when present and valid.
    pub time_ns: Option<u64>,
    /// `stream`, when it is stdout or stderr.
    pub stream: Option<Stream>,
    /// `log` did not end in `\n`: more pieces follow.
    pub partial: bool,
    /// `log` without its trailing `\n`.
    pub text: String,
}

#[derive(serde::Deserialize)]
struct RawDocker {
    log: String,
    stream: Option<String>,
    time: Option<String>,
}

/// Parses `{"log":"...","stream":"...","time":"..."}`.
pub fn parse_docker(line: &[u8]) -> Result<DockerLine, FormatError> {
    let raw: RawDocker = serde_json::from_slice(line).map_err(|_| FormatError {
        format: "docker JSON",
        reason: "not a JSON object with a string \"log\"",
    })?;
    let mut text = raw.log;
    let partial = !text.ends_with('\n');
    if !partial {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(DockerLine {
        time_ns: raw.time.as_deref().and_then(parse_rfc3339_ns),
        time: raw.time,
        stream: raw
            .stream
            .as_deref()
            .map(str::as_bytes)
            .and_then(Stream::parse),
        partial,
        text,
    })
}

/// Parses an RFC 3339 timestamp with up to nanosecond precision
/// (`2016-10-06T00:17:09.669794202Z`, `2016-10-06T02:17:09+02:00`) into nanoseconds since the
/// epoch. Times before 1970 are rejected.
pub fn parse_rfc3339_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = frac[..digits].parse::<i64>().ok()? * 10i64.pow(9 - digits as u32);
        rest = &frac[digits..];
    }
    let offset_secs = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let d = |i: usize| i64::from(digits[i] - b'0');
            let secs = (d(0) * 10 + d(1)) * 3600 + (d(2) * 10 + d(3)) * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(nanos as u64)
}

/// Kubernetes metadata of a pod log path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLog {
    /// `kubernetes.namespace`.
    pub namespace: String,
    /// `kubernetes.pod`.
    pub pod: String,
    /// `kubernetes.pod_uid`.
    pub pod_uid: String,
    /// `kubernetes.container`.
    pub container: String,
}

/// Reads `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log`. Namespace and pod names
/// are DNS labels/subdomains, which cannot contain `_`, so the split is unambiguous.
pub fn kubernetes_pod_log(path: &Path) -> Option<PodLog> {
    let rest = path.strip_prefix("/var/log/pods").ok()?;
    let mut parts = rest.iter();
    let pod_dir = parts.next()?.to_str()?;
    let container = parts.next()?.to_str()?;
    let file = parts.next()?.to_str()?;
    if parts.next().is_some() || !file.ends_with(".log") {
        return None;
    }
    let mut fields = pod_dir.splitn(3, '_');
    let (namespace, pod, pod_uid) = (fields.next()?, fields.next()?, fields.next()?);
    if [namespace, pod, pod_uid, container]
        .iter()
        .any(|s| s.is_empty())
    {
        return None;
    }
    Some(PodLog {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        pod_uid: pod_uid.to_string(),
        container: container.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc3339_times_with_fractions_and_offsets_parse_to_epoch_nanoseconds() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ns("2016-10-06T00:17:09.669794202Z"),
            Some(1_475_713_029_669_794_202)
        );
        assert_eq!(
            parse_rfc3339_ns("2016-10-06T02:17:09.5+02:00"),
            Some(1_475_713_029_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2024-02-29T23:59:59-01:00"),
            Some(1_709_254_799_000_000_000)
        );
        for bad in [
            "",
            "2016-10-06",
            "2016-13-06T00:17:09Z",
            "2016-10-06T00:17:09",
            "2016-10-06T00:17:09.Z",
            "2016-10-06T00:17:09.1234567890Z",
            "1969-12-31T23:59:59Z",
            "2016-10-06T00:17:09+0200",
            "２016-10-06T00:17:09Z",
        ] {
            assert_eq!(parse_rfc3339_ns(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cri_lines_give_time_stream_partial_flag_and_text() {
        let l = parse_cri(b"2016-10-06T00:17:09.669794202Z stdout F hello world").unwrap();
        assert_eq!(l.time_ns, 1_475_713_029_669_794_202);
        assert_eq!(l.stream, Stream::Stdout);
        assert!(!l.partial);
        assert_eq!(l.text, b"hello world");
        let l = parse_cri(b"2016-10-06T00:17:09.669794202Z stderr P part one ").unwrap();
        assert!(l.partial);
        assert_eq!(l.stream, Stream::Stderr);
        assert_eq!(l.text, b"part one ");
        let l = parse_cri(b"2016-10-06T00:17:09Z stdout F").unwrap();
        assert_eq!(l.text, b"");
        let l = parse_cri(b"2016-10-06T00:17:09Z stdout F \xff\xfe").unwrap();
        assert_eq!(l.text, b"\xff\xfe");
        for bad in [
            &b""[..],
            b"hello",
            b"2016-10-06T00:17:09Z stdout",
            b"2016-10-06T00:17:09Z stdin F x",
            b"2016-10-06T00:17:09Z stdout X x",
            b"yesterday stdout F x",
        ] {
            assert!(
                parse_cri(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn docker_json_lines_give_text_without_newline_stream_time_and_partial_flag() {
        let l =
            parse_docker(br#"{"log":"hello\n","stream":"stderr","time":"2019-01-01T00:00:00.5Z"}"#)
                .unwrap();
        assert_eq!(l.text, "hello");
        assert!(!l.partial);
        assert_eq!(l.stream, Some(Stream::Stderr));
        assert_eq!(l.time_ns, Some(1_546_300_800_500_000_000));
        let l = parse_docker(br#"{"log":"a long li","stream":"stdout","time":"x"}"#).unwrap();
        assert!(l.partial);
        assert_eq!(l.time_ns, None);
        let l = parse_docker(br#"{"log":"crlf\r\n"}"#).unwrap();
        assert_eq!(l.text, "crlf");
        assert!(parse_docker(b"not json").is_err());
        assert!(parse_docker(br#"{"msg":"x"}"#).is_err());
    }

    #[test]
    fn pod_log_paths_give_namespace_pod_uid_and_container_and_others_none() {
        let p = kubernetes_pod_log(Path::new(
            "/var/log/pods/kube-system_coredns-5d78c9869d-abcde_6f1e2b1c-1234-4d5e-9f00-0123456789ab/coredns/0.log",
        ))
        .unwrap();
        assert_eq!(p.namespace, "kube-system");
        assert_eq!(p.pod, "coredns-5d78c9869d-abcde");
        assert_eq!(p.pod_uid, "6f1e2b1c-1234-4d5e-9f00-0123456789ab");
        assert_eq!(p.container, "coredns");
        for bad in [
            "/var/log/containers/x.log",
            "/var/log/pods/ns_pod/c/0.log",
            "/var/log/pods/ns_pod_uid/c/0.txt",
            "/var/log/pods/ns_pod_uid/c/sub/0.log",
            "/var/log/pods/ns_pod_uid/0.log",
        ] {
            assert_eq!(kubernetes_pod_log(Path::new(bad)), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_cri_line_parses_back_to_what_was_formatted(
            secs in 0u64..4_000_000_000,
            nanos in 0u64..1_000_000_000,
            stderr in any::<bool>(),
            partial in any::<bool>(),
            text in proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..200),
        ) {
            let days = secs / 86_400;
            let rem = secs % 86_400;
            // Format the date the slow, obvious way (by counting days) to check the parser.
            let mut y = 1970u64;
            let mut d = days;
            let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
            while d >= if leap(y) { 366 } else { 365 } {
                d -= if leap(y) { 366 } else { 365 };
                y += 1;
            }
            let lengths = [31, if leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let mut m = 0;
            while d >= lengths[m] {
                d -= lengths[m];
                m += 1;
            }
            let stamp = format!(
                "{y:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
                m + 1, d + 1, rem / 3600, rem % 3600 / 60, rem % 60
            );
            let stream = if stderr { "stderr" } else { "stdout" };
            let tag = if partial { "P" } else { "F" };
            let mut line = format!("{stamp} {stream} {tag} ").into_bytes();
            line.extend_from_slice(&text);
            let parsed = parse_cri(&line).unwrap();
            prop_assert_eq!(parsed.time_ns, secs * 1_000_000_000 + nanos);
            prop_assert_eq!(parsed.stream.as_str(), stream);
            prop_assert_eq!(parsed.partial, partial);
            prop_assert_eq!(parsed.text, &text[..]);
        }
    }
}
