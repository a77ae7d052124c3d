//! Access control: Kailash-style ABAC rules compiled to Cedar, native Cedar policies, masking of
//! outputs, a decision cache, and the audit trail. Cedar is the only evaluator.
//!
//! - [`rules`]: the `*.rules.json` model, parsed with file:line for every problem.
//! - [`compile`]: rules → Cedar policy text and the generated Cedar schema.
//! - [`derive`]: values the host computes for Cedar (regex, string ordering, …), Kailash semantics.
//! - [`generation`]: one loaded, validated policy directory, sliced by (action, resource).
//! - [`engine`]: decisions, explanations, masking, hot reload.
//! - [`cache`], [`user`], [`mask`], [`audit`]: the pieces the engine uses.
//!
//! Issue 6 (workflows, `/v1/authorize`, `/v1/audit`) calls [`PolicyEngine`].

pub(crate) mod audit;
pub(crate) mod cache;
pub(crate) mod compile;
pub(crate) mod derive;
pub(crate) mod engine;
pub(crate) mod generation;
pub(crate) mod mask;
pub mod rules;
pub(crate) mod settings;
pub(crate) mod user;

pub use audit::AuditLog;
pub use engine::{
    AccessRequest, Decision, EngineSettings, PolicyEngine, PolicyWatcher, for_workflow,
};
pub use generation::{LoadError, PolicyGeneration};
pub use mask::{ExternalMasker, Masker};
pub use rules::ResourceType;
pub use user::{PreparedUser, UserContext};

#[cfg(test)]
mod tests;
