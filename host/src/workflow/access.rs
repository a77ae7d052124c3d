//! The access-controlled runtime (Kailash's `AccessControlledRuntime`): every run is decided by
//! the policy engine before anything runs, on one pinned generation (see `crate::generation`):
//! its policies decide and mask, its plugins run the plugin nodes and the `plugin:` masks.
//!
//! 1. workflow `execute`: denied → the run is refused.
//! 2. per node, before the run: `skip` allowed → the node is skipped for this user; else `execute`
//!    denied → the run is refused naming the node, unless the node is `optional` (then skipped).
//!    Nodes downstream of a skipped node are skipped too. A node that reads an input the caller
//!    supplied (`$inputs.NAME`; a default is not supplied) needs `write_input`, else the run is
//!    refused naming the node.
//! 3. per node, after the run: `read_output` denied → its output is withheld from the response;
//!    else the node's masking rules are applied to its rows before they leave the host.
//!
//! Downstream nodes see clear values unless the node is marked `mask_downstream` in the
//! workflow (then they see exactly what the user would). Every decision goes to the audit log.

use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::runtime::{OutputFilter, Plan, RunError, Runtime};
use super::spec::{NodeSpec, Workflow};
use crate::plugins::{PluginSet, RegistryMasker};
use crate::policy::{
    AccessRequest, Decision, Masker, PolicyEngine, PolicyGeneration, PreparedUser, ResourceType,
};

/// The policy resource (a workflow id no workflow can have) guarding the admin endpoints:
/// `/v1/authorize` and `/v1/audit` need permission `admin` on it.
pub const ADMIN_RESOURCE: &str = crate::policy::rules::ADMIN_WORKFLOW;

/// A new run id: a random (version 4) UUID.
pub fn new_run_id() -> String {
    let mut bytes = [0u8; 16];
    bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// What a run returns.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run's id (also in the logs and the audit trail's timing).
    pub run_id: String,
    /// The workflow.
    pub workflow: String,
    /// The host's generation (policies, plugins and workflows) the whole run used; 0 outside a
    /// served host.
    pub generation: u64,
    /// The policy generation every decision of this run was made with.
    pub policy_generation: u64,
    /// Output per node the user may read, masked.
    pub results: Map<String, Value>,
    /// Masks applied: `{"node", "fields": ["ssn:redact", …]}`.
    pub masked: Vec<Value>,
    /// Nodes not run: `{"node", "reason"}`.
    pub skipped: Vec<Value>,
    /// Nodes that ran but whose output this user may not read.
    pub withheld: Vec<String>,
    /// Masks that failed (their fields were redacted, never passed through).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mask_errors: Vec<String>,
}

impl RunReport {
    /// The report as JSON text, the bytes `serde_json::to_vec(self)` gives, written faster
    /// ([`crate::json::write_value`]): what `POST /v1/workflows/{name}/run` answers.
    pub fn to_json(&self) -> Vec<u8> {
        use crate::json::{write_object, write_str, write_strings, write_values};
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"run_id\":");
        write_str(&mut out, &self.run_id);
        out.extend_from_slice(b",\"workflow\":");
        write_str(&mut out, &self.workflow);
        out.extend_from_slice(b",\"generation\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.generation).as_bytes());
        out.extend_from_slice(b",\"policy_generation\":");
        out.extend_from_slice(
            itoa::Buffer::new()
                .format(self.policy_generation)
                .as_bytes(),
        );
        out.extend_from_slice(b",\"results\":");
        write_object(&mut out, &self.results);
        out.extend_from_slice(b",\"masked\":");
        write_values(&mut out, &self.masked);
        out.extend_from_slice(b",\"skipped\":");
        write_values(&mut out, &self.skipped);
        out.extend_from_slice(b",\"withheld\":");
        write_strings(&mut out, &self.withheld);
        if !self.mask_errors.is_empty() {
            out.extend_from_slice(b",\"mask_errors\":");
            write_strings(&mut out, &self.mask_errors);
        }
        out.push(b'}');
        out
    }
}

