//! The policy engine: Kuma `MeshPassthrough` policies in, kernel map contents out.
//!
//! `load` reads files into [`Policy`] values, `validate` applies Kuma's rules to one policy,
//! `select` and `merge` pick and combine the policies of a workload exactly as Kuma does,
//! `compile` turns the merged configuration into [`compile::CompiledPolicy`] tables, and
//! `decide` is the reference decision the kernel programs and the peek proxy implement.
//! Nothing here needs root or touches the kernel.

pub mod bind;
pub mod cache;
pub mod compile;
pub mod containment;
pub mod decide;
pub mod describe;
pub mod document;
pub mod hints;
pub mod kuma;
pub mod kuma3;
pub(crate) mod libyaml;
pub mod load;
pub mod merge;
pub mod migrate;
pub mod model;
pub mod overlap;
pub mod prescan;
pub mod rules;
pub mod set;
pub mod simulate;
pub mod tables;
pub mod validate;
pub mod workload;

use serde::Serialize;

pub use self::model::{Policy, Source};

/// How much a finding matters: an error refuses the policy set (the agent keeps its last
/// good state, `validate` exits 1); a warning is reported and the set is still applied
/// (`validate --strict` makes warnings fail too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One finding about a policy: Kuma's field path and message, byte for byte where the rule is
/// Kuma's (tooling greps them), and passthrough's own `hint` beside it: the offending value,
/// what was expected, and the fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub severity: Severity,
    pub field: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Violation {
    /// An error (the policy is refused).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            field: field.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// A warning (the policy is applied; the finding is reported).
    pub fn warning(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::new(field, message)
        }
    }

    /// Adds passthrough's explanation beside the message.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
