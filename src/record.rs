//! The unit that flows through perapera: a [`Record`] read from a source, plus the
//! templates that turn a record into a Kafka topic, key or forward tag.
//!
//! A record is an ordered list of fields whose values keep the bytes the source gave us:
//! valid UTF-8 becomes [`Value::Str`], anything else [`Value::Bin`], so nothing is lost or
//! mangled on the way to MessagePack. A field that occurs more than once in a journal entry
//! becomes a [`Value::Array`].

use std::fmt;
use std::sync::Arc;

use crate::source::identity::FileId;

/// A field value, as it will be encoded in MessagePack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Valid UTF-8 text (msgpack `str`).
    Str(String),
    /// Bytes that are not valid UTF-8 (msgpack `bin`).
    Bin(Vec<u8>),
    /// An unsigned integer, e.g. `__REALTIME_TIMESTAMP` in microseconds.
    UInt(u64),
    /// A field that occurred more than once, values in source order.
    Array(Vec<Value>),
    /// Any other MessagePack value (a nested map, a negative integer, a float, a boolean,
    /// nil, an ext), kept as its encoded bytes: forward senders' records pass through
    /// unchanged.
    Msgpack(Vec<u8>),
}

impl Value {
    /// `Str` when the bytes are valid UTF-8, `Bin` otherwise. Does not copy.
    pub fn from_bytes(bytes: Vec<u8>) -> Value {
        match String::from_utf8(bytes) {
            Ok(s) => Value::Str(s),
            Err(e) => Value::Bin(e.into_bytes()),
        }
    }

    /// Payload size in bytes (used for the in-flight byte window and truncation).
    pub fn len(&self) -> usize {
        match self {
            Value::Str(s) => s.len(),
            Value::Bin(b) => b.len(),
            Value::UInt(_) => 8,
            Value::Array(items) => items.iter().map(Value::len).sum(),
            Value::Msgpack(b) => b.len(),
        }
    }

    /// True when the value carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file as read: its identity and the path it had when the line was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// (device, inode, fingerprint).
    pub id: FileId,
    /// The path (informational: the identity is what counts).
    pub path: String,
    /// Which reading of which file this is, unique within a run: the key of its checkpoint
    /// entry. A truncated file's new contents are a new key; its rotated copy continues the
    /// old one.
    pub key: u64,
}

/// Where an entry is in its source; what a checkpoint persists once it is acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// A journal cursor.
    Cursor(String),
    /// An entry of a forward request: the request is acknowledged to its sender once every
    /// one of its entries is.
    Forward(Arc<crate::source::forward::Pending>),
    /// A byte offset just after a line of a file.
    File {
        /// The file (shared by all lines read from it under the same identity and path).
        file: Arc<FileRef>,
        /// Offset after the line: where to resume.
        offset: u64,
    },
}

impl Default for Position {
    fn default() -> Self {
        Position::Cursor(String::new())
    }
}

impl Position {
    /// Writes the position as text (the `perapera-position` header): the cursor, or
    /// `PATH:OFFSET`.
    pub fn render_into(&self, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        match self {
            Position::Cursor(c) => out.push_str(c),
            Position::File { file, offset } => {
                let _ = write!(out, "{}:{offset}", file.path);
            }
            Position::Forward(p) => out.push_str(&p.peer),
        }
    }

    /// Approximate heap size.
    fn byte_size(&self) -> usize {
        match self {
            Position::Cursor(c) => c.len(),
            Position::File { .. } | Position::Forward(_) => 16,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.render_into(&mut s);
        f.write_str(&s)
    }
}

/// One log entry on its way to the sink.
///
/// The fields are kept as the MessagePack map that is the Kafka value (and the forward
/// record): sources encode straight into it while reading, sinks send its bytes as they
/// are, and templates look fields up in it without decoding. Editing a record (truncation,
/// dead-letter stubs) decodes and re-encodes it; that is the rare path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// A MessagePack map with text keys, names unique. Never changed in place (an edit makes a
    /// new one): the Kafka sink lends librdkafka a reference instead of a copy.
    map: Arc<Vec<u8>>,
    /// The entry's time in nanoseconds since the Unix epoch (the Kafka timestamp source).
    pub time_ns: u64,
    /// Where this entry is in its source; persisted once acknowledged.
    pub position: Position,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            map: Arc::new(vec![0x80]),
            time_ns: 0,
            position: Position::default(),
        }
    }
}

