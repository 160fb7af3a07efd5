//! libyaml's event parser (the one serde_yaml runs on) behind a safe interface: the nesting
//! prescan and the streaming policy reader walk the same events the parser judges a text
//! by, so a bracket in a string, a block scalar or a comment means to them what it means to
//! libyaml.
//!
//! Contract: no panic on any input; a syntax error ends the stream.

use std::{marker::PhantomData, mem::MaybeUninit};

use unsafe_libyaml as unsafe_sys;

/// What a walk needs of one libyaml event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    StreamStart,
    DocumentStart,
    DocumentEnd,
    /// A mapping or sequence starts on this 0-based line; `decorated` when it carries an
    /// anchor or a tag.
    MappingStart {
        line: u64,
        decorated: bool,
    },
    SequenceStart {
        line: u64,
        decorated: bool,
    },
    MappingEnd,
    SequenceEnd,
    /// A scalar, its text in [`Events::scalar`] until the next event.
    Scalar {
        style: Style,
        decorated: bool,
    },
    Alias,
    StreamEnd,
    /// A syntax error (or libyaml out of memory): nothing follows.
    Error,
}

/// How a scalar was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Unquoted: its meaning (null, bool, number, string) depends on its text.
    Plain,
    /// Quoted or a block scalar: always a string.
    Quoted,
}

/// libyaml's event parser over a borrowed text.
pub struct Events<'a> {
    /// Boxed: libyaml keeps a pointer to the parser in its own input handler, so it must not
    /// move once initialised.
    parser: Box<MaybeUninit<unsafe_sys::yaml_parser_t>>,
    /// The last event returned, alive (and freed) until the next call.
    event: Option<Box<MaybeUninit<unsafe_sys::yaml_event_t>>>,
    done: bool,
    text: PhantomData<&'a str>,
}

impl<'a> Events<'a> {
    /// `None` if libyaml cannot allocate its parser.
    pub fn new(text: &'a str) -> Option<Self> {
        let mut parser = Box::new(MaybeUninit::<unsafe_sys::yaml_parser_t>::uninit());
        let p = parser.as_mut_ptr();
        // SAFETY: `p` points to writable memory for a parser, which initialize fills in.
        if unsafe { unsafe_sys::yaml_parser_initialize(p) }.fail {
            return None;
        }
        // SAFETY: the parser is initialised; `text` outlives it (the lifetime 'a of Self),
        // and it stays at the same address (boxed) as libyaml requires.
        unsafe {
            unsafe_sys::yaml_parser_set_encoding(p, unsafe_sys::YAML_UTF8_ENCODING);
            unsafe_sys::yaml_parser_set_input_string(p, text.as_ptr(), text.len() as u64);
        }
        Some(Self {
            parser,
            event: None,
            done: false,
            text: PhantomData,
        })
    }

    /// Frees the event held from the last call, if any.
    fn release(&mut self) {
        if let Some(mut event) = self.event.take() {
            // SAFETY: a held event was filled in by a successful parse and not freed yet.
            unsafe { unsafe_sys::yaml_event_delete(event.as_mut_ptr()) }
        }
    }

    /// The next event; [`Event::StreamEnd`] or [`Event::Error`] repeat once reached.
    pub fn next_event(&mut self) -> Event {
        self.release();
        if self.done {
            return Event::Error;
        }
        let mut event = Box::new(MaybeUninit::<unsafe_sys::yaml_event_t>::uninit());
        // SAFETY: the parser is initialised with a live input; after an error or the end
        // of the stream it is not called again (`done`).
        let parsed =
            unsafe { unsafe_sys::yaml_parser_parse(self.parser.as_mut_ptr(), event.as_mut_ptr()) };
        if parsed.fail {
            self.done = true;
            return Event::Error;
        }
        let e = event.as_ptr();
        // SAFETY: a successful parse filled in the event; the union member read is the one
        // its type names.
        let kind = unsafe {
            let line = (*e).start_mark.line;
            match (*e).type_ {
                unsafe_sys::YAML_STREAM_START_EVENT => Event::StreamStart,
                unsafe_sys::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
                unsafe_sys::YAML_DOCUMENT_END_EVENT => Event::DocumentEnd,
                unsafe_sys::YAML_MAPPING_START_EVENT => {
                    let m = &(*e).data.mapping_start;
                    Event::MappingStart {
                        line,
                        decorated: !m.anchor.is_null() || !m.tag.is_null(),
                    }
                }
                unsafe_sys::YAML_SEQUENCE_START_EVENT => {
                    let s = &(*e).data.sequence_start;
                    Event::SequenceStart {
                        line,
                        decorated: !s.anchor.is_null() || !s.tag.is_null(),
                    }
                }
                unsafe_sys::YAML_MAPPING_END_EVENT => Event::MappingEnd,
                unsafe_sys::YAML_SEQUENCE_END_EVENT => Event::SequenceEnd,
                unsafe_sys::YAML_SCALAR_EVENT => {
                    let s = &(*e).data.scalar;
                    Event::Scalar {
                        style: if s.style == unsafe_sys::YAML_PLAIN_SCALAR_STYLE {
                            Style::Plain
                        } else {
                            Style::Quoted
                        },
                        decorated: !s.anchor.is_null() || !s.tag.is_null(),
                    }
                }
                unsafe_sys::YAML_ALIAS_EVENT => Event::Alias,
                unsafe_sys::YAML_STREAM_END_EVENT => Event::StreamEnd,
                _ => Event::Error,
            }
        };
        self.event = Some(event);
        if matches!(kind, Event::StreamEnd | Event::Error) {
            self.done = true;
        }
        kind
    }

