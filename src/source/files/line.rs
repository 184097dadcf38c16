//! One line to one record: the message, the container runtime's fields, the source's own
//! fields and the file's position.

use std::path::Path;

use super::Tracked;
use crate::config::FilesConfig;
use crate::msgpack::write as encode;
use crate::record::{Position, Record, Value};
use crate::source::format::{self, Stream};
use crate::source::lines::Part;

/// What a line carries besides its text.
#[derive(Default)]
pub(super) struct Meta<'a> {
    pub(super) stream: Option<Stream>,
    /// The container runtime's timestamp text.
    pub(super) time: Option<&'a str>,
    pub(super) time_ns: Option<u64>,
    pub(super) part: Option<Part>,
    /// Why the line could not be parsed per the format (`_PERAPERA_UNPARSED`).
    pub(super) unparsed: Option<&'a str>,
}

/// Encodes a line's record straight into its MessagePack map: `message` (text, or bytes when
/// it is not UTF-8), `stream`, `time`, the file's fields, then the part and parse markers.
pub(super) fn make_record(t: &Tracked, message: &[u8], meta: Meta<'_>, offset: u64) -> Record {
    let fixed: usize = t.fields.iter().map(|(n, v)| n.len() + v.len() + 10).sum();
    let mut map = Vec::with_capacity(message.len() + fixed + 64);
    let n = 1
        + usize::from(meta.stream.is_some())
        + usize::from(meta.time.is_some())
        + t.fields.len()
        + meta.part.map_or(0, |p| 1 + usize::from(p.last))
        + usize::from(meta.unparsed.is_some());
    encode::write_map_len(&mut map, n);
    encode::write_str(&mut map, "message");
    encode::write_text(&mut map, message);
    if let Some(s) = meta.stream {
        encode::write_str(&mut map, "stream");
        encode::write_str(&mut map, s.as_str());
    }
    if let Some(time) = meta.time {
        encode::write_str(&mut map, "time");
        encode::write_str(&mut map, time);
    }
    encode::fields_entries_into(&t.fields, &mut map);
    if let Some(p) = meta.part {
        encode::write_str(&mut map, "_PERAPERA_PART");
        encode::write_uint(&mut map, u64::from(p.index));
        if p.last {
            encode::write_str(&mut map, "_PERAPERA_PART_LAST");
            encode::write_uint(&mut map, 1);
        }
    }
    if let Some(reason) = meta.unparsed {
        encode::write_str(&mut map, "_PERAPERA_UNPARSED");
        encode::write_str(&mut map, reason);
    }
    Record::from_msgpack(
        map,
        meta.time_ns.unwrap_or_else(crate::clock::coarse_unix_ns),
        Position::File {
            file: t.file_ref.clone(),
            offset,
        },
    )
}

/// The fields every record of this file carries.
pub(super) fn file_fields(path: &Path, host: &str, config: &FilesConfig) -> Vec<(String, Value)> {
    let mut fields = vec![
        (
            "path".to_string(),
            Value::from_bytes(path.as_os_str().as_encoded_bytes().to_vec()),
        ),
        ("host".to_string(), Value::Str(host.to_string())),
    ];
    if let Some(pod) = format::kubernetes_pod_log(path) {
        fields.push(("kubernetes.namespace".into(), Value::Str(pod.namespace)));
        fields.push(("kubernetes.pod".into(), Value::Str(pod.pod)));
        fields.push(("kubernetes.pod_uid".into(), Value::Str(pod.pod_uid)));
        fields.push(("kubernetes.container".into(), Value::Str(pod.container)));
    }
    for (k, v) in &config.fields {
        fields.push((k.clone(), Value::Str(v.clone())));
    }
    fields
}