/// A refusal.
#[derive(Debug, Clone, Serialize)]
pub struct Denial {
    /// `workflow` or `node`.
    pub resource_type: &'static str,
    /// Its id.
    pub resource_id: String,
    /// The permission refused.
    pub permission: &'static str,
    /// The engine's one-line reason (names policies: shown to admins only).
    pub reason: String,
    /// The deciding policy ids (shown to admins only).
    pub policies: Vec<String>,
    /// The generation that decided.
    pub generation: u64,
}

/// Why a run did not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Policy refused the run.
    #[error("access denied: `{}` on {} `{}`", .0.permission, .0.resource_type, .0.resource_id)]
    Denied(Denial),
    /// The inputs do not fit the workflow.
    #[error("invalid inputs: {}", .0.join("; "))]
    Inputs(Vec<String>),
    /// A node failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// What a run pins for its whole length (from the host's generation: see `crate::generation`).
#[derive(Debug, Clone)]
pub struct Pinned {
    /// The generation's number (0 outside a served host).
    pub generation: u64,
    /// The policies that decide and mask.
    pub policy: Arc<PolicyGeneration>,
    /// The plugins that run the plugin nodes and the `plugin:` masks.
    pub plugins: Arc<PluginSet>,
}

/// The runtime with policy in front.
#[derive(Clone)]
pub struct AccessControlledRuntime {
    runtime: Runtime,
    policy: Arc<PolicyEngine>,
    /// The longest a run may take (the server's `request_timeout`): masking plugins must be
    /// done within it, and redact what they have not masked when it runs out.
    budget: Option<std::time::Duration>,
}

impl AccessControlledRuntime {
    /// Guards `runtime` with `policy`.
    pub fn new(runtime: Runtime, policy: Arc<PolicyEngine>) -> AccessControlledRuntime {
        AccessControlledRuntime {
            runtime,
            policy,
            budget: None,
        }
    }

    /// Bounds each run by `budget` (see [`AccessControlledRuntime::run`]).
    pub fn with_budget(mut self, budget: std::time::Duration) -> AccessControlledRuntime {
        self.budget = Some(budget);
        self
    }

    /// The policy engine.
    pub fn policy(&self) -> &Arc<PolicyEngine> {
        &self.policy
    }

    /// The runtime underneath.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Whether `user` may use the admin endpoints (`admin` on workflow `ADMIN_RESOURCE` (`trellis:api`)).
    pub fn is_admin(&self, user: &PreparedUser) -> bool {
        self.may(user, ADMIN_RESOURCE, "admin", json!({}))
    }

    /// Whether `user` may see workflow `name` in listings (`view`).
    pub fn may_view(&self, user: &PreparedUser, name: &str) -> bool {
        self.may(user, name, "view", json!({"workflow": name}))
    }

    /// Whether `user` has `permission` on workflow `name` now, outside a run.
    fn may(&self, user: &PreparedUser, name: &str, permission: &str, runtime: Value) -> bool {
        self.policy
            .decide(&AccessRequest {
                user,
                resource_type: ResourceType::Workflow,
                resource_id: name,
                permission,
                now: Timestamp::now(),
                runtime: &runtime,
            })
            .allowed
    }

    /// Runs `workflow` for `user` with `inputs` (no client address: `runtime.ip_address` is
    /// absent, as for `trellis run`).
    pub async fn run(
        &self,
        workflow: &Arc<Workflow>,
        user: &PreparedUser,
        inputs: &Map<String, Value>,
        run_id: String,
    ) -> Result<RunReport, AccessError> {
        self.run_from(workflow, user, inputs, run_id, None).await
    }

    /// [`AccessControlledRuntime::run`] for a caller at address `ip` (`runtime.ip_address`), on
    /// the policies and plugins in service now.
    pub async fn run_from(
        &self,
        workflow: &Arc<Workflow>,
        user: &PreparedUser,
        inputs: &Map<String, Value>,
        run_id: String,
        ip: Option<std::net::IpAddr>,
    ) -> Result<RunReport, AccessError> {
        let pinned = Pinned {
            generation: 0,
            policy: self.policy.generation(),
            plugins: self.runtime.plugins().snapshot(),
        };
        self.run_in(&pinned, workflow, user, inputs, run_id, ip)
            .await
    }