    /// The text of the scalar just returned, `None` after any other event or when it is not
    /// UTF-8 (libyaml checks its input, so that does not happen for a `&str`).
    pub fn scalar(&self) -> Option<&str> {
        let event = self.event.as_ref()?;
        let e = event.as_ptr();
        // SAFETY: a held event is a filled-in event; for a scalar, `value` points to
        // `length` bytes owned by the event, which lives until the next call (which takes
        // `&mut self`, so the borrow returned here ends first).
        unsafe {
            if (*e).type_ != unsafe_sys::YAML_SCALAR_EVENT {
                return None;
            }
            let s = &(*e).data.scalar;
            if s.value.is_null() {
                return Some("");
            }
            let bytes = std::slice::from_raw_parts(s.value, s.length as usize);
            std::str::from_utf8(bytes).ok()
        }
    }
}

impl Drop for Events<'_> {
    fn drop(&mut self) {
        self.release();
        // SAFETY: the parser was initialised in `new` (a `Self` exists only then) and is
        // deleted once, here.
        unsafe { unsafe_sys::yaml_parser_delete(self.parser.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<(Event, Option<String>)> {
        let mut e = Events::new(text).expect("parser");
        let mut out = Vec::new();
        loop {
            let ev = e.next_event();
            out.push((ev, e.scalar().map(str::to_string)));
            if matches!(ev, Event::StreamEnd | Event::Error) {
                return out;
            }
        }
    }

    #[test]
    fn scalars_carry_their_text_and_style() {
        let ev = events("a: 'b'\nc: [d, \"e\"]\n");
        let scalars: Vec<_> = ev
            .iter()
            .filter_map(|(e, s)| match e {
                Event::Scalar { style, .. } => Some((*style, s.clone().unwrap_or_default())),
                _ => None,
            })
            .collect();
        assert_eq!(
            scalars,
            [
                (Style::Plain, "a".into()),
                (Style::Quoted, "b".into()),
                (Style::Plain, "c".into()),
                (Style::Plain, "d".into()),
                (Style::Quoted, "e".into()),
            ]
        );
        assert_eq!(ev.last().map(|e| e.0), Some(Event::StreamEnd));
    }

    #[test]
    fn anchors_tags_and_aliases_are_marked() {
        let ev = events("a: &x [1]\nb: *x\nc: !!str 3\n");
        assert!(ev.iter().any(|e| matches!(
            e.0,
            Event::SequenceStart {
                decorated: true,
                ..
            }
        )));
        assert!(ev.iter().any(|e| e.0 == Event::Alias));
        assert!(ev.iter().any(|e| matches!(
            e.0,
            Event::Scalar {
                decorated: true,
                ..
            }
        )));
    }

    #[test]
    fn a_syntax_error_ends_the_stream() {
        let ev = events("a: [1, 2\n");
        assert_eq!(ev.last().map(|e| e.0), Some(Event::Error));
        let mut e = Events::new("").expect("parser");
        assert_eq!(e.next_event(), Event::StreamStart);
        assert_eq!(e.next_event(), Event::StreamEnd);
        assert_eq!(e.next_event(), Event::Error);
    }
}
