//! One journal entry to one record: its fields straight from sd-journal, sorted by name with
//! repeats folded into arrays, plus `__CURSOR` and both timestamps read from the cursor.

use systemd::journal::Journal;

use crate::msgpack::write as encode;
use crate::record::{Position, Record};

/// Reused between entries, so that reading an entry allocates only its record.
#[derive(Default)]
pub(super) struct Scratch {
    /// The entry's `NAME=value` data, copied out of sd-journal (its pointers are valid only
    /// until the next field is read).
    data: Vec<u8>,
    /// Per field: where its data starts, where the `=` is, where it ends, in `data`, and
    /// the first 16 bytes of its name (zero-padded, big-endian: orders like the name).
    fields: Vec<(usize, usize, usize, u128)>,
}

/// The first 16 bytes of a field name as a number that sorts like the name does.
pub(super) fn name_prefix(name: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = name.len().min(16);
    b[..n].copy_from_slice(&name[..n]);
    u128::from_be_bytes(b)
}

/// Reads the current entry straight into its MessagePack map: every field byte-exact (text
/// as `str`, anything else as `bin`), sorted by name, a repeated field as an array in journal
/// order, plus `__CURSOR`, `__REALTIME_TIMESTAMP` and `__MONOTONIC_TIMESTAMP`.
pub(super) fn read_entry(j: &mut Journal, scratch: &mut Scratch) -> Result<Record, systemd::Error> {
    let cursor = cursor(j)?;
    // The cursor carries both timestamps (`m=`, `t=`): reading them there saves two calls
    // that each look the entry object up again.
    let (realtime, monotonic) = match cursor_times(&cursor) {
        Some(times) => times,
        None => (j.timestamp_usec()?, j.monotonic_timestamp()?.0),
    };
    let Scratch { data, fields } = scratch;
    data.clear();
    fields.clear();
    each_field(j, |bytes| {
        // Names are short: a plain scan, where memchr's setup showed in the profile.
        let Some(eq) = bytes.iter().position(|&b| b == b'=') else {
            return;
        };
        let start = data.len();
        data.extend_from_slice(bytes);
        fields.push((start, start + eq, data.len(), name_prefix(&bytes[..eq])));
    })?;
    // Field order from sd-journal is undefined: sort by name (stable, so repeated values keep
    // their order) and fold repeats into arrays. Most names differ in their first 16 bytes,
    // so most comparisons are one integer comparison.
    let data = &data[..];
    let name = |f: &(usize, usize, usize, u128)| &data[f.0..f.1];
    let value = |f: &(usize, usize, usize, u128)| &data[f.1 + 1..f.2];
    fields.sort_by(|a, b| a.3.cmp(&b.3).then_with(|| name(a).cmp(name(b))));
    let distinct = fields
        .iter()
        .enumerate()
        .filter(|(i, f)| *i == 0 || name(&fields[i - 1]) != name(f))
        .count();
    let mut map = Vec::with_capacity(data.len() + 3 * fields.len() + cursor.len() + 96);
    encode::write_map_len(&mut map, distinct + 3);
    let mut source_time = None;
    let mut i = 0;
    while i < fields.len() {
        let field_name = name(&fields[i]);
        let same = fields[i..]
            .iter()
            .take_while(|f| name(f) == field_name)
            .count();
        encode::write_name(&mut map, field_name);
        if same == 1 {
            encode::write_text(&mut map, value(&fields[i]));
        } else {
            encode::write_array_len(&mut map, same);
            for f in &fields[i..i + same] {
                encode::write_text(&mut map, value(f));
            }
        }
        if field_name == b"_SOURCE_REALTIME_TIMESTAMP" {
            source_time = std::str::from_utf8(value(&fields[i]))
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
        }
        i += same;
    }
    encode::write_str(&mut map, "__CURSOR");
    encode::write_str(&mut map, &cursor);
    encode::write_str(&mut map, "__REALTIME_TIMESTAMP");
    encode::write_uint(&mut map, realtime);
    encode::write_str(&mut map, "__MONOTONIC_TIMESTAMP");
    encode::write_uint(&mut map, monotonic);
    Ok(Record::from_msgpack(
        map,
        source_time.unwrap_or(realtime).saturating_mul(1000),
        Position::Cursor(cursor),
    ))
}

/// Calls `f` with each `NAME=value` data of the current entry, in sd-journal's order.
/// Straight through `sd_journal_enumerate_data`: the crate's wrapper splits every field at
/// its `=` (a search we do anyway) and wraps every call in an error context.
pub(super) fn each_field(j: &mut Journal, mut f: impl FnMut(&[u8])) -> Result<(), systemd::Error> {
    use foreign_types::ForeignTypeRef as _;
    use libsystemd_sys::journal as sys;
    let ptr = j.as_ptr();
    // SAFETY: a live journal handle, positioned on an entry.
    unsafe { sys::sd_journal_restart_data(ptr) };
    loop {
        let mut data: *const u8 = std::ptr::null();
        let mut len = 0usize;
        // SAFETY: as above; on success `data` points at `len` bytes that stay valid until
        // the next enumerate call, and `f` does not keep them.
        let r = unsafe { sys::sd_journal_enumerate_data(ptr, &mut data, &mut len) };
        if r < 0 {
            return Err(systemd::Error::from_raw_os_error(-r));
        }
        if r == 0 || data.is_null() {
            return Ok(());
        }
        // SAFETY: see above.
        f(unsafe { std::slice::from_raw_parts(data, len) });
    }
}

