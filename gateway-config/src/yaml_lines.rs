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

/// The line of every key path, by a hash of the path's text: no path is
/// ever stored, so a file's keys cost a few bytes each however long or deep
/// they are. (Two paths with one hash would only make an error message
/// name the wrong line.)
#[derive(Default)]
pub struct KeyLines(HashMap<u64, usize>);

impl std::fmt::Debug for KeyLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyLines({} keys)", self.0.len())
    }
}

/// FNV-1a over a path's text, fed piece by piece: `continue_with(h, "a")`
/// then `"b"` equals the hash of `"ab"`.
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn continue_with(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Why a document was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Key path of the node where the bound was crossed.
    pub path: String,
    pub message: String,
    pub line: usize,
}

enum Kind {
    /// The key whose value comes next, once read.
    Map(Option<String>),
    /// The index of the next item.
    Seq(usize),
}

struct Frame {
    kind: Kind,
    /// Hash of this collection's own path, and whether that path is empty
    /// (the document's root).
    hash: u64,
    root: bool,
    anchor: usize,
    /// Values counted when the collection started.
    start: u64,
}

impl Frame {
    /// The hash of the path of this collection's next value.
    fn child_hash(&self) -> Option<u64> {
        match &self.kind {
            Kind::Map(Some(key)) => {
                let hash = if self.root {
                    self.hash
                } else {
                    continue_with(self.hash, b".")
                };
                Some(continue_with(hash, key.as_bytes()))
            }
            Kind::Map(None) => None,
            Kind::Seq(index) => Some(continue_with(self.hash, format!("[{index}]").as_bytes())),
        }
    }
}

/// One event of the document as read, for [`crate::yaml_de`]: what serde
/// needs, in a fraction of the memory of a general YAML library's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// A scalar's text, and whether it was plain (unquoted): only plain
    /// scalars are read as null, booleans or numbers.
    Scalar(String, bool),
    SeqStart,
    SeqEnd,
    MapStart,
    MapEnd,
    /// The index of the event that starts the anchored node.
    Alias(usize),
}

/// An event and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub ev: Ev,
    pub line: usize,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<u64, usize>,
    /// Values seen so far, aliases counted at their expanded size.
    values: u64,
    /// Expanded size of every anchored node that has ended.
    anchors: HashMap<usize, u64>,
    /// Where each anchored node starts in `events`.
    anchor_at: HashMap<usize, usize>,
    events: Vec<Node>,
    /// Nodes at the root: a second one is a second document.
    roots: usize,
}

