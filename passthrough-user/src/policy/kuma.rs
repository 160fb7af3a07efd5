//! Which Kuma the policies are written for, and how Kuma meets them.
//!
//! Kuma 2.x (the API the seeds document: `MeshSubset`, `proxyTypes`, Dataplanes by name) and
//! Kuma 3 (Kong Mesh 3: `Mesh` and `Dataplane` by labels only, Domain entries with a port,
//! pinned to their resolved addresses) read the same `MeshPassthrough` differently. Every
//! difference is decided from a [`KumaVersion`]; docs/policy.md has them side by side.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The Kuma release line the policies are written for (`kuma.version` in the agent config,
/// `--kuma-version` on the CLI). Written `"2"` or `"3"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KumaVersion {
    /// Kuma 2.x, as of v2.14.3 (the default).
    #[default]
    V2,
    /// Kuma 3 (Kong Mesh 3).
    V3,
}

impl KumaVersion {
    /// `"2"` or `"3"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            KumaVersion::V2 => "2",
            KumaVersion::V3 => "3",
        }
    }
}

impl fmt::Display for KumaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KumaVersion {
    type Err = String;

    /// `2` and `3`; a release (`2.14.3`, `3.0`) is read as its line, so an operator may
    /// write the version they run.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let major = s.trim().trim_start_matches(['v', 'V']);
        let major = major.split('.').next().unwrap_or(major);
        match major {
            "2" => Ok(KumaVersion::V2),
            "3" => Ok(KumaVersion::V3),
            _ => Err(format!(
                "{s:?} is not a Kuma version passthrough knows: write \"2\" (Kuma 2.x, the default) or \"3\" (Kuma 3)"
            )),
        }
    }
}

impl Serialize for KumaVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KumaVersion {
    /// A string (`"3"`, `"2.14"`) or a bare number (`3`, which YAML reads as one).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Whole(u64),
            Real(f64),
        }
        let text = match Written::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a Kuma version: write \"2\" or \"3\"")
        })? {
            Written::Text(s) => s,
            Written::Whole(n) => n.to_string(),
            Written::Real(x) => x.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How Kuma 3 meets a policy. Kuma 3 refuses some 2.x forms when a policy is applied (a
/// Domain without a port, two matches building one listener filter chain) but keeps a policy
/// that was stored before the upgrade and quietly changes what it means (the entry without a
/// port stops applying, the later match of a conflicting pair is dropped). passthrough
/// reports the first as errors and the second as warnings, and enforces what Kuma 3 enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// The policy is being applied: what Kuma 3 refuses is an error (files, by default).
    #[default]
    Apply,
    /// The policy is already in Kuma's store (objects read from the Kubernetes API, or files
    /// given with `--stored`): what Kuma 3 would refuse on apply is a warning, with the
    /// meaning Kuma 3 gives it.
    Stored,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_written_as_their_line_in_text_or_as_a_number() {
        for (text, want) in [
            ("2", KumaVersion::V2),
            ("3", KumaVersion::V3),
            ("2.14.3", KumaVersion::V2),
            ("v3.0", KumaVersion::V3),
        ] {
            assert_eq!(text.parse::<KumaVersion>(), Ok(want), "{text}");
        }
        for bad in ["", "1", "4", "three", "23"] {
            let e = bad.parse::<KumaVersion>().expect_err(bad);
            assert!(e.contains("write \"2\""), "{e}");
        }
        let v: KumaVersion = serde_yaml::from_str("3").expect("number");
        assert_eq!(v, KumaVersion::V3);
        let v: KumaVersion = serde_yaml::from_str("\"2\"").expect("text");
        assert_eq!(v, KumaVersion::V2);
        let v: KumaVersion = serde_yaml::from_str("3.0").expect("real");
        assert_eq!(v, KumaVersion::V3);
        assert!(serde_yaml::from_str::<KumaVersion>("[3]").is_err());
        assert_eq!(
            serde_json::to_string(&KumaVersion::V3).expect("json"),
            "\"3\""
        );
    }
}
