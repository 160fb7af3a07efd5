//! A nesting bound checked before a YAML or JSON text is parsed.
//!
//! libyaml's scanner (which serde_yaml runs on) revisits every open flow collection for each
//! token it reads, so a file of deeply nested `[[[[...` costs time quadratic in its depth
//! before serde_yaml's own recursion limit fires: 43 s of CPU for a 200 KB file. This module
//! walks the same scanner's event stream and stops at the first collection nested deeper
//! than [`MAX_DEPTH`]; up to that point each token costs at most [`MAX_DEPTH`] steps, so the
//! walk is linear in the text. Using libyaml itself, not a look-alike tokenizer, means a
//! bracket inside a quoted string, a block scalar or a comment is judged exactly as the
//! parser judges it.
//!
//! Contract: no panic on any input; work linear in the input's length.

use super::libyaml::{Event, Events};

/// Deepest nesting of mappings and sequences accepted. A MeshPassthrough nests six levels
/// (`spec.default.appendMatch[i].value`); the agent config about as many.
pub const MAX_DEPTH: usize = 64;

/// Where the text first nests deeper than the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooDeep {
    /// 1-based line of the collection that went past the bound.
    pub line: u64,
    pub bound: usize,
}

/// Checks that no mapping or sequence of `text` nests deeper than `bound`. A text that is
/// not valid YAML passes: the parser reports that itself, and up to its error the text was
/// no deeper than `bound`, so it gets there in linear time too.
pub fn check_depth(text: &str, bound: usize) -> Result<(), TooDeep> {
    let Some(mut events) = Events::new(text) else {
        return Ok(());
    };
    let mut depth = 0usize;
    loop {
        match events.next_event() {
            Event::MappingStart { line, .. } | Event::SequenceStart { line, .. } => {
                depth += 1;
                if depth > bound {
                    return Err(TooDeep {
                        line: line + 1,
                        bound,
                    });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            Event::StreamEnd | Event::Error => return Ok(()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> Option<TooDeep> {
        check_depth(text, MAX_DEPTH).err()
    }

    #[test]
    fn deep_flow_sequences_are_refused_at_the_line_that_passes_the_bound() {
        let text = format!("spec:\n  x: {}\n", "[".repeat(200_000));
        assert_eq!(
            depth_error(&text),
            Some(TooDeep {
                line: 2,
                bound: MAX_DEPTH
            })
        );
        let text = format!("{}{}", "{a: ".repeat(100), "}".repeat(100));
        assert!(depth_error(&text).is_some());
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        // Compact sequences: `- - - - x` nests one level per dash.
        let text = format!("{}x\n", "- ".repeat(100));
        assert_eq!(depth_error(&text).map(|e| e.line), Some(1));
        // Mappings by indentation, the 70th key on line 70.
        let text: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert_eq!(
            depth_error(&text).map(|e| e.line),
            Some(MAX_DEPTH as u64 + 1)
        );
    }

    #[test]
    fn nesting_at_the_bound_passes() {
        let at = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(depth_error(&at), None);
        let over = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(depth_error(&over).is_some());
    }

    #[test]
    fn brackets_in_strings_comments_and_block_scalars_are_not_nesting() {
        let open = "[".repeat(500);
        let close = "]".repeat(500);
        let text = format!(
            "# {open}\na: \"{open}\"\nb: '{open}'\nc: |\n  {open}\n  {close}\nd: >-\n  {{{{{{{{{{{open}\ne: x{open}\nf: [\"{close}\", '{open}', \"a\\\"{open}\"]\n"
        );
        assert_eq!(depth_error(&text), None, "{text}");
        let json = format!("{{\"a\": [\"{open}\", {{\"b\": \"{close}\"}}]}}");
        assert_eq!(depth_error(&json), None);
    }

    #[test]
    fn closing_brackets_in_strings_do_not_hide_real_nesting() {
        let text = format!(
            "a: [\"{}\", {}]\n",
            "]".repeat(1000),
            "[".repeat(MAX_DEPTH + 1)
        );
        assert!(depth_error(&text).is_some());
    }

    #[test]
    fn depth_is_counted_per_document() {
        let half = format!("{}{}\n", "[".repeat(40), "]".repeat(40));
        let text = format!("{half}---\n{half}---\n{half}");
        assert_eq!(depth_error(&text), None);
    }

    #[test]
    fn syntax_errors_are_left_to_the_parser() {
        assert_eq!(depth_error("a: [1, 2\n"), None);
        assert_eq!(depth_error("\t- : : ]]]"), None);
        assert_eq!(depth_error(""), None);
    }
}
