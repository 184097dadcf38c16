//! The host name perapera stamps on what it reads.

/// The host name (`host` field): `$PERAPERA_HOSTNAME` if set (the DaemonSet passes the
/// node's name: inside a pod, gethostname is the pod's name), else gethostname(2).
pub fn hostname() -> String {
    if let Some(h) = std::env::var("PERAPERA_HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
    {
        return h.trim().to_string();
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::from("localhost");
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