/// `(realtime, monotonic)` from a cursor's `t=` and `m=` (hexadecimal µs), as sd-journal
/// formats them (`s=…;i=…;b=…;m=…;t=…;x=…`); `None` when either is missing. One pass over
/// the bytes: read for every entry, a `split(';')` search per key showed in the profile.
pub(super) fn cursor_times(cursor: &str) -> Option<(u64, u64)> {
    let (mut realtime, mut monotonic) = (None, None);
    for part in cursor.as_bytes().split(|&b| b == b';') {
        match part {
            [b't', b'=', hex @ ..] => realtime = Some(parse_hex(hex)?),
            [b'm', b'=', hex @ ..] => monotonic = Some(parse_hex(hex)?),
            _ => {}
        }
    }
    Some((realtime?, monotonic?))
}

/// 1 to 16 hexadecimal digits as a number.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n << 4 | u64::from(v))
    })
}

/// The value of the cursor part that starts with `key` (e.g. `"i="`).
pub(super) fn cursor_part<'a>(cursor: &'a str, key: &str) -> Option<&'a str> {
    cursor.split(';').find_map(|part| part.strip_prefix(key))
}

/// The current entry's cursor. `Journal::cursor` checks sd-journal's string as lossy UTF-8 and
/// copies it: in the small-entry profile that was as much as the sort of the fields. A
/// cursor is ASCII (`s=…;i=…;b=…;m=…;t=…;x=…`); anything else is an error here.
pub(super) fn cursor(j: &Journal) -> Result<String, systemd::Error> {
    use foreign_types::ForeignTypeRef as _;
    let mut c: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: a live journal handle positioned on an entry; on success `c` is a malloc'd
    // NUL-terminated string that we own and free below.
    let r = unsafe { libsystemd_sys::journal::sd_journal_get_cursor(j.as_ptr(), &mut c) };
    if r < 0 || c.is_null() {
        return Err(systemd::Error::from_raw_os_error(-r.min(-1)));
    }
    // SAFETY: as above; the bytes are copied before the string is freed.
    let bytes = unsafe { std::ffi::CStr::from_ptr(c) }.to_bytes();
    let text = bytes.is_ascii().then(|| {
        // SAFETY: ASCII is UTF-8 (checked a word at a time; `to_str` would validate again).
        unsafe { String::from_utf8_unchecked(bytes.to_vec()) }
    });
    // SAFETY: allocated by sd_journal_get_cursor with malloc, freed once, after the copy.
    unsafe { libc::free(c as *mut std::ffi::c_void) };
    text.ok_or_else(|| systemd::Error::from_raw_os_error(libc::EBADMSG))
}

/// `(seqnum_id, seqnum)` from a cursor `s=…;i=…;…`.
pub(super) fn cursor_seqnum(cursor: &str) -> Option<(&str, u64)> {
    let num = u64::from_str_radix(cursor_part(cursor, "i=")?, 16).ok()?;
    Some((cursor_part(cursor, "s=")?, num))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seqnum_is_read_from_the_cursor_and_a_malformed_one_yields_none() {
        let c = "s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece7;b=6c7c6013a8;m=419d2;t=5c3;x=d1";
        assert_eq!(
            cursor_seqnum(c),
            Some(("739ad463348b4ceca5a9e69c95a3c93f", 0x4ece7))
        );
        assert_eq!(cursor_seqnum("b=1;m=2"), None);
    }

    #[test]
    fn both_timestamps_are_read_from_the_cursor_and_a_malformed_one_yields_none() {
        let c = "s=739ad463348b4ceca5a9e69c95a3c93f;i=4ece7;b=6c7c6013a8;m=419d2;t=5c3f0A;x=d1";
        assert_eq!(cursor_times(c), Some((0x5c3f0a, 0x419d2)));
        assert_eq!(
            cursor_times("s=ab;i=1;m=ffffffffffffffff;t=0"),
            Some((0, u64::MAX))
        );
        assert_eq!(cursor_times("s=ab;i=1;m=12"), None, "no t=");
        assert_eq!(cursor_times("s=ab;m=12;t=1g"), None, "not hex");
        assert_eq!(cursor_times("m=;t=1"), None, "empty");
        assert_eq!(
            cursor_times("m=1;t=10000000000000000"),
            None,
            "over 64 bits"
        );
    }
}
