//! serde over the events [`crate::yaml_lines`] read: the routes file is
//! parsed once, by the reader that counts and bounds it, and never again by
//! a second YAML library that would keep every event of a 100 000-route
//! file in a vector three times this size.
//!
//! Scalars follow YAML 1.2's core schema where a type is asked for: a plain
//! `null`, `~` or nothing is null, `true`/`false` are booleans, numbers are
//! numbers; a quoted scalar is always a string. An alias deserialises the
//! anchored node again (its size was counted by the reader).

use crate::yaml_lines::{Ev, Node};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

/// A deserialisation error: serde's message; the caller adds the path and
/// line.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// Reads a value of any type from YAML text, within the reader's bounds;
/// the error names the key path.
pub fn from_str<T: serde::de::DeserializeOwned>(source: &str) -> Result<T, String> {
    let (_, events) = crate::yaml_lines::KeyLines::read(source).map_err(|r| r.message)?;
    let mut de = Deserializer::new(&events);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| e.to_string())?;
    match de.unknown_keys().into_iter().next() {
        Some(unknown) => Err(format!("{}: {}", unknown.path, unknown.message)),
        None => Ok(value),
    }
}

/// A key a struct does not have. It is set aside (with its value) rather
/// than failing the document, so that one run reports every unknown key
/// along with every other problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// The key's path, e.g. `routes[3].acess`.
    pub path: String,
    pub line: usize,
    /// serde's own message (`unknown field …, expected one of …`).
    pub message: String,
}

/// One step of the path to the value being read.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// A cursor over a document's events.
pub struct Deserializer<'a> {
    events: &'a [Node],
    at: usize,
    /// Collections and aliases entered: aliases can nest a document far
    /// deeper than its text, and serde recurses once per level.
    depth: usize,
    path: Vec<Step<'a>>,
    unknown: Rc<RefCell<Vec<UnknownKey>>>,
}

/// How deep deserialisation may go, aliases followed.
const MAX_DEPTH: usize = 64;

impl<'a> Deserializer<'a> {
    pub fn new(events: &'a [Node]) -> Self {
        Deserializer {
            events,
            at: 0,
            depth: 0,
            path: Vec::new(),
            unknown: Rc::default(),
        }
    }

    /// The unknown keys set aside so far, in document order.
    pub fn unknown_keys(&self) -> Vec<UnknownKey> {
        self.unknown.borrow().clone()
    }

    fn path_text(&self, key: &str) -> String {
        let mut text = String::new();
        for step in &self.path {
            match step {
                Step::Key(k) => {
                    if !text.is_empty() {
                        text.push('.');
                    }
                    text.push_str(k);
                }
                Step::Index(i) => text.push_str(&format!("[{i}]")),
            }
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.push_str(key);
        text
    }

    fn deeper(&self) -> Result<usize, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error(format!(
                "values nest more than {MAX_DEPTH} deep once aliases are followed"
            )));
        }
        Ok(self.depth + 1)
    }

    /// The line of the event the cursor stopped at, for errors.
    pub fn line(&self) -> Option<usize> {
        self.events
            .get(self.at.min(self.events.len().saturating_sub(1)))
            .map(|n| n.line)
    }

    fn peek(&self) -> Result<&'a Ev, Error> {
        self.events
            .get(self.at)
            .map(|n| &n.ev)
            .ok_or_else(|| Error("the file ends where a value was expected".into()))
    }

    fn next(&mut self) -> Result<&'a Ev, Error> {
        let ev = self.peek()?;
        self.at += 1;
        Ok(ev)
    }

    /// When the next event is an alias: a cursor on the anchored node, the
    /// alias consumed.
    fn alias(&mut self) -> Option<Result<Deserializer<'a>, Error>> {
        match self.events.get(self.at).map(|n| &n.ev) {
            Some(Ev::Alias(target)) => {
                self.at += 1;
                Some(self.deeper().map(|depth| Deserializer {
                    events: self.events,
                    at: *target,
                    depth,
                    path: self.path.clone(),
                    unknown: Rc::clone(&self.unknown),
                }))
            }
            _ => None,
        }
    }

    /// The next scalar's text and whether it was plain; anything else is
    /// the error `expected` describes.
    fn scalar(&mut self, expected: &dyn de::Expected) -> Result<(&'a str, bool), Error> {
        match self.next()? {
            Ev::Scalar(text, plain) => Ok((text, *plain)),
            ev => Err(de::Error::invalid_type(unexpected(ev), expected)),
        }
    }

    /// Skips one node (a scalar, an alias or a whole collection).
    fn skip(&mut self) -> Result<(), Error> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                Ev::SeqStart | Ev::MapStart => depth += 1,
                Ev::SeqEnd | Ev::MapEnd => depth = depth.saturating_sub(1),
                Ev::Scalar(..) | Ev::Alias(_) => {}
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

