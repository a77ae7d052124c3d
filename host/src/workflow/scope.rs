//! Node ids are policy resources shared by every workflow unless a rule names one workflow's node
//! (`"workflow": "…"`). This module finds where that sharing may surprise: a node id that two
//! loaded workflows both have and that a rule names without `workflow` (the second workflow
//! inherits the first's grants and masks), and a rule scoped to a workflow that is not loaded or
//! has no such node. The host logs each warning when the policies or the workflows change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use crate::policy::generation::NodeRef;
use crate::policy::{PolicyEngine, PolicyGeneration};

use super::set::{Loaded, WorkflowSet};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeWarning {
    /// `rule` names `node` without a workflow, and several workflows have a node of that id.
    Shared {
        /// The rule (or masking rule) and where it was written.
        rule: NodeRef,
        /// The workflows with a node of that id, sorted.
        workflows: Vec<String>,
    },
    /// `rule` names a workflow that is not loaded.
    NoWorkflow {
        /// The rule.
        rule: NodeRef,
    },
    /// `rule` names a node its workflow does not have.
    NoNode {
        /// The rule.
        rule: NodeRef,
    },
}

impl fmt::Display for ScopeWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeWarning::Shared { rule, workflows } => write!(
                f,
                "{}: `{}` names node `{}` of every workflow, and workflows `{}` each have a node `{}`: they share its grants and masks\n  hint: to name one workflow's node, add `\"workflow\": \"{}\"`",
                rule.loc,
                rule.by,
                rule.node,
                workflows.join("`, `"),
                rule.node,
                workflows[0],
            ),
            ScopeWarning::NoWorkflow { rule } | ScopeWarning::NoNode { rule } => {
                let (missing, hint) = match self {
                    ScopeWarning::NoWorkflow { .. } => (
                        "which is not loaded",
                        "check the workflow's name (its `name`, or its file name without `.toml`)",
                    ),
                    _ => (
                        "which has no such node",
                        "check the node id in the workflow file",
                    ),
                };
                write!(
                    f,
                    "{}: `{}` names node `{}` of workflow `{}`, {missing}: it applies to nothing\n  hint: {hint}",
                    rule.loc,
                    rule.by,
                    rule.node,
                    rule.workflow.as_deref().unwrap_or_default(),
                )
            }
        }
    }
}

/// What `policies` says about `workflows` that a user should know (see the module docs).
pub fn check(workflows: &Loaded, policies: &PolicyGeneration) -> Vec<ScopeWarning> {
    let mut owners: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, w) in &workflows.workflows {
        for node in &w.nodes {
            owners.entry(&node.id).or_default().insert(name);
        }
    }
    let mut out = Vec::new();
    for r in policies.node_refs() {
        match &r.workflow {
            None => {
                if let Some(ws) = owners.get(r.node.as_str())
                    && ws.len() > 1
                {
                    out.push(ScopeWarning::Shared {
                        rule: r.clone(),
                        workflows: ws.iter().map(|w| (*w).to_owned()).collect(),
                    });
                }
            }
            Some(w) => match workflows.workflows.get(w) {
                None => out.push(ScopeWarning::NoWorkflow { rule: r.clone() }),
                Some(wf) if !wf.nodes.iter().any(|n| n.id == r.node) => {
                    out.push(ScopeWarning::NoNode { rule: r.clone() });
                }
                Some(_) => {}
            },
        }
    }
    out
}

/// Logs [`check`]'s warnings now, and again each time the policies or the workflows change,
/// until the returned task is aborted.
pub fn watch(
    policy: Arc<PolicyEngine>,
    workflows: Arc<WorkflowSet>,
) -> tokio::task::JoinHandle<()> {
    let mut policy_changes = policy.changes();
    let mut workflow_changes = workflows.changes();
    tokio::spawn(async move {
        let mut last: Vec<ScopeWarning> = Vec::new();
        loop {
            let found = check(&workflows.current(), &policy.generation());
            // Only what is new: an unrelated reload does not repeat every warning.
            for w in found.iter().filter(|w| !last.contains(w)) {
                tracing::warn!("{w}");
            }
            last = found;
            tokio::select! {
                r = policy_changes.changed() => if r.is_err() { return },
                r = workflow_changes.changed() => if r.is_err() { return },
            }
        }
    })
}
