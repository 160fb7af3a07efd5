//! serde's error messages name Rust types and repeat paths; these say the same in the words of
//! the YAML a user writes: the offending value quoted, what would be accepted, and for an
//! unknown key the accepted key it was probably meant to be.

/// A serde message, reworded. `value` is the offending YAML value where the caller found it.
pub fn message(msg: &str, value: Option<&serde_yaml::Value>) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        // "unknown field `x`, expected one of `a`, `b`" or "..., expected `a`"
        let rest = rest.replace('`', "");
        return match rest.split_once(", expected ") {
            Some((field, expected)) => {
                let expected = expected.trim_start_matches("one of ");
                let known: Vec<&str> = expected.split(", ").collect();
                let guess = closest(field, &known)
                    .map(|g| format!(" (did you mean {g}?)"))
                    .unwrap_or_default();
                format!("unknown field {field}{guess}; the fields accepted here are {expected}")
            }
            None => format!("unknown field {rest}"),
        };
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        // "unknown variant `x`, expected `a` or `b`" / "expected one of `a`, `b`"
        let rest = rest.replace('`', "");
        return match rest.split_once(", expected ") {
            Some((got, expected)) => {
                let expected = expected.trim_start_matches("one of ");
                let known: Vec<&str> = expected
                    .split([',', ' '])
                    .filter(|s| !s.is_empty() && *s != "or")
                    .collect();
                let guess = closest(got, &known)
                    .map(|g| format!(": write {g}"))
                    .unwrap_or_default();
                format!("unknown value {got:?}; expected {expected}{guess}")
            }
            None => format!("unknown value {rest}"),
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing required field {}", rest.replace('`', ""));
    }
    let quoted = value.and_then(quote);
    let reworded = msg
        .replace("invalid type: ", "wrong type: ")
        .replace("expected u32", "expected a port number (1-65535)")
        .replace("expected u16", "expected a port number (1-65535)")
        .replace("expected usize", "expected a whole number")
        .replace("expected u64", "expected a whole number")
        .replace("expected a boolean", "expected true or false")
        .replace("unit value", "nothing (an empty value)");
    let reworded = match reworded.split_once("expected struct ") {
        Some((head, _)) => format!("{head}expected a mapping of keys"),
        None => reworded,
    };
    match quoted {
        // Messages of parsers (`invalid socket address syntax`) do not say what they read.
        Some(q) if !reworded.contains(&q) && !reworded.starts_with("wrong type") => {
            format!("{q}: {reworded}")
        }
        _ => reworded,
    }
}

/// A scalar as the user wrote it, quoted.
fn quote(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(format!("{s:?}")),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The accepted word `got` was most likely meant to be: one it is a prefix of (or the other
/// way round), else one at most two edits away.
pub fn closest<'a>(got: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = got.to_ascii_lowercase();
    if let Some(k) = known
        .iter()
        .find(|k| k.to_ascii_lowercase() == lower)
        .or_else(|| {
            known.iter().find(|k| {
                let k = k.to_ascii_lowercase();
                lower.len() >= 3 && k.len() >= 3 && (k.starts_with(&lower) || lower.starts_with(&k))
            })
        })
    {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edits(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len().max(2) / 2 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The value at a serde path (`proxy.listen[1]`) in a YAML document.
pub fn value_at<'a>(
    root: &'a serde_yaml::Value,
    path: &serde_path_to_error::Path,
) -> Option<&'a serde_yaml::Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(root, |v, seg| match seg {
        Segment::Seq { index } => v.get(*index),
        Segment::Map { key } => v.get(key.as_str()),
        Segment::Enum { .. } | Segment::Unknown => Some(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_suggest_the_key_meant() {
        let m = message(
            "unknown field `polices`, expected one of `policies`, `workloads`",
            None,
        );
        assert_eq!(
            m,
            "unknown field polices (did you mean policies?); the fields accepted here are policies, workloads"
        );
        let m = message(
            "unknown field `prot`, expected one of `type`, `value`, `port`, `protocol`",
            None,
        );
        assert!(m.contains("did you mean protocol?"), "{m}");
        let m = message("unknown field `zzz`, expected `a`", None);
        assert!(!m.contains("did you mean"), "{m}");
    }

    #[test]
    fn unknown_variants_name_the_accepted_values() {
        let m = message(
            "unknown variant `Sidecr`, expected `Sidecar` or `Gateway`",
            None,
        );
        assert_eq!(
            m,
            "unknown value \"Sidecr\"; expected Sidecar or Gateway: write Sidecar"
        );
        let m = message("unknown variant `deny`, expected `Allow` or `Deny`", None);
        assert!(m.ends_with("write Deny"), "{m}");
    }

    #[test]
    fn parser_messages_get_the_value_and_rust_types_go() {
        let v = serde_yaml::Value::String("localhost:9902".into());
        assert_eq!(
            message("invalid socket address syntax", Some(&v)),
            "\"localhost:9902\": invalid socket address syntax"
        );
        assert_eq!(
            message(
                "invalid type: string \"x\", expected usize",
                Some(&serde_yaml::Value::String("x".into()))
            ),
            "wrong type: string \"x\", expected a whole number"
        );
        assert_eq!(
            message("invalid type: sequence, expected struct AgentConfig", None),
            "wrong type: sequence, expected a mapping of keys"
        );
    }
}
