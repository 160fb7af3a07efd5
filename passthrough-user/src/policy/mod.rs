//! The policy engine: Kuma `MeshPassthrough` policies in, kernel map contents out.
//!
//! `load` reads files into [`Policy`] values, `validate` applies Kuma's rules to one policy,
//! `select` and `merge` pick and combine the policies of a workload exactly as Kuma does,
//! `compile` turns the merged configuration into [`compile::CompiledPolicy`] tables, and
//! `decide` is the reference decision the kernel programs and the peek proxy implement.
//! Nothing here needs root or touches the kernel.

pub mod bind;
pub mod compile;
pub mod containment;
pub mod decide;
pub mod load;
pub mod merge;
pub mod model;
pub mod set;
pub mod validate;
pub mod workload;

use serde::Serialize;

pub use self::model::{Policy, Source};

/// One broken rule: Kuma's field path and message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
