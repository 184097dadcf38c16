//! Templates over record fields (Kafka topics and keys, forward tags), and the topic-name
//! rules they are rendered under.

use std::fmt;

use super::Record;

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
    /// A template that renders as `text`, braces and all.
    pub fn literal(text: &str) -> Template {
        Template {
            source: text.replace('{', "{{").replace('}', "}}"),
            parts: (!text.is_empty())
                .then(|| Part::Literal(text.to_string()))
                .into_iter()
                .collect(),
        }
    }

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
    use crate::record::{rec, Value};

    #[test]
    fn a_template_renders_fields_defaults_arrays_and_literal_braces() {
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
    fn unclosed_stray_or_empty_braces_are_template_errors() {
        assert!(Template::parse("logs.{unit").is_err());
        assert!(Template::parse("logs.}").is_err());
        assert!(Template::parse("logs.{}").is_err());
        assert!(Template::parse("{a{b}}").is_err());
    }

    #[test]
    fn topic_names_lose_what_kafka_rejects_and_are_never_empty_or_dots() {
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
    fn a_literal_template_equals_its_escaped_parse_and_renders_its_text() {
        for text in ["perapera", "a{b}c", "{{", ""] {
            let t = Template::literal(text);
            assert_eq!(t, Template::parse(&t.to_string()).unwrap(), "{text:?}");
            assert_eq!(t.render(&Record::default()), text);
            assert!(t.is_static());
        }
    }
}