impl Record {
    /// A record of these fields (names unique, in encoding order).
    pub fn from_fields(fields: &[(String, Value)], time_ns: u64, position: Position) -> Record {
        let mut map = Vec::with_capacity(
            fields
                .iter()
                .map(|(n, v)| n.len() + v.len() + 10)
                .sum::<usize>()
                + 5,
        );
        crate::encode::fields_into(fields, &mut map);
        Record {
            map: Arc::new(map),
            time_ns,
            position,
        }
    }

    /// A record whose fields a source already encoded as a MessagePack map with unique text
    /// keys (written with [`crate::encode::write_map_len`] and friends).
    pub fn from_msgpack(map: Vec<u8>, time_ns: u64, position: Position) -> Record {
        Record {
            map: Arc::new(map),
            time_ns,
            position,
        }
    }

    /// The fields as one MessagePack map: the Kafka value.
    pub fn msgpack(&self) -> &[u8] {
        &self.map
    }

    /// The map, shared: its bytes never change while a reference is held.
    pub fn msgpack_shared(&self) -> Arc<Vec<u8>> {
        self.map.clone()
    }

    /// The fields, decoded.
    pub fn fields(&self) -> Vec<(String, Value)> {
        crate::msgpack::fields(&self.map)
    }

    /// The value of a field, if present (decoded).
    pub fn get(&self, name: &str) -> Option<Value> {
        crate::msgpack::find(&self.map, name).map(crate::msgpack::value)
    }

    /// Appends a field's text (see [`crate::msgpack::render`]); false if it is missing.
    pub fn render_field(&self, name: &str, out: &mut String) -> bool {
        match crate::msgpack::find(&self.map, name) {
            Some(raw) => {
                crate::msgpack::render(raw, out);
                true
            }
            None => false,
        }
    }

    /// Sets a field, replacing an existing one of the same name.
    pub fn set(&mut self, name: &str, value: Value) {
        let mut fields = self.fields();
        match fields.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => fields.push((name.to_string(), value)),
        }
        self.replace_fields(&fields);
    }

    fn replace_fields(&mut self, fields: &[(String, Value)]) {
        let mut map = Vec::with_capacity(self.map.len());
        crate::encode::fields_into(fields, &mut map);
        self.map = Arc::new(map);
    }

    /// Approximate size in bytes: the encoded fields plus the position.
    pub fn byte_size(&self) -> usize {
        self.map.len() + self.position.byte_size()
    }

    /// Cuts the largest field value (UTF-8-safe for text) so that the record shrinks by at
    /// least `excess` bytes. Returns false when there is nothing left to cut.
    pub fn cut_largest(&mut self, excess: usize) -> bool {
        let mut fields = self.fields();
        let Some(largest) = largest_value(&mut fields) else {
            return false;
        };
        let len = largest.len();
        if len == 0 {
            return false;
        }
        let keep = len.saturating_sub(excess);
        match largest {
            Value::Str(s) => {
                let mut cut = keep.min(s.len());
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            Value::Bin(b) => b.truncate(keep),
            Value::UInt(_) | Value::Array(_) | Value::Msgpack(_) => return false,
        }
        self.replace_fields(&fields);
        true
    }
}

/// The largest string or binary value, looking inside arrays.
fn largest_value(fields: &mut [(String, Value)]) -> Option<&mut Value> {
    fn walk<'a>(v: &'a mut Value, best: &mut Option<&'a mut Value>) {
        match v {
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, best)),
            Value::UInt(_) | Value::Msgpack(_) => {}
            other => {
                if best.as_ref().is_none_or(|b| b.len() < other.len()) {
                    *best = Some(other);
                }
            }
        }
    }
    let mut best = None;
    for (_, v) in fields.iter_mut() {
        walk(v, &mut best);
    }
    best
}

/// A template over record fields: `logs.{_SYSTEMD_UNIT:-unknown}`.
///
/// `{FIELD}` is replaced by the field's value, `{FIELD:-default}` uses `default` when the
/// field is missing, `{{` and `}}` are literal braces.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field { name: String, default: String },
}

/// A template that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

