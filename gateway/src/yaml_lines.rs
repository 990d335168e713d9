//! The first read of a YAML document: bounds that keep a hostile file from
//! costing more than its size, and where each key is, so that errors found
//! after parsing (an unknown upstream, a duplicate route) can still name a
//! line.
//!
//! The document is read as a stream of parser events before serde sees it,
//! and refused with key path and line when it nests too deep or when its
//! aliases would expand it past a bound: an alias is materialised by serde
//! as a full copy of its anchor, so one anchored list referenced from every
//! route turns a small file into gigabytes. The scanner is pulled one event
//! at a time, so a refusal stops it: a 100 000-deep flow sequence is never
//! scanned past the depth limit.
//!
//! serde gives no positions for values, so the same pass records the line of
//! every mapping key under its path (`routes[3].upstream`).

use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};

/// How deep collections may nest. `routes.yaml` needs five levels.
pub const MAX_DEPTH: usize = 32;

/// Values (scalars and collections) the document may hold once every alias
/// is expanded: a routes file at the route limit holds about a million.
pub const MAX_VALUES: u64 = 2_000_000;

#[derive(Default)]
pub struct KeyLines(HashMap<String, usize>);

impl std::fmt::Debug for KeyLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyLines({} keys)", self.0.len())
    }
}

