//! A YAML tree that remembers the line of every key and value, built from `saphyr`'s marked
//! parse. Rules read manifests through it so that every finding can point at a line.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// Deeper nesting than this is refused rather than risking the stack on hostile input;
/// Kubernetes objects nest a few dozen levels at most.
const MAX_DEPTH: usize = 256;

/// One YAML node and the (1-based) line where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    /// The line where the node ends (for a block scalar, the last line of its text or after).
    pub end_line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A mapping entry: the key as text, the line the key is on, and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_line: usize,
    pub value: Node,
}

/// YAML that could not be parsed, with the line it broke on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a (multi-document) YAML stream into one node per document. Empty documents (a bare
/// `---`, comments only) come back as `Null` nodes; callers skip them.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, ParseError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| ParseError {
        line: e.marker().line(),
        message: e.info().to_string(),
    })?;
    docs.iter().map(|d| convert(d, 0)).collect()
}

fn convert(yaml: &MarkedYaml<'_>, depth: usize) -> Result<Node, ParseError> {
    let line = yaml.span.start.line();
    if depth > MAX_DEPTH {
        return Err(ParseError {
            line,
            message: format!("nesting deeper than {MAX_DEPTH} levels"),
        });
    }
    let value = match &yaml.data {
        YamlData::Value(scalar) => scalar_value(scalar),
        YamlData::Representation(text, _, _) => Value::Str(text.to_string()),
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|item| convert(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (key, value) in map {
                let key_node = convert(key, depth + 1)?;
                entries.push(Entry {
                    key: key_node.text().unwrap_or_default(),
                    key_line: key.span.start.line(),
                    value: convert(value, depth + 1)?,
                });
            }
            Value::Map(entries)
        }
        YamlData::Tagged(_, inner) => return convert(inner, depth + 1),
        YamlData::Alias(_) | YamlData::BadValue => Value::Null,
    };
    let end_line = yaml.span.end.line().max(line);
    Ok(Node {
        line,
        end_line,
        value,
    })
}

fn scalar_value(scalar: &Scalar<'_>) -> Value {
    match scalar {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Int(*i),
        Scalar::FloatingPoint(f) => Value::Float(f.into_inner()),
        Scalar::String(s) => Value::Str(s.to_string()),
    }
}

impl Node {
    /// The value under `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// The entry (key line and value) under `key` when this node is a mapping.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries().iter().find(|e| e.key == key)
    }

    /// Follows a path of mapping keys.
    pub fn path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }

    /// The line of `key` in this mapping, or this node's own line when the key is absent:
    /// a finding about a missing field points at the object that lacks it.
    pub fn line_of(&self, key: &str) -> usize {
        self.entry(key).map_or(self.line, |e| e.key_line)
    }

    pub fn entries(&self) -> &[Entry] {
        match &self.value {
            Value::Map(entries) => entries,
            _ => &[],
        }
    }

    pub fn items(&self) -> &[Node] {
        match &self.value {
            Value::Seq(items) => items,
            _ => &[],
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Any scalar as the text a manifest author would have written.
    pub fn text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    /// An integer, also when written as a quoted string (`replicas: "3"`).
    pub fn as_i64(&self) -> Option<i64> {
        match &self.value {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_items_carry_their_own_lines() {
        let docs = parse_documents("a: 1\nb:\n  c: [x, y]\n  d:\n  - name: n\n    v: 2\n").unwrap();
        let doc = &docs[0];
        assert_eq!(doc.line_of("b"), 2);
        assert_eq!(doc.path(&["b"]).unwrap().line_of("c"), 3);
        let item = &doc.path(&["b", "d"]).unwrap().items()[0];
        assert_eq!(item.line, 5);
        assert_eq!(item.line_of("v"), 6);
    }

    #[test]
    fn block_scalars_know_where_they_end() {
        let docs = parse_documents("a: |\n  one\n  two\nb: 1\n").unwrap();
        let a = docs[0].get("a").unwrap();
        // A block scalar starts at its first line of text, not at the `|`.
        assert_eq!(a.line, 2);
        assert!(a.end_line >= 3, "{a:?}");
    }

    #[test]
    fn lines_count_from_the_start_of_the_stream_across_documents() {
        let docs = parse_documents("---\na: 1\n---\n# c\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].line_of("b"), 5);
    }

    #[test]
    fn broken_yaml_reports_its_line() {
        let err = parse_documents("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err}");
    }

    #[test]
    fn absurd_nesting_is_an_error_not_a_crash() {
        let text = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(parse_documents(&text).is_err());
    }

    #[test]
    fn scalars_keep_their_types() {
        let docs = parse_documents("i: 3\ns: \"3\"\nb: true\nn: ~\n").unwrap();
        assert_eq!(docs[0].get("i").unwrap().as_i64(), Some(3));
        assert_eq!(docs[0].get("s").unwrap().as_str(), Some("3"));
        assert_eq!(docs[0].get("b").unwrap().as_bool(), Some(true));
        assert!(docs[0].get("n").unwrap().is_null());
    }
}