    /// [`AccessControlledRuntime::run_from`] on `pinned`: its policies decide and mask, its
    /// plugins run; whatever is swapped meanwhile serves later runs.
    pub async fn run_in(
        &self,
        pinned: &Pinned,
        workflow: &Arc<Workflow>,
        user: &PreparedUser,
        inputs: &Map<String, Value>,
        run_id: String,
        ip: Option<std::net::IpAddr>,
    ) -> Result<RunReport, AccessError> {
        let deadline = self.budget.map(|b| std::time::Instant::now() + b);
        let generation = pinned.policy.clone();
        let now = Timestamp::now();
        // `plugin:` masks go to the pinned plugins.
        let masker = if self.policy.masker().has_external() {
            self.policy
                .masker()
                .clone()
                .with_external(Arc::new(RegistryMasker::pinned(pinned.plugins.clone())))
        } else {
            self.policy.masker().clone()
        };
        let decisions = Decisions {
            policy: &self.policy,
            generation: &generation,
            masker: &masker,
            user,
            now,
        };
        // The runtime attributes rules read (`runtime.…`); see policies/README.md.
        let mut ctx = json!({"workflow": workflow.name, "run_id": run_id});
        if let Some(ip) = ip {
            ctx["ip_address"] = json!(ip.to_string());
        }
        let (allowed, d) = decisions.ask(&ctx, ResourceType::Workflow, &workflow.name, "execute");
        if !allowed {
            return Err(deny("workflow", &workflow.name, "execute", d));
        }
        let given = inputs;
        let inputs = workflow.bind_inputs(inputs).map_err(AccessError::Inputs)?;
        ctx["inputs"] = Value::Object(inputs.clone());
        // Shared from here: the plugin nodes' database policy keeps it for the whole run.
        let ctx = Arc::new(ctx);

        let skip = decisions.skips(workflow, &ctx, given)?;
        let downstream_filter = decisions.downstream_filter(workflow, &ctx);
        let plan = Plan {
            skip,
            downstream_filter,
            tenant: Arc::from(user.context().tenant_id.as_str()),
            database_policy: Some(decisions.database_policy(&ctx)),
            plugins: Some(pinned.plugins.clone()),
        };
        let run = self.runtime.run(workflow, &inputs, &plan).await?;

        let report = RunReport {
            run_id,
            workflow: workflow.name.clone(),
            generation: pinned.generation,
            policy_generation: generation.id(),
            results: Map::new(),
            masked: Vec::new(),
            skipped: run
                .skipped
                .iter()
                .map(|(node, reason)| json!({"node": node, "reason": reason}))
                .collect(),
            withheld: Vec::new(),
            mask_errors: Vec::new(),
        };
        let finish = Finish {
            policy: self.policy.clone(),
            generation: generation.clone(),
            masker,
            user: user.clone(),
            workflow: workflow.clone(),
            ctx,
            now,
            deadline,
        };
        finish.run(report, run.outputs).await
    }
}

/// The policy decisions of one run: one user, one pinned policy generation, one instant.
struct Decisions<'a> {
    policy: &'a Arc<PolicyEngine>,
    generation: &'a Arc<PolicyGeneration>,
    masker: &'a Masker,
    user: &'a PreparedUser,
    now: Timestamp,
}

