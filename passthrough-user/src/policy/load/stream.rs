//! A serde [`Deserializer`](de::Deserializer) straight on libyaml's events: one pass over
//! the text, each scalar handed to its visitor from libyaml's own buffer (no event list per
//! document, no allocation for a short string), and the nesting bound checked as it goes, so
//! a hostile `[[[[...` stops at [`MAX_DEPTH`](crate::policy::prescan::MAX_DEPTH) levels
//! without a separate scan.
//!
//! It reads only what it is sure of. A plain scalar it cannot place as serde_yaml would (a
//! float, a signed or non-decimal number, a leading zero), an anchor, an alias, a tag, a
//! null where a section belongs, or anything nested too deep is an [`Unusual`] error, and
//! the caller leaves the whole file to the `Value` reader, which names the problem.
//!
//! Contract: no panic on any input; work linear in the input's length.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::policy::libyaml::{Event, Events, Style};

/// Why the stream gave up; for tests and debugging only (the `Value` reader words the
/// errors operators see).
#[derive(Debug)]
pub struct Unusual(String);

impl fmt::Display for Unusual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unusual {}

impl de::Error for Unusual {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

fn unusual(what: &str) -> Unusual {
    Unusual(what.to_string())
}

/// What an untagged plain scalar means, as serde_yaml resolves it (YAML 1.2 core schema).
#[derive(Debug, PartialEq, Eq)]
pub enum Plain {
    Null,
    Bool(bool),
    Uint(u64),
    Str,
    /// A number or something close to one that this reader does not place.
    Unsure,
}

/// Resolves a plain scalar. Only what is certain is placed: a text that starts with a
/// digit, sign or dot and could be read as a number in any of serde_yaml's forms is
/// [`Plain::Unsure`], except a decimal without a leading zero and texts no number parser
/// accepts (an address with two dots or more, anything with `:` or `/` or a letter no
/// number form uses).
pub fn resolve(text: &str) -> Plain {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        _ => {}
    }
    let bytes = text.as_bytes();
    let first = bytes[0];
    if !first.is_ascii_digit() {
        // Numbers start with a digit, a sign or a dot (`.5`, `.inf`, `+1`, `-.inf`).
        return if matches!(first, b'+' | b'-' | b'.') {
            Plain::Unsure
        } else {
            Plain::Str
        };
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        if first == b'0' && bytes.len() > 1 {
            return Plain::Unsure;
        }
        return text.parse().map_or(Plain::Unsure, Plain::Uint);
    }
    // Bytes no integer (decimal, 0x, 0o, 0b) or float (digits, one dot, an exponent)
    // contains.
    let numeric = |b: &u8| {
        b.is_ascii_hexdigit() || matches!(b, b'x' | b'X' | b'o' | b'O' | b'.' | b'_' | b'+' | b'-')
    };
    if !bytes.iter().all(numeric) {
        return Plain::Str;
    }
    let dots = bytes.iter().filter(|&&b| b == b'.').count();
    if dots >= 2 && bytes.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return Plain::Str;
    }
    Plain::Unsure
}

/// Reads each document of `text` as an `Option<T>` (`None` for an empty one) and hands it
/// to `each`, in order. `None` when the stream gave up, or when `each` did.
pub fn for_each_document<T: DeserializeOwned>(
    text: &str,
    bound: usize,
    mut each: impl FnMut(Option<T>) -> Option<()>,
) -> Option<()> {
    let mut s = Stream::new(text, bound)?;
    if s.next() != Event::StreamStart {
        return None;
    }
    loop {
        match s.next() {
            Event::DocumentStart => {
                s.depth = 0;
                let doc = <Option<T> as de::Deserialize>::deserialize(&mut s).ok()?;
                if s.next() != Event::DocumentEnd {
                    return None;
                }
                each(doc)?;
            }
            Event::StreamEnd => return Some(()),
            _ => return None,
        }
    }
}

/// The deserializer: libyaml's events with one event of lookahead.
pub struct Stream<'a> {
    events: Events<'a>,
    /// An event read ahead and not consumed; its scalar text is still the parser's current.
    peeked: Option<Event>,
    depth: usize,
    bound: usize,
}

impl<'a> Stream<'a> {
    fn new(text: &'a str, bound: usize) -> Option<Self> {
        Some(Self {
            events: Events::new(text)?,
            peeked: None,
            depth: 0,
            bound,
        })
    }

    fn next(&mut self) -> Event {
        match self.peeked.take() {
            Some(e) => e,
            None => self.events.next_event(),
        }
    }

    fn peek(&mut self) -> Event {
        match self.peeked {
            Some(e) => e,
            None => {
                let e = self.events.next_event();
                self.peeked = Some(e);
                e
            }
        }
    }