impl Builder {
    /// The path of the next value, as text: built only for a refusal.
    fn child_path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match &frame.kind {
                Kind::Map(Some(key)) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    // A refusal names a key, not a megabyte of one.
                    path.extend(key.chars().take(64));
                }
                Kind::Map(None) => {}
                Kind::Seq(index) => path.push_str(&format!("[{index}]")),
            }
        }
        path
    }

    /// The hash of the next value's path, and whether it is the root.
    fn child(&self) -> (u64, bool) {
        match self.stack.last() {
            None => (FNV_START, true),
            Some(frame) => (frame.child_hash().unwrap_or(frame.hash), false),
        }
    }

    fn value_done(&mut self) {
        match self.stack.last_mut().map(|f| &mut f.kind) {
            Some(Kind::Map(key)) => *key = None,
            Some(Kind::Seq(index)) => *index += 1,
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

    /// Records `ev`, and the start of an anchored node.
    fn record(&mut self, ev: Ev, line: usize, anchor: usize) -> Result<(), Refusal> {
        if self.stack.is_empty() && !matches!(ev, Ev::SeqEnd | Ev::MapEnd) {
            self.roots += 1;
            if self.roots > 1 {
                return Err(Refusal {
                    path: String::new(),
                    message: "the file holds more than one YAML document".into(),
                    line,
                });
            }
        }
        if anchor != 0 {
            self.anchor_at.insert(anchor, self.events.len());
        }
        self.events.push(Node { ev, line });
        Ok(())
    }

    fn open(&mut self, line: usize, anchor: usize, map: bool) -> Result<(), Refusal> {
        self.count(1, line)?;
        self.record(if map { Ev::MapStart } else { Ev::SeqStart }, line, anchor)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(Refusal {
                path: self.child_path(),
                message: format!("collections nest more than {MAX_DEPTH} deep"),
                line,
            });
        }
        let (hash, root) = self.child();
        self.lines.entry(hash).or_insert(line);
        self.stack.push(Frame {
            kind: if map { Kind::Map(None) } else { Kind::Seq(0) },
            hash,
            root,
            anchor,
            start: self.values - 1,
        });
        Ok(())
    }

    fn close(&mut self, map: bool, line: usize) {
        self.events.push(Node {
            ev: if map { Ev::MapEnd } else { Ev::SeqEnd },
            line,
        });
        if let Some(frame) = self.stack.pop()
            && frame.anchor != 0
        {
            self.anchors.insert(frame.anchor, self.values - frame.start);
        }
        self.value_done();
    }

    fn on_event(&mut self, event: Event, line: usize) -> Result<(), Refusal> {
        let tagged = match &event {
            Event::MappingStart(_, tag) | Event::SequenceStart(_, tag) => tag.is_some(),
            Event::Scalar(_, _, _, tag) => tag.is_some(),
            _ => false,
        };
        if tagged {
            return Err(Refusal {
                path: self.child_path(),
                message: "YAML tags (!name) are not supported here".into(),
                line,
            });
        }
        match event {
            Event::MappingStart(anchor, _) => self.open(line, anchor, true)?,
            Event::SequenceStart(anchor, _) => self.open(line, anchor, false)?,
            Event::MappingEnd => self.close(true, line),
            Event::SequenceEnd => self.close(false, line),
            Event::Scalar(value, style, anchor, _) => {
                self.count(1, line)?;
                if anchor != 0 {
                    self.anchors.insert(anchor, 1);
                }
                let plain = style == yaml_rust2::scanner::TScalarStyle::Plain;
                self.record(Ev::Scalar(value.clone(), plain), line, anchor)?;
                match self.stack.last_mut() {
                    Some(
                        frame @ Frame {
                            kind: Kind::Map(None),
                            ..
                        },
                    ) => {
                        // A key: its path gets its line.
                        frame.kind = Kind::Map(Some(value));
                        if let Some(hash) = frame.child_hash() {
                            self.lines.insert(hash, line);
                        }
                    }
                    // A value: its key (or its list) already has a line.
                    _ => self.value_done(),
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
                let at = self.anchor_at.get(&anchor).copied().unwrap_or(0);
                self.record(Ev::Alias(at), line, 0)?;
                match self.stack.last_mut() {
                    // An alias used as a key; serde refuses non-string keys.
                    Some(
                        frame @ Frame {
                            kind: Kind::Map(None),
                            ..
                        },
                    ) => {
                        frame.kind = Kind::Map(Some(String::from("*")));
                    }
                    _ => self.value_done(),
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
        Self::read(source).map(|(lines, _)| lines)
    }

    /// [`KeyLines::scan`], keeping the document's events for
    /// [`crate::yaml_de`].
    pub fn read(source: &str) -> Result<(Self, Vec<Node>), Refusal> {
        let mut builder = Builder {
            // About one event per ten bytes of a routes file: one allocation
            // instead of a series of doublings, each a copy.
            events: Vec::with_capacity(source.len() / 10),
            ..Builder::default()
        };
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
        Ok((KeyLines(builder.lines), builder.events))
    }

    /// The line of `path`, or of its nearest ancestor present in the file
    /// (a missing key is reported where its parent is).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.0.get(&continue_with(FNV_START, path.as_bytes())) {
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