impl Decisions<'_> {
    /// Whether `permission` on `id` is allowed in context `ctx`, with the decision.
    fn ask(
        &self,
        ctx: &Value,
        resource_type: ResourceType,
        id: &str,
        permission: &'static str,
    ) -> (bool, Decision) {
        let decision = self.policy.decide_in(
            self.generation,
            &AccessRequest {
                user: self.user,
                resource_type,
                resource_id: id,
                permission,
                now: self.now,
                runtime: ctx,
            },
        );
        (decision.allowed, decision)
    }

    /// Per node: why it is skipped, or the refusal ending the run (`given`: the caller's inputs).
    #[allow(clippy::result_large_err)]
    fn skips(
        &self,
        workflow: &Workflow,
        ctx: &Value,
        given: &Map<String, Value>,
    ) -> Result<Vec<Option<String>>, AccessError> {
        let mut skip: Vec<Option<String>> = vec![None; workflow.nodes.len()];
        for &i in &workflow.order {
            let node = &workflow.nodes[i];
            // A node downstream of a skipped node is skipped: it is not asked about.
            if let Some(&up) = workflow.upstream[i].iter().find(|&&u| skip[u].is_some()) {
                skip[i] = Some(format!(
                    "upstream node `{}` was skipped",
                    workflow.nodes[up].id
                ));
                continue;
            }
            if self.ask(ctx, ResourceType::Node, &node.id, "skip").0 {
                skip[i] = Some("policy skips this node for you".to_owned());
                continue;
            }
            let (allowed, d) = self.ask(ctx, ResourceType::Node, &node.id, "execute");
            if !allowed {
                if node.optional {
                    skip[i] = Some("execute denied (optional node)".to_owned());
                    continue;
                } else {
                    return Err(deny("node", &node.id, "execute", d));
                }
            }
            // A value the caller supplies reaches a node only with `write_input` on it
            // (defaults are the workflow's own, not the caller's).
            if !given.is_empty() {
                let mut reads = Vec::new();
                super::spec::input_refs(&node.config, &mut reads);
                if reads.iter().any(|name| given.contains_key(name)) {
                    let (allowed, d) = self.ask(ctx, ResourceType::Node, &node.id, "write_input");
                    if !allowed {
                        return Err(deny("node", &node.id, "write_input", d));
                    }
                }
            }
        }
        Ok(skip)
    }

    /// How plugin nodes' statements are decided in this run: `database:read`/`database:write` on
    /// `Trellis::Database::"NAME"` for this user, on this generation, at the run's instant, with
    /// the run's context plus who asks (`plugin`, `plugin_version`, `node`; `workflow` is the
    /// run's). Each decision is audited.
    fn database_policy(&self, ctx: &Arc<Value>) -> super::DatabasePolicy {
        super::plugin_database::decided_by(
            self.policy.clone(),
            self.generation.clone(),
            self.user.clone(),
            Arc::clone(ctx),
            self.now,
        )
    }

    /// The filter showing downstream nodes what this user would see of `mask_downstream` nodes.
    fn downstream_filter(
        &self,
        workflow: &Workflow,
        ctx: &Arc<Value>,
    ) -> Option<(Vec<bool>, OutputFilter)> {
        let masked_downstream: Vec<bool> =
            workflow.nodes.iter().map(|n| n.mask_downstream).collect();
        masked_downstream.iter().any(|&m| m).then(|| {
            let policy = self.policy.clone();
            let generation = self.generation.clone();
            let masker = self.masker.clone();
            let user = self.user.clone();
            // The run's context, shared with the filter (not copied).
            let ctx = Arc::clone(ctx);
            let now = self.now;
            let filter: OutputFilter = Arc::new(move |node: &NodeSpec, output: Value| {
                let pinned = (&*policy, &generation, &masker);
                mask_output(pinned, &user, node, output, now, &ctx, None).0
            });
            (masked_downstream, filter)
        })
    }
}

/// The refusal of `permission` on `id` (a `resource_type`), as decided by `d`.
fn deny(
    resource_type: &'static str,
    id: &str,
    permission: &'static str,
    d: Decision,
) -> AccessError {
    AccessError::Denied(Denial {
        resource_type,
        resource_id: id.to_owned(),
        permission,
        reason: d.reason,
        policies: d.policies,
        generation: d.generation,
    })
}

/// What is left of a run once its nodes have run: per node `read_output`, then its masks.
struct Finish {
    policy: Arc<PolicyEngine>,
    generation: Arc<PolicyGeneration>,
    masker: Masker,
    user: PreparedUser,
    workflow: Arc<Workflow>,
    ctx: Arc<Value>,
    now: Timestamp,
    deadline: Option<std::time::Instant>,
}