    /// The text of the scalar just read or peeked.
    fn text(&self) -> Result<&str, Unusual> {
        self.events.scalar().ok_or_else(|| unusual("scalar text"))
    }

    fn enter(&mut self) -> Result<(), Unusual> {
        self.depth += 1;
        if self.depth > self.bound {
            return Err(unusual("nested too deep"));
        }
        Ok(())
    }

    /// Reads one collection whose start was just consumed, through `visit`, and checks that
    /// the visitor read it to its end.
    fn collection<R>(
        &mut self,
        visit: impl FnOnce(&mut Access<'_, 'a>) -> Result<R, Unusual>,
    ) -> Result<R, Unusual> {
        self.enter()?;
        let mut access = Access {
            de: self,
            ended: false,
        };
        let value = visit(&mut access)?;
        if !access.ended {
            return Err(unusual("a collection not read to its end"));
        }
        self.depth -= 1;
        Ok(value)
    }

    /// Consumes one node, whatever it holds.
    fn skip(&mut self) -> Result<(), Unusual> {
        let mut open = 0usize;
        loop {
            match self.next() {
                Event::MappingStart { .. } | Event::SequenceStart { .. } => {
                    open += 1;
                    if self.depth + open > self.bound {
                        return Err(unusual("nested too deep"));
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    open = open.checked_sub(1).ok_or_else(|| unusual("unbalanced"))?;
                }
                Event::Scalar { .. } | Event::Alias => {}
                _ => return Err(unusual("the document ended inside a node")),
            }
            if open == 0 {
                return Ok(());
            }
        }
    }
}

/// Sequence and mapping access; `ended` once the closing event was consumed.
struct Access<'s, 'a> {
    de: &'s mut Stream<'a>,
    ended: bool,
}

impl Access<'_, '_> {
    /// Whether the collection goes on; consumes its end if not.
    fn more(&mut self, end: Event) -> bool {
        if self.ended {
            return false;
        }
        if self.de.peek() == end {
            self.de.next();
            self.ended = true;
            return false;
        }
        true
    }
}

impl<'de> SeqAccess<'de> for Access<'_, '_> {
    type Error = Unusual;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Unusual> {
        if !self.more(Event::SequenceEnd) {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

impl<'de> MapAccess<'de> for Access<'_, '_> {
    type Error = Unusual;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Unusual> {
        if !self.more(Event::MappingEnd) {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Unusual> {
        seed.deserialize(&mut *self.de)
    }
}

impl<'de> de::Deserializer<'de> for &mut Stream<'_> {
    type Error = Unusual;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unusual> {
        match self.next() {
            Event::Scalar {
                decorated: false,
                style: Style::Quoted,
            } => v.visit_str(self.text()?),
            Event::Scalar {
                decorated: false,
                style: Style::Plain,
            } => {
                let text = self.text()?;
                match resolve(text) {
                    Plain::Null => v.visit_unit(),
                    Plain::Bool(b) => v.visit_bool(b),
                    Plain::Uint(n) => v.visit_u64(n),
                    Plain::Str => v.visit_str(text),
                    Plain::Unsure => Err(unusual("a number this reader does not place")),
                }
            }
            Event::SequenceStart {
                decorated: false, ..
            } => self.collection(|a| v.visit_seq(a)),
            Event::MappingStart {
                decorated: false, ..
            } => self.collection(|a| v.visit_map(a)),
            _ => Err(unusual("an anchor, alias, tag or misplaced event")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unusual> {
        if let Event::Scalar {
            decorated: false,
            style: Style::Plain,
        } = self.peek()
            && resolve(self.text()?) == Plain::Null
        {
            self.next();
            return v.visit_none();
        }
        v.visit_some(self)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unusual> {
        match self.next() {
            Event::Scalar {
                decorated: false,
                style,
            } => {
                let text = self.text()?;
                if style == Style::Quoted || resolve(text) == Plain::Str {
                    v.visit_str(text)
                } else {
                    Err(unusual("a plain scalar that is not a string"))
                }
            }
            _ => Err(unusual("not a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unusual> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unusual> {
        match self.next() {
            Event::Scalar {
                decorated: false, ..
            } => v.visit_str(self.text()?),
            _ => Err(unusual("a key that is not a scalar")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unusual> {
        match self.next() {
            Event::MappingStart {
                decorated: false, ..
            } => self.collection(|a| v.visit_map(a)),
            _ => Err(unusual("not a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Unusual> {
        self.deserialize_map(v)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unusual> {
        match self.next() {
            Event::SequenceStart {
                decorated: false, ..
            } => self.collection(|a| v.visit_seq(a)),
            _ => Err(unusual("not a sequence")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Unusual> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Unusual> {
        self.skip()?;
        v.visit_unit()
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, Unusual> {
        Err(unusual("an enum"))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, Unusual> {
        Err(unusual("a tuple"))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _v: V,
    ) -> Result<V::Value, Unusual> {
        Err(unusual("a tuple"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn one<T: DeserializeOwned>(text: &str) -> Option<Option<T>> {
        let mut out = None;
        for_each_document::<T>(text, 64, |d| {
            out = Some(d);
            Some(())
        })?;
        out
    }

    /// Reads `text` as a Value with this reader and, when it answers, checks that
    /// serde_yaml reads the same; whether it answered.
    fn agrees(text: &str) -> bool {
        let Some(mine) = one::<serde_yaml::Value>(text) else {
            return false;
        };
        let mine = mine.unwrap_or(serde_yaml::Value::Null);
        let theirs: serde_yaml::Value = serde_yaml::from_str(text)
            .unwrap_or_else(|e| panic!("{text:?}: read here as {mine:?}, serde_yaml: {e}"));
        assert_eq!(mine, theirs, "{text:?}");
        true
    }

    #[test]
    fn plain_scalars_resolve_as_serde_yaml_resolves_them() {
        for text in [
            "10.0.0.1",
            "2001:db8::1",
            "10.0.0.0/8",
            "8443",
            "0",
            "true",
            "False",
            "~",
            "null",
            "yes",
            "no",
            "on",
            "off",
            "y",
            "n",
            "inf",
            "nan",
            "infinity",
            "1password.com",
            "1.2.3",
            "1:20",
            "0.0.0.0/0",
            "a.b",
            "e5",
            "x1",
            "1 2",
            "18446744073709551615",
            "127.0.0.1",
            "1.1.1.1/32",
            "fe80::1",
            "::1",
            "1e",
            "1x",
            "0o",
            "0b2",
            "1_000",
        ] {
            agrees(text);
        }
        // Generated texts over the characters numbers, addresses and names are made of.
        let alphabet = b"0123456789.:/xXoObBeE+-_afinNItTy";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut placed = 0;
        for _ in 0..60_000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = 1 + (seed >> 60) as usize % 8;
            let text: String = (0..len)
                .map(|i| alphabet[((seed >> (i * 6)) & 63) as usize % alphabet.len()] as char)
                .collect();
            if agrees(&text) {
                placed += 1;
            }
        }
        assert!(placed > 20_000, "only {placed} texts were placed");
    }

    #[test]
    fn numbers_it_cannot_place_make_it_give_up() {
        for text in [
            "1.5", "-1", "+1", "0x1F", "0o17", "010", ".inf", "-.inf", ".nan", "1e3",
        ] {
            assert_eq!(resolve(text), Plain::Unsure, "{text}");
            assert!(one::<serde_yaml::Value>(text).is_none(), "{text}");
        }
    }

    #[test]
    fn documents_mappings_and_sequences_read_as_serde_yaml_reads_them() {
        let text = "a: [x, 'y', 8443]\nb: {c: \"10.0.0.1\", d: ~}\n---\n---\ne: |\n  f\n";
        let mut mine = Vec::new();
        for_each_document::<serde_yaml::Value>(text, 64, |d| {
            mine.push(d);
            Some(())
        })
        .expect("read");
        let theirs: Vec<Option<serde_yaml::Value>> = serde_yaml::Deserializer::from_str(text)
            .map(|d| {
                let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("value");
                (!v.is_null()).then_some(v)
            })
            .collect();
        assert_eq!(mine, theirs);
        assert_eq!(mine.len(), 3);
    }

    #[test]
    fn anchors_aliases_tags_and_syntax_errors_give_up() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: !t {b: c}\n",
            "a: [1, 2\n",
            "a: b\n c: d\n",
        ] {
            assert!(
                one::<BTreeMap<String, serde_yaml::Value>>(text).is_none(),
                "{text}"
            );
        }
    }

    #[test]
    fn nesting_past_the_bound_gives_up_after_linear_work() {
        // 200 000 open brackets: the quadratic scan would take minutes; the stream stops
        // at level 65.
        let text = format!("a: {}\n", "[".repeat(200_000));
        assert!(one::<serde_yaml::Value>(&text).is_none());
        let at = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(one::<serde_yaml::Value>(&at).is_some());
        let over = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(one::<serde_yaml::Value>(&over).is_none());
        // Skipped values count too.
        #[derive(serde::Deserialize)]
        struct Loose {
            #[expect(dead_code, reason = "read to be skipped")]
            a: Option<u8>,
        }
        let deep = format!("b: {}{}\n", "[".repeat(70), "]".repeat(70));
        assert!(one::<Loose>(&deep).is_none());
    }
}