fn boolean(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn float(text: &str) -> Option<f64> {
    let digits = text.trim_start_matches(['-', '+']);
    let numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if numeric {
        return text.parse().ok();
    }
    match digits {
        ".inf" | ".Inf" | ".INF" => Some(if text.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ => None,
    }
}

/// What a scalar is, for error messages.
fn unexpected(ev: &Ev) -> de::Unexpected<'_> {
    match ev {
        Ev::Scalar(text, _) => de::Unexpected::Str(text),
        Ev::SeqStart => de::Unexpected::Seq,
        Ev::MapStart => de::Unexpected::Map,
        _ => de::Unexpected::Other("the end of a collection"),
    }
}

macro_rules! follow_alias {
    ($self:ident, $method:ident, $visitor:ident $(, $arg:expr)*) => {
        if let Some(target) = $self.alias() {
            let mut target = target?;
            return (&mut target).$method($($arg,)* $visitor);
        }
    };
}

macro_rules! integer {
    ($method:ident) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            follow_alias!(self, $method, visitor);
            let (text, plain) = self.scalar(&visitor)?;
            match (plain, text.parse::<u64>(), text.parse::<i64>()) {
                (true, Ok(n), _) => visitor.visit_u64(n),
                (true, _, Ok(n)) => visitor.visit_i64(n),
                _ => Err(de::Error::invalid_type(de::Unexpected::Str(text), &visitor)),
            }
        }
    };
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        follow_alias!(self, deserialize_any, visitor);
        match self.peek()? {
            Ev::SeqStart => self.deserialize_seq(visitor),
            Ev::MapStart => self.deserialize_map(visitor),
            Ev::Scalar(text, plain) => {
                self.at += 1;
                if !*plain {
                    return visitor.visit_str(text);
                }
                if is_null(text) {
                    return visitor.visit_unit();
                }
                if let Some(b) = boolean(text) {
                    return visitor.visit_bool(b);
                }
                if let Ok(n) = text.parse::<u64>() {
                    return visitor.visit_u64(n);
                }
                if let Ok(n) = text.parse::<i64>() {
                    return visitor.visit_i64(n);
                }
                if let Some(f) = float(text) {
                    return visitor.visit_f64(f);
                }
                visitor.visit_str(text)
            }
            ev => Err(de::Error::invalid_type(unexpected(ev), &visitor)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        follow_alias!(self, deserialize_bool, visitor);
        let (text, plain) = self.scalar(&visitor)?;
        match boolean(text).filter(|_| plain) {
            Some(b) => visitor.visit_bool(b),
            None => Err(de::Error::invalid_type(de::Unexpected::Str(text), &visitor)),
        }
    }

    integer!(deserialize_i8);
    integer!(deserialize_i16);
    integer!(deserialize_i32);
    integer!(deserialize_i64);
    integer!(deserialize_u8);
    integer!(deserialize_u16);
    integer!(deserialize_u32);
    integer!(deserialize_u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        follow_alias!(self, deserialize_f64, visitor);
        let (text, plain) = self.scalar(&visitor)?;
        match float(text).filter(|_| plain) {
            Some(f) => visitor.visit_f64(f),
            None => Err(de::Error::invalid_type(de::Unexpected::Str(text), &visitor)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        follow_alias!(self, deserialize_str, visitor);
        let (text, _) = self.scalar(&visitor)?;
        visitor.visit_str(text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        follow_alias!(self, deserialize_option, visitor);
        match self.peek()? {
            Ev::Scalar(text, true) if is_null(text) => {
                self.at += 1;
                visitor.visit_none()
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        follow_alias!(self, deserialize_unit, visitor);
        match self.scalar(&visitor)? {
            (text, true) if is_null(text) => visitor.visit_unit(),
            (text, _) => Err(de::Error::invalid_type(de::Unexpected::Str(text), &visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        follow_alias!(self, deserialize_seq, visitor);
        match self.next()? {
            Ev::SeqStart => {
                let outer = self.depth;
                self.depth = self.deeper()?;
                let value = visitor.visit_seq(Items { de: self, index: 0 });
                self.depth = outer;
                let value = value?;
                match self.next()? {
                    Ev::SeqEnd => Ok(value),
                    _ => Err(de::Error::custom("the list has more items than expected")),
                }
            }
            ev => Err(de::Error::invalid_type(unexpected(ev), &visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.mapping(visitor, None)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.mapping(visitor, Some(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        follow_alias!(self, deserialize_enum, visitor, _name, _variants);
        // Only unit variants are written in routes files.
        let (text, _) = self.scalar(&visitor)?;
        visitor.visit_enum(text.into_deserializer())
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip()?;
        visitor.visit_unit()
    }
}

impl Deserializer<'_> {
    /// A mapping; for a struct (`fields`), keys it does not have are set
    /// aside as [`UnknownKey`]s with their values.
    fn mapping<'de, V: Visitor<'de>>(
        &mut self,
        visitor: V,
        fields: Option<&'static [&'static str]>,
    ) -> Result<V::Value, Error> {
        if let Some(target) = self.alias() {
            let mut target = target?;
            return target.mapping(visitor, fields);
        }
        match self.next()? {
            Ev::MapStart => {
                let outer = self.depth;
                self.depth = self.deeper()?;
                let value = visitor.visit_map(Entries {
                    de: self,
                    fields,
                    pushed: false,
                });
                self.depth = outer;
                let value = value?;
                match self.next()? {
                    Ev::MapEnd => Ok(value),
                    _ => Err(de::Error::custom(
                        "the mapping has more entries than expected",
                    )),
                }
            }
            ev => Err(de::Error::invalid_type(unexpected(ev), &visitor)),
        }
    }
}

struct Items<'a, 'b> {
    de: &'a mut Deserializer<'b>,
    index: usize,
}

impl<'de> SeqAccess<'de> for Items<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.de.peek()? {
            Ev::SeqEnd => Ok(None),
            _ => {
                self.de.path.push(Step::Index(self.index));
                self.index += 1;
                let value = seed.deserialize(&mut *self.de).map(Some);
                self.de.path.pop();
                value
            }
        }
    }
}

struct Entries<'a, 'b> {
    de: &'a mut Deserializer<'b>,
    /// A struct's fields: other keys are set aside.
    fields: Option<&'static [&'static str]>,
    /// The current key is on the path.
    pushed: bool,
}

impl<'de> MapAccess<'de> for Entries<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        loop {
            let node = self.de.events.get(self.de.at);
            let Some(node) = node else {
                return Err(Error("the file ends where a key was expected".into()));
            };
            match (&node.ev, self.fields) {
                (Ev::MapEnd, _) => return Ok(None),
                (Ev::Scalar(key, _), Some(fields)) if !fields.contains(&key.as_str()) => {
                    let unknown = UnknownKey {
                        path: self.de.path_text(key),
                        line: node.line,
                        message: <Error as de::Error>::unknown_field(key, fields).0,
                    };
                    self.de.unknown.borrow_mut().push(unknown);
                    self.de.at += 1;
                    self.de.skip()?;
                }
                (Ev::Scalar(key, _), _) => {
                    self.de.path.push(Step::Key(key));
                    self.pushed = true;
                    return seed.deserialize(&mut *self.de).map(Some);
                }
                _ => return seed.deserialize(&mut *self.de).map(Some),
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let value = seed.deserialize(&mut *self.de);
        if std::mem::take(&mut self.pushed) {
            self.de.path.pop();
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    fn parse<T: serde::de::DeserializeOwned>(source: &str) -> Result<T, String> {
        from_str(source)
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        count: u32,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        maybe: Option<String>,
        list: Vec<String>,
        map: BTreeMap<String, u64>,
        kind: Kind,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Public,
        Protected,
    }

    #[test]
    fn the_core_schema_and_aliases() {
        let sample: Sample = parse(
            "name: 123\ncount: 7\nflag: true\nmaybe: ~\nlist: &L [a, 'b', \"1\"]\nmap: {x: 1, y: 2}\nkind: protected\n",
        )
        .expect("valid");
        assert_eq!(sample.name, "123");
        assert_eq!(sample.count, 7);
        assert!(sample.flag);
        assert_eq!(sample.maybe, None);
        assert_eq!(sample.list, ["a", "b", "1"]);
        assert_eq!(sample.map["y"], 2);
        assert_eq!(sample.kind, Kind::Protected);
        let aliased: BTreeMap<String, Vec<String>> = parse("a: &L [x, y]\nb: *L\n").expect("alias");
        assert_eq!(aliased["b"], ["x", "y"]);
    }

    #[test]
    fn mistakes_are_errors() {
        for (source, expected) in [
            (
                "name: a\ncount: x\nlist: []\nmap: {}\nkind: public\n",
                "invalid type: string \"x\", expected u32",
            ),
            (
                "name: a\ncount: '5'\nlist: []\nmap: {}\nkind: public\n",
                "invalid type: string \"5\", expected u32",
            ),
            (
                "name: a\ncount: 5000000000\nlist: []\nmap: {}\nkind: public\n",
                "invalid value",
            ),
            (
                "name: a\ncount: 1\nlist: []\nmap: {}\nkind: open\n",
                "unknown variant `open`",
            ),
            (
                "name: a\ncount: 1\nlist: []\nmap: {}\nkind: public\nextra: 1\n",
                "unknown field `extra`",
            ),
            (
                "name: [a]\ncount: 1\nlist: []\nmap: {}\nkind: public\n",
                "invalid type: sequence",
            ),
            (
                "count: 1\nlist: []\nmap: {}\nkind: public\n",
                "missing field `name`",
            ),
            ("", "the file ends where a value was expected"),
        ] {
            let error = parse::<Sample>(source).expect_err(source);
            assert!(error.contains(expected), "{source:?}: {error}");
        }
    }

    /// A chain of aliases, each a list holding the one before, nests the
    /// value thousands deep in a few kilobytes: refused, never a stack
    /// overflow, wherever a type reads any value (an untagged enum here).
    #[test]
    fn alias_chains_cannot_nest_without_bound() {
        #[derive(Debug, Deserialize)]
        #[serde(untagged)]
        enum Any {
            Number(u64),
            Text(String),
        }
        let mut source = String::from("chain:\n  - &a0 [x]\n");
        for i in 1..1000 {
            source.push_str(&format!("  - &a{i} [*a{}]\n", i - 1));
        }
        source.push_str("value: *a999\n");
        #[derive(Debug, Deserialize)]
        struct Doc {
            chain: serde::de::IgnoredAny,
            value: Any,
        }
        let error = parse::<Doc>(&source).expect_err("too deep");
        assert!(error.contains("nest more than 64"), "{error}");
        // A shallow document reads either way.
        for (text, expected) in [("value: 7\n", Some(7)), ("value: x\n", None)] {
            let doc = parse::<Doc>(&format!("chain: []\n{text}")).expect("shallow");
            let _ = doc.chain;
            match doc.value {
                Any::Number(n) => assert_eq!(Some(n), expected),
                Any::Text(t) => assert_eq!((t.as_str(), expected), ("x", None)),
            }
        }
    }
}