/// Why a document was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Key path of the node where the bound was crossed.
    pub path: String,
    pub message: String,
    pub line: usize,
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        anchor: usize,
        /// Values counted when the collection started.
        start: u64,
    },
    Seq {
        path: String,
        index: usize,
        anchor: usize,
        start: u64,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    /// Values seen so far, aliases counted at their expanded size.
    values: u64,
    /// Expanded size of every anchored node that has ended.
    anchors: HashMap<usize, u64>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Builder {
    fn child_path(&self) -> String {
        match self.stack.last() {
            Some(Frame::Map {
                path,
                key: Some(key),
                ..
            }) => join(path, key),
            Some(Frame::Seq { path, index, .. }) => format!("{path}[{index}]"),
            _ => String::new(),
        }
    }

    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn count(&mut self, values: u64, line: usize) -> Result<(), Refusal> {
        self.values = self.values.saturating_add(values);
        if self.values > MAX_VALUES {
            return Err(Refusal {
                path: self.child_path(),
                message: format!(
                    "the document holds more than {MAX_VALUES} values once its aliases are expanded"
                ),
                line,
            });
        }
        Ok(())
    }

    fn open(&mut self, line: usize, anchor: usize, map: bool) -> Result<(), Refusal> {
        self.count(1, line)?;
        let path = self.child_path();
        if self.stack.len() >= MAX_DEPTH {
            return Err(Refusal {
                path,
                message: format!("collections nest more than {MAX_DEPTH} deep"),
                line,
            });
        }
        self.lines.entry(path.clone()).or_insert(line);
        let start = self.values - 1;
        self.stack.push(if map {
            Frame::Map {
                path,
                key: None,
                anchor,
                start,
            }
        } else {
            Frame::Seq {
                path,
                index: 0,
                anchor,
                start,
            }
        });
        Ok(())
    }

    fn close(&mut self) {
        if let Some(Frame::Map { anchor, start, .. } | Frame::Seq { anchor, start, .. }) =
            self.stack.pop()
            && anchor != 0
        {
            self.anchors.insert(anchor, self.values - start);
        }
        self.value_done();
    }

    fn on_event(&mut self, event: Event, line: usize) -> Result<(), Refusal> {
        match event {
            Event::MappingStart(anchor, _) => self.open(line, anchor, true)?,
            Event::SequenceStart(anchor, _) => self.open(line, anchor, false)?,
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            Event::Scalar(value, _, anchor, _) => {
                self.count(1, line)?;
                if anchor != 0 {
                    self.anchors.insert(anchor, 1);
                }
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                    ..
                }) = self.stack.last_mut()
                {
                    self.lines.insert(join(path, &value), line);
                    *key = Some(value);
                } else {
                    let path = self.child_path();
                    self.lines.entry(path).or_insert(line);
                    self.value_done();
                }
            }
            Event::Alias(anchor) => {
                // An alias to a node still open (itself or an ancestor)
                // has no size yet: it would expand forever.
                let Some(size) = self.anchors.get(&anchor).copied() else {
                    return Err(Refusal {
                        path: self.child_path(),
                        message: "alias refers to a node that contains it".into(),
                        line,
                    });
                };
                self.count(size, line)?;
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = self.stack.last_mut()
                {
                    // An alias used as a key; serde refuses non-string keys.
                    *key = Some(String::from("*"));
                } else {
                    self.value_done();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl KeyLines {
    /// Reads `source` once, within [`MAX_DEPTH`] and [`MAX_VALUES`], and
    /// indexes its keys. A document this reader cannot parse is refused
    /// with its position: serde must never see a document whose size was
    /// not counted.
    pub fn scan(source: &str) -> Result<Self, Refusal> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        loop {
            let (event, mark) = parser.next_token().map_err(|e| Refusal {
                path: builder.child_path(),
                message: format!("invalid YAML: {}", e.info()),
                line: e.marker().line(),
            })?;
            if event == Event::StreamEnd {
                break;
            }
            builder.on_event(event, mark.line())?;
        }
        Ok(KeyLines(builder.lines))
    }

    /// The line of `path`, or of its nearest ancestor present in the file
    /// (a missing key is reported where its parent is).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.0.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_sequence_items_have_lines() {
        let source = "a:\n  b: 1\nlist:\n  - x: 1\n    y: [1, 2]\n  - x: 2\nflow: {k: v}\n";
        let lines = KeyLines::scan(source).expect("valid");
        let cases = [
            ("a", Some(1)),
            ("a.b", Some(2)),
            ("list", Some(3)),
            ("list[0].x", Some(4)),
            ("list[0].y", Some(5)),
            ("list[1].x", Some(6)),
            ("list[1].missing", Some(6)),
            ("flow.k", Some(7)),
            ("nowhere", None),
        ];
        for (path, line) in cases {
            assert_eq!(lines.line(path), line, "{path}");
        }
    }

    #[test]
    fn aliases_count_at_their_expanded_size() {
        // A few small aliases are fine.
        let fine = "r: &R [a, b]\nx: *R\ny: *R\nz: {k: *R}\n";
        assert!(KeyLines::scan(fine).is_ok());
        // One anchored list of 1 000 entries referenced 3 000 times expands
        // to 3 million values: refused at the alias that crosses the bound.
        let list: Vec<String> = (0..1000).map(|i| format!("r{i}")).collect();
        let mut bomb = format!("roles: &R [{}]\nroutes:\n", list.join(", "));
        for _ in 0..3000 {
            bomb.push_str("  - roles: *R\n");
        }
        let refusal = KeyLines::scan(&bomb).expect_err("amplified");
        assert!(refusal.message.contains("aliases"), "{refusal:?}");
        // The refusal names the route whose alias crossed it, on its line.
        let index: usize = refusal
            .path
            .strip_prefix("routes[")
            .and_then(|rest| rest.strip_suffix("].roles"))
            .and_then(|i| i.parse().ok())
            .expect("a route's roles");
        assert!((1900..2000).contains(&index), "{refusal:?}");
        assert_eq!(refusal.line, index + 3);
        // Nested anchors (billion laughs) are counted through each level.
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let prev = format!("*a{}", level - 1);
            let items = [prev.as_str(); 10].join(", ");
            laughs.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        let refusal = KeyLines::scan(&laughs).expect_err("laughs");
        assert_eq!(refusal.path, "a6[0]", "{refusal:?}");
    }

    #[test]
    fn deep_nesting_is_refused_without_scanning_it_all() {
        let deep = "[".repeat(100_000);
        let refusal = KeyLines::scan(&deep).expect_err("deep");
        assert_eq!(refusal.line, 1, "{refusal:?}");
        let block: String = (0..40).map(|i| format!("{}- \n", "  ".repeat(i))).collect();
        let refusal = KeyLines::scan(&block).expect_err("deep");
        assert!(refusal.message.contains("nest more than 32"), "{refusal:?}");
    }

    #[test]
    fn recursive_and_broken_documents_are_refused_with_a_line() {
        let recursive = "a: &A\n  b: *A\n";
        let refusal = KeyLines::scan(recursive).expect_err("recursive");
        assert_eq!((refusal.path.as_str(), refusal.line), ("a.b", 2));
        let broken = "a: [1, 2\nb: 3\n";
        let refusal = KeyLines::scan(broken).expect_err("broken");
        assert!(refusal.message.starts_with("invalid YAML"), "{refusal:?}");
    }
}