impl Finish {
    /// [`Finish::apply`], on the blocking pool when a node has masking plugins.
    async fn run(
        self,
        report: RunReport,
        outputs: Vec<Option<Value>>,
    ) -> Result<RunReport, AccessError> {
        // Masking plugins are calls into WebAssembly: they run on the blocking pool, never on an
        // async worker. Built-in masks are cheap and run here.
        if self
            .workflow
            .nodes
            .iter()
            .any(|n| self.generation.has_plugin_masks(&n.id))
        {
            let workflow = self.workflow.clone();
            tokio::task::spawn_blocking(move || self.apply(report, outputs))
                .await
                .map_err(|e| {
                    AccessError::Run(RunError::Node {
                        node: "(masking)".into(),
                        location: format!("workflow `{}`", workflow.name),
                        source: super::NodeError::Config(format!("masking failed: {e}")),
                    })
                })
        } else {
            Ok(self.apply(report, outputs))
        }
    }

    fn apply(self, mut report: RunReport, outputs: Vec<Option<Value>>) -> RunReport {
        for (node, output) in self.workflow.nodes.iter().zip(outputs) {
            let Some(output) = output else { continue };
            let readable = self
                .policy
                .decide_in(
                    &self.generation,
                    &AccessRequest {
                        user: &self.user,
                        resource_type: ResourceType::Node,
                        resource_id: &node.id,
                        permission: "read_output",
                        now: self.now,
                        runtime: &self.ctx,
                    },
                )
                .allowed;
            if !readable {
                report.withheld.push(node.id.clone());
                continue;
            }
            let (output, applied, errors) = mask_output(
                (&self.policy, &self.generation, &self.masker),
                &self.user,
                node,
                output,
                self.now,
                &self.ctx,
                self.deadline,
            );
            if !applied.is_empty() {
                report
                    .masked
                    .push(json!({"node": node.id, "fields": applied}));
            }
            report.mask_errors.extend(
                errors
                    .into_iter()
                    .map(|e| format!("node `{}`: {e}", node.id)),
            );
            report.results.insert(node.id.clone(), output);
        }
        report
    }
}

/// Applies `node`'s masking rules to the rows of `output` (see
/// [`super::NodeKind::records_pointer`]; the whole output when it has no rows there).
fn mask_output(
    (policy, generation, masker): (&PolicyEngine, &Arc<PolicyGeneration>, &Masker),
    user: &PreparedUser,
    node: &NodeSpec,
    mut output: Value,
    now: Timestamp,
    ctx: &Value,
    deadline: Option<std::time::Instant>,
) -> (Value, Vec<String>, Vec<String>) {
    if !generation.masks.contains_key(&node.id) {
        return (output, Vec::new(), Vec::new());
    }
    let pointer = node.kind.records_pointer();
    let target = if output.pointer(pointer).is_some() {
        output.pointer_mut(pointer).expect("checked")
    } else {
        &mut output
    };
    let (applied, errors) = policy.mask_in(
        generation, masker, user, &node.id, target, now, ctx, deadline,
    );
    (output, applied, errors)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::RunReport;

    /// The run's answer, written by hand for speed, is serde_json's text of the report, with
    /// and without mask errors, strings that need escapes included.
    #[test]
    fn a_report_is_written_as_serde_json_writes_it() {
        let mut report = RunReport {
            run_id: "0f0e-\"quoted\"".into(),
            workflow: "finance_report".into(),
            generation: 7,
            policy_generation: u64::MAX,
            results: json!({
                "q": {"result": {"data": [{"name": "Ann\nLee", "salary": 1.5e3, "n": -3}]}},
                "empty": {}
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            masked: vec![json!({"node": "q", "fields": ["ssn:redact"]})],
            skipped: vec![json!({"node": "x", "reason": "denied \\ by policy"})],
            withheld: vec!["employee_expenses".into(), "é\u{1}".into()],
            mask_errors: Vec::new(),
        };
        assert_eq!(report.to_json(), serde_json::to_vec(&report).unwrap());
        report.mask_errors = vec!["q.email: plugin failed".into()];
        report.results.clear();
        report.masked.clear();
        assert_eq!(report.to_json(), serde_json::to_vec(&report).unwrap());
    }
}
