//! Where each key of a YAML document is, so that errors found after parsing
//! (an unknown upstream, a duplicate route) can still name a line.
//!
//! serde gives no positions for values, so the document is read a second
//! time as a stream of parser events, recording the line of every mapping
//! key under its path (`routes[3].upstream`).

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct KeyLines(HashMap<String, usize>);

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
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
            }) => join(path, key),
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
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
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::MappingStart(..) => {
                let path = self.child_path();
                self.lines.entry(path.clone()).or_insert(mark.line());
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.child_path();
                self.lines.entry(path.clone()).or_insert(mark.line());
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    self.lines.insert(join(path, &value), mark.line());
                    *key = Some(value);
                } else {
                    let path = self.child_path();
                    self.lines.entry(path).or_insert(mark.line());
                    self.value_done();
                }
            }
            Event::Alias(_) => self.value_done(),
            _ => {}
        }
    }
}

impl KeyLines {
    /// Indexes `source`. A document that does not parse yields an empty
    /// index; serde reports that error with its own position.
    pub fn index(source: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut builder, false).is_err() {
            return KeyLines::default();
        }
        KeyLines(builder.lines)
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
        let lines = KeyLines::index(source);
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
}