impl Template {
    /// Parses a template.
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let err = |reason| TemplateError {
            template: s.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(err("unmatched `}` (write `}}` for a literal brace)")),
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => return Err(err("`{` inside a field reference")),
                            Some(c) => inner.push(c),
                            None => {
                                return Err(err("unclosed `{` (write `{{` for a literal brace)"))
                            }
                        }
                    }
                    let (name, default) = match inner.split_once(":-") {
                        Some((n, d)) => (n, d),
                        None => (inner.as_str(), ""),
                    };
                    if name.is_empty() {
                        return Err(err("empty field name in `{}`"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field {
                        name: name.to_string(),
                        default: default.to_string(),
                    });
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Template {
            source: s.to_string(),
            parts,
        })
    }

    /// True when the template has no field references.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Renders the template into `out` (cleared first).
    pub fn render_into(&self, record: &Record, out: &mut String) {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Field { name, default } => {
                    if !record.render_field(name, out) {
                        out.push_str(default)
                    }
                }
            }
        }
    }

    /// Renders the template.
    pub fn render(&self, record: &Record) -> String {
        let mut out = String::new();
        self.render_into(record, &mut out);
        out
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Makes `name` a legal Kafka topic name in place: characters outside `[A-Za-z0-9._-]`
/// become `_`, at most 249 characters, and never empty, `.` or `..`.
pub fn sanitize_topic(name: &mut String) {
    if name
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
    {
        *name = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
    }
    if name.len() > 249 {
        name.truncate(249);
    }
    if name.is_empty() || name == "." || name == ".." {
        name.insert(0, '_');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: &[(&str, Value)]) -> Record {
        let fields: Vec<(String, Value)> = fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        Record::from_fields(&fields, 0, Position::default())
    }

    #[test]
    fn template_fields_defaults_and_braces() {
        let t = Template::parse("logs.{_SYSTEMD_UNIT:-unknown}.{{x}}").unwrap();
        let r = rec(&[("_SYSTEMD_UNIT", Value::Str("nginx.service".into()))]);
        assert_eq!(t.render(&r), "logs.nginx.service.{x}");
        assert_eq!(t.render(&Record::default()), "logs.unknown.{x}");
        let t = Template::parse("{A}-{B}").unwrap();
        let r = rec(&[
            (
                "A",
                Value::Array(vec![Value::Str("1".into()), Value::Str("2".into())]),
            ),
            ("B", Value::UInt(7)),
        ]);
        assert_eq!(t.render(&r), "1-7");
        assert!(!t.is_static());
        assert!(Template::parse("plain").unwrap().is_static());
    }

    #[test]
    fn template_errors() {
        assert!(Template::parse("logs.{unit").is_err());
        assert!(Template::parse("logs.}").is_err());
        assert!(Template::parse("logs.{}").is_err());
        assert!(Template::parse("{a{b}}").is_err());
    }

    #[test]
    fn topic_sanitising() {
        let mut t = "logs.user@1000.service/x".to_string();
        sanitize_topic(&mut t);
        assert_eq!(t, "logs.user_1000.service_x");
        let mut t = String::new();
        sanitize_topic(&mut t);
        assert_eq!(t, "_");
        let mut t = "..".to_string();
        sanitize_topic(&mut t);
        assert_eq!(t, "_..");
    }

    #[test]
    fn cut_largest_is_utf8_safe() {
        let mut r = rec(&[
            ("MESSAGE", Value::Str("é".repeat(100))),
            ("SMALL", Value::Str("x".into())),
        ]);
        assert!(r.cut_largest(51));
        let Some(Value::Str(s)) = r.get("MESSAGE") else {
            panic!()
        };
        assert!(s.len() <= 149 && s.len() >= 147, "{}", s.len());
        assert!(s.chars().all(|c| c == 'é'));
        let mut r = rec(&[("B", Value::Bin(vec![0xff; 10]))]);
        assert!(r.cut_largest(4));
        assert_eq!(r.get("B"), Some(Value::Bin(vec![0xff; 6])));
        let mut r = rec(&[("N", Value::UInt(1))]);
        assert!(!r.cut_largest(4));
    }

    #[test]
    fn edits_never_change_bytes_lent_to_the_sink() {
        // The Kafka sink hands librdkafka a reference to the map instead of a copy; an edit
        // (truncation, a marker field) must make new bytes, not rewrite the lent ones.
        let mut r = rec(&[("MESSAGE", Value::Str("x".repeat(100)))]);
        let lent = r.msgpack_shared();
        let before = lent.to_vec();
        r.set("_PERAPERA_TRUNCATED", Value::UInt(1));
        assert!(r.cut_largest(10));
        assert_eq!(*lent, before);
        assert_ne!(r.msgpack(), &before[..]);
        assert_eq!(r.get("_PERAPERA_TRUNCATED"), Some(Value::UInt(1)));
    }

    #[test]
    fn from_bytes_keeps_invalid_utf8() {
        assert_eq!(Value::from_bytes(b"ok".to_vec()), Value::Str("ok".into()));
        assert_eq!(
            Value::from_bytes(vec![0, 0xff, 10]),
            Value::Bin(vec![0, 0xff, 10])
        );
    }
}
