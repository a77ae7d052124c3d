//! The policy engine: the current [`PolicyGeneration`] behind an atomic pointer, the caches, and
//! the calls the rest of the host makes: [`PolicyEngine::decide`], [`PolicyEngine::explain`],
//! [`PolicyEngine::mask`], [`PolicyEngine::reload`] and [`PolicyEngine::watch`].
//!
//! A decision loads the current generation once and uses it throughout, so a reload can never
//! mix two generations in one decision. Every decision is made by Cedar; any evaluation error
//! makes it a deny and is recorded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cedar_policy::{Authorizer, Context, PolicyId, PolicySet, RestrictedExpression};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::Value;

use super::audit::{AuditLog, AuditRecord};
use super::cache::{BoundedCache, DecisionKey, EntityCache};
use super::compile::MASK_ACTION;
use super::derive::lookup;
use super::generation::{LoadError, PolicyGeneration, PolicyKind, Slice, SliceEntry};
use super::mask::Masker;
use super::rules::{AttrPath, Effect, ResourceType};
use super::user::{PreparedUser, uid};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The zone `time_of_day` and `day_of_week` are read in (default UTC).
    pub timezone: TimeZone,
    /// How many decisions (and user entity sets) to keep.
    pub cache_capacity: usize,
    /// Applies mask types (holds the `hmac` key and any masking plugins).
    pub masker: Masker,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            timezone: TimeZone::UTC,
            cache_capacity: 100_000,
            masker: Masker::from_env(),
        }
    }
}

/// One access question.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// Who asks.
    pub user: &'a PreparedUser,
    /// Node or workflow.
    pub resource_type: ResourceType,
    /// Its id.
    pub resource_id: &'a str,
    /// The permission asked for (`execute`, `read_output`, …).
    pub permission: &'a str,
    /// The time the decision is made for (time conditions and expiry read it).
    pub now: Timestamp,
    /// Request data `runtime.…` paths read.
    pub runtime: &'a Value,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Whether access is granted.
    pub allowed: bool,
    /// Why, in one line.
    pub reason: String,
    /// The deciding policy ids (empty when nothing decided and the default deny applies).
    pub policies: Vec<String>,
    /// The generation that decided.
    #[serde(skip)]
    pub generation: u64,
    /// Evaluation errors; any makes the decision a deny.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Whether it came from the cache.
    #[serde(skip)]
    pub cached: bool,
}

/// A decision with what led to it.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The decision.
    pub decision: Decision,
    /// The deciding policies, with where they were written.
    pub deciding: Vec<ExplainedPolicy>,
    /// Every policy considered, in decision order, and whether its condition held.
    pub considered: Vec<ExplainedPolicy>,
    /// Values the host computed for Cedar (`d:N`), with the condition each stands for.
    pub derived: Vec<DerivedValue>,
}

/// One policy in an [`Explanation`].
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedPolicy {
    /// Its id.
    pub id: String,
    /// `allow`/`deny` rule, `permit`/`forbid` native policy, or `mask`.
    pub kind: String,
    /// `file:line`.
    pub source: String,
    /// Whether its condition held (`None`: it could not be evaluated).
    pub held: Option<bool>,
}

/// A value computed by the host for a policy.
#[derive(Debug, Clone, Serialize)]
pub struct DerivedValue {
    /// `d:N`.
    pub name: String,
    /// The condition it stands for.
    pub condition: String,
    /// Its value for this request.
    pub value: bool,
}

/// A masked output.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskOutcome {
    /// The masked copy.
    pub value: Value,
    /// `field_path:mask_type` of each mask applied.
    pub applied: Vec<String>,
    /// Masks that failed (their fields were redacted) and evaluation errors.
    pub errors: Vec<String>,
}

/// Cedar's verdict on one slice.
#[derive(Debug, Clone)]
struct Verdict {
    allowed: bool,
    /// Satisfied policies that determined it, in decision order.
    reasons: Vec<String>,
    errors: Vec<String>,
}

/// The fewest user entity sets kept, however small the decision cache: building one costs more
/// than a decision, and a few thousand take a few megabytes.
const ENTITY_CACHE_MIN: usize = 4096;

/// The policy engine. Cheap to share behind an `Arc`.
pub struct PolicyEngine {
    current: ArcSwap<PolicyGeneration>,
    entities: EntityCache,
    decisions: BoundedCache<DecisionKey, Arc<Verdict>>,
    settings: EngineSettings,
    authorizer: Authorizer,
    audit: Option<AuditLog>,
    last_error: Mutex<Option<String>>,
    /// The id of the generation in force, sent on every successful reload.
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("generation", &self.current.load().id())
            .finish()
    }
}

impl PolicyEngine {
    /// Loads `dir` and starts an engine on it.
    pub fn load(dir: &Path, settings: EngineSettings) -> Result<PolicyEngine, LoadError> {
        let generation = PolicyGeneration::load(dir)?;
        check_masks(&generation, &settings.masker)?;
        Ok(PolicyEngine::new(generation, settings))
    }

    /// An engine on `generation`.
    pub fn new(generation: PolicyGeneration, settings: EngineSettings) -> PolicyEngine {
        PolicyEngine {
            changes: tokio::sync::watch::channel(generation.id()).0,
            current: ArcSwap::from_pointee(generation),
            entities: BoundedCache::new((settings.cache_capacity / 4).max(ENTITY_CACHE_MIN)),
            decisions: BoundedCache::new(settings.cache_capacity + 16),
            settings,
            authorizer: Authorizer::new(),
            audit: None,
            last_error: Mutex::new(None),
        }
    }

    /// Records every decision in `audit`.
    pub fn with_audit(mut self, audit: AuditLog) -> PolicyEngine {
        self.audit = Some(audit);
        self
    }

    /// The audit log, if any.
    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// The generation in force.
    pub fn generation(&self) -> Arc<PolicyGeneration> {
        self.current.load_full()
    }

    /// Sees the id of each generation swapped in by a reload.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The problems of the last failed reload, if the last reload failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the directory: everything is loaded and validated first, then swapped in at once.
    /// On any problem the current generation stays in force and the problems are returned.
    pub fn reload(&self) -> Result<u64, LoadError> {
        let dir = self.current.load().dir().to_owned();
        let loaded = PolicyGeneration::load(&dir)
            .and_then(|g| check_masks(&g, &self.settings.masker).map(|()| g));
        match loaded {
            Ok(generation) => {
                let id = generation.id();
                self.current.store(Arc::new(generation));
                self.entities.clear();
                self.decisions.clear();
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(generation = id, dir = %dir.display(), "policies reloaded");
                self.changes.send_replace(id);
                Ok(id)
            }
            Err(e) => {
                let detail = e.detail();
                tracing::error!(dir = %dir.display(), "policy reload failed, keeping the last good policies: {detail}");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(detail);
                Err(e)
            }
        }
    }

    /// Loads and checks `dir` as a generation without putting it in service (a control-plane
    /// generation being staged): its `plugin:` masks are checked against `plugins`, the staged
    /// plugins, not the ones serving now.
    pub fn prepare(
        &self,
        dir: &Path,
        plugins: Arc<dyn super::ExternalMasker>,
    ) -> Result<PolicyGeneration, LoadError> {
        let generation = PolicyGeneration::load(dir)?;
        check_masks(
            &generation,
            &self.settings.masker.clone().with_external(plugins),
        )?;
        Ok(generation)
    }

    /// Puts `generation` (from [`PolicyEngine::prepare`]) in service.
    pub fn install(&self, generation: Arc<PolicyGeneration>) {
        let id = generation.id();
        self.current.store(generation);
        self.entities.clear();
        self.decisions.clear();
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.changes.send_replace(id);
    }

    /// Decides `req` with the generation in force.
    pub fn decide(&self, req: &AccessRequest<'_>) -> Decision {
        self.decide_in(&self.current.load_full(), req)
    }

    /// Audits `decision` again for `req`: the same request, decided earlier on the same pinned
    /// generation, at the same instant and in the same context (a plugin call's repeated
    /// statements), so the same answer. Recorded as a cached decision.
    pub fn decided_again(&self, req: &AccessRequest<'_>, decision: &Decision) {
        if self.audit.is_none() {
            return;
        }
        let action = super::compile::action_id(req.resource_type, req.permission);
        let resource = super::compile::qualified(req.resource_type.as_str(), req.resource_id);
        let again = Decision {
            cached: true,
            ..decision.clone()
        };
        self.audit_decision(
            req.user,
            req.runtime,
            &action,
            &resource,
            &again,
            Instant::now(),
            Vec::new(),
        );
    }

    /// Decides `req` with `generation` (from [`PolicyEngine::generation`]): a workflow run pins
    /// one generation for all its decisions, so a reload never splits a run across two.
    pub fn decide_in(
        &self,
        generation: &Arc<PolicyGeneration>,
        req: &AccessRequest<'_>,
    ) -> Decision {
        let started = Instant::now();
        let action = super::compile::action_id(req.resource_type, req.permission);
        let resource = super::compile::qualified(req.resource_type.as_str(), req.resource_id);
        let slice = generation.slice(&action, &resource);
        let (verdict, cached) = self.verdict_in(
            generation,
            slice,
            req.user,
            (&action, &resource),
            req.resource_type,
            req.resource_id,
            req.now,
            req.runtime,
        );
        let decision = describe(&verdict, slice, generation.id(), cached);
        self.audit_decision(
            req.user,
            req.runtime,
            &action,
            &resource,
            &decision,
            started,
            Vec::new(),
        );
        decision
    }

    /// Decides `req` and says why: the deciding policies, and for every policy considered
    /// whether its condition held.
    pub fn explain(&self, req: &AccessRequest<'_>) -> Explanation {
        let generation = self.current.load_full();
        let decision = {
            let action = super::compile::action_id(req.resource_type, req.permission);
            let resource = super::compile::qualified(req.resource_type.as_str(), req.resource_id);
            let (verdict, _) = self.verdict(
                &generation,
                req.user,
                &action,
                req.resource_type,
                req.resource_id,
                req.now,
                req.runtime,
            );
            describe(
                &verdict,
                generation.slice(&action, &resource),
                generation.id(),
                false,
            )
        };
        let action = super::compile::action_id(req.resource_type, req.permission);
        let resource = super::compile::qualified(req.resource_type.as_str(), req.resource_id);
        let slice = generation.slice(&action, &resource);
        let held = self.probe(
            &generation,
            slice,
            req.user,
            &action,
            req.resource_type,
            req.resource_id,
            req.now,
            req.runtime,
        );
        let by_id: HashMap<&str, &SliceEntry> =
            slice.entries.iter().map(|e| (e.id.as_str(), e)).collect();
        let explained = |e: &SliceEntry| ExplainedPolicy {
            id: e.id.clone(),
            kind: kind_name(&e.kind).to_owned(),
            source: e.loc.to_string(),
            held: held.get(&e.id).copied().flatten(),
        };
        let deciding = decision
            .policies
            .iter()
            .filter_map(|id| by_id.get(id.as_str()))
            .map(|e| explained(e))
            .collect();
        let considered = slice.entries.iter().map(explained).collect();
        let derived = slice
            .needs
            .derived
            .iter()
            .map(|&i| {
                let d = &generation.derived[i];
                DerivedValue {
                    name: d.name.clone(),
                    condition: format!(
                        "{} {} {}{}",
                        d.condition.path,
                        d.condition.operator,
                        d.condition.value,
                        if d.condition.case_sensitive {
                            ""
                        } else {
                            " (case-insensitive)"
                        }
                    ),
                    value: d.eval(lookup(&d.condition.path, req.user.view(), req.runtime)),
                }
            })
            .collect();
        Explanation {
            decision,
            deciding,
            considered,
            derived,
        }
    }

    /// Masks `data` (an object, or an array of rows) from node `resource_id` for `user`.
    pub fn mask(
        &self,
        user: &PreparedUser,
        resource_id: &str,
        data: &Value,
        now: Timestamp,
        runtime: &Value,
    ) -> MaskOutcome {
        let mut value = data.clone();
        let (applied, errors) = self.mask_in(
            &self.current.load_full(),
            &self.settings.masker,
            user,
            resource_id,
            &mut value,
            now,
            runtime,
            None,
        );
        MaskOutcome {
            value,
            applied,
            errors,
        }
    }

    /// The masker the engine was configured with (`hmac` key, `plugin:` masks).
    pub fn masker(&self) -> &super::Masker {
        &self.settings.masker
    }

    /// [`PolicyEngine::mask`] with a pinned `generation` (see [`PolicyEngine::decide_in`]),
    /// masking `data` in place with `masker` (the run's: its `plugin:` masks use the run's
    /// plugins): the masks applied and the errors, as in [`MaskOutcome`]. A `plugin:` mask's
    /// call ends by `deadline` (the request's budget); past it, its values are redacted.
    #[allow(clippy::too_many_arguments)]
    pub fn mask_in(
        &self,
        generation: &Arc<PolicyGeneration>,
        masker: &super::Masker,
        user: &PreparedUser,
        resource_id: &str,
        data: &mut Value,
        now: Timestamp,
        runtime: &Value,
        deadline: Option<Instant>,
    ) -> (Vec<String>, Vec<String>) {
        let started = Instant::now();
        let Some(masks) = generation.masks.get(resource_id) else {
            return (Vec::new(), Vec::new());
        };
        let (verdict, cached) = self.verdict(
            generation,
            user,
            MASK_ACTION,
            ResourceType::Node,
            resource_id,
            now,
            runtime,
        );
        let mut errors = verdict.errors.clone();
        let mut applied = Vec::new();
        for (id, rule) in masks {
            // On an evaluation error every mask applies: masking fails closed.
            let applies =
                !verdict.errors.is_empty() || (verdict.allowed && verdict.reasons.contains(id));
            if !applies {
                continue;
            }
            let (count, mut failed) =
                masker.mask_field_until(data, &rule.field_path, &rule.mask, deadline);
            errors.append(&mut failed);
            if count > 0 {
                applied.push(format!("{}:{}", rule.field_path.text, rule.mask));
            }
        }
        let decision = Decision {
            allowed: true,
            reason: format!("{} mask(s) applied", applied.len()),
            policies: verdict.reasons.clone(),
            generation: generation.id(),
            errors: errors.clone(),
            cached,
        };
        self.audit_decision(
            user,
            runtime,
            MASK_ACTION,
            &super::compile::qualified("node", resource_id),
            &decision,
            started,
            applied.clone(),
        );
        (applied, errors)
    }

    /// Watches the policy directory and reloads once changed files are stable for
    /// `POLICY_SETTLE` (see the `watch` module). Must be called inside a tokio runtime. Dropping
    /// the returned watcher stops it.
    pub fn watch(self: &Arc<Self>) -> Result<PolicyWatcher, notify::Error> {
        PolicyWatcher::start(self.clone())
    }

    #[allow(clippy::too_many_arguments)]
    fn verdict(
        &self,
        generation: &PolicyGeneration,
        user: &PreparedUser,
        action: &str,
        rt: ResourceType,
        resource_id: &str,
        now: Timestamp,
        runtime: &Value,
    ) -> (Arc<Verdict>, bool) {
        let resource = super::compile::qualified(rt.as_str(), resource_id);
        let slice = generation.slice(action, &resource);
        self.verdict_in(
            generation,
            slice,
            user,
            (action, &resource),
            rt,
            resource_id,
            now,
            runtime,
        )
    }

    /// [`PolicyEngine::verdict`] once the caller has looked up `slice` for `(action,
    /// resource)` (`resource` is `"{rt}:{resource_id}"`).
    #[allow(clippy::too_many_arguments)]
    fn verdict_in(
        &self,
        generation: &PolicyGeneration,
        slice: &Slice,
        user: &PreparedUser,
        (action, resource): (&str, &str),
        rt: ResourceType,
        resource_id: &str,
        now: Timestamp,
        runtime: &Value,
    ) -> (Arc<Verdict>, bool) {
        let key = DecisionKey {
            generation: generation.id(),
            user: user.fingerprint(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            runtime: if slice.uses_runtime {
                runtime_fingerprint(&slice.runtime_paths, runtime)
            } else {
                0
            } ^ if rt == ResourceType::Database {
                // The fixed database context is always in the request (native policies read it
                // without the compiler seeing it), so it is always in the key.
                database_fingerprint(runtime)
            } else {
                0
            },
            time: time_signature(slice, now, &self.settings.timezone),
        };
        if let Some(v) = self.decisions.get(&key) {
            return (v, true);
        }
        let verdict = Arc::new(self.evaluate(
            generation,
            slice,
            &slice.pset,
            user,
            action,
            rt,
            resource_id,
            now,
            runtime,
        ));
        self.decisions.insert(key, verdict.clone());
        (verdict, false)
    }

    /// Evaluates with Cedar on a stack it can measure. Cedar refuses to evaluate ("recursion
    /// limit reached") when `stacker` says less than 100 KiB is left, and `stacker` measures
    /// against the thread's stack: on a plugin's fiber (a 0.2.0 plugin's statement is decided
    /// there) that reading is meaningless. `maybe_grow` moves the evaluation to a stack of its
    /// own when the reading is short; on a thread with room it costs one comparison.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        generation: &PolicyGeneration,
        slice: &Slice,
        pset: &PolicySet,
        user: &PreparedUser,
        action: &str,
        rt: ResourceType,
        resource_id: &str,
        now: Timestamp,
        runtime: &Value,
    ) -> Verdict {
        stacker::maybe_grow(CEDAR_RED_ZONE, CEDAR_STACK, || {
            self.evaluate_here(
                generation,
                slice,
                pset,
                user,
                action,
                rt,
                resource_id,
                now,
                runtime,
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate_here(
        &self,
        generation: &PolicyGeneration,
        slice: &Slice,
        pset: &PolicySet,
        user: &PreparedUser,
        action: &str,
        rt: ResourceType,
        resource_id: &str,
        now: Timestamp,
        runtime: &Value,
    ) -> Verdict {
        let deny = |error: String| Verdict {
            allowed: false,
            reasons: Vec::new(),
            errors: vec![error],
        };
        let entities = match self.user_entities(generation, user) {
            Ok(e) => e,
            Err(e) => return deny(format!("cannot build the user entity: {e}")),
        };
        let context = match self.context(generation, slice, rt, user, now, runtime) {
            Ok(c) => c,
            Err(e) => return deny(format!("cannot build the request context: {e}")),
        };
        // A slice's action and resource are built once, with the generation.
        let resource = slice
            .resource_uid
            .clone()
            .unwrap_or_else(|| uid(rt.entity_name(), resource_id));
        let action = slice
            .action_uid
            .clone()
            .unwrap_or_else(|| action_uid(action));
        let request = match cedar_policy::Request::new(user.uid(), action, resource, context, None)
        {
            Ok(r) => r,
            Err(e) => return deny(format!("invalid request: {e}")),
        };
        let response = self.authorizer.is_authorized(&request, pset, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let satisfied: Vec<&PolicyId> = response.diagnostics().reason().collect();
        let reasons = slice
            .entries
            .iter()
            .filter(|e| satisfied.iter().any(|s| s.as_ref() == e.id))
            .map(|e| e.id.clone())
            .collect();
        Verdict {
            // A forbid that errors is skipped by Cedar: never let that grant access.
            allowed: response.decision() == cedar_policy::Decision::Allow && errors.is_empty(),
            reasons,
            errors,
        }
    }

    /// For `explain`: whether each policy's own condition held, evaluated by Cedar.
    #[allow(clippy::too_many_arguments)]
    fn probe(
        &self,
        generation: &PolicyGeneration,
        slice: &Slice,
        user: &PreparedUser,
        action: &str,
        rt: ResourceType,
        resource_id: &str,
        now: Timestamp,
        runtime: &Value,
    ) -> HashMap<String, Option<bool>> {
        let mut out = HashMap::new();
        let mut rules = PolicySet::new();
        for e in &slice.entries {
            if let Some(holds) = &e.holds {
                let text = format!("permit (principal, action, resource) when {{ {holds} }};");
                if let Ok(p) = cedar_policy::Policy::parse(Some(PolicyId::new(&e.id)), text) {
                    let _ = rules.add(p);
                }
            }
        }
        let v = self.evaluate(
            generation,
            slice,
            &rules,
            user,
            action,
            rt,
            resource_id,
            now,
            runtime,
        );
        for e in slice.entries.iter().filter(|e| e.holds.is_some()) {
            let held = v.reasons.contains(&e.id);
            let failed = v
                .errors
                .iter()
                .any(|err| err.contains(&format!("`{}`", e.id)));
            out.insert(e.id.clone(), if failed { None } else { Some(held) });
        }
        for e in slice.entries.iter().filter(|e| e.holds.is_none()) {
            let Some(policy) = slice.pset.policy(&PolicyId::new(&e.id)) else {
                continue;
            };
            let mut one = PolicySet::new();
            let _ = one.add(policy.clone());
            let v = self.evaluate(
                generation,
                slice,
                &one,
                user,
                action,
                rt,
                resource_id,
                now,
                runtime,
            );
            out.insert(
                e.id.clone(),
                if v.errors.is_empty() {
                    Some(v.reasons.contains(&e.id))
                } else {
                    None
                },
            );
        }
        out
    }

    fn user_entities(
        &self,
        generation: &PolicyGeneration,
        user: &PreparedUser,
    ) -> Result<Arc<cedar_policy::Entities>, String> {
        let key = (generation.id(), user.fingerprint());
        if let Some(e) = self.entities.get(&key) {
            return Ok(e);
        }
        let e = Arc::new(user.entities(&generation.user_slots)?);
        self.entities.insert(key, e.clone());
        Ok(e)
    }

    fn context(
        &self,
        generation: &PolicyGeneration,
        slice: &Slice,
        rt: ResourceType,
        user: &PreparedUser,
        now: Timestamp,
        runtime: &Value,
    ) -> Result<Context, String> {
        let zoned = now.to_zoned(self.settings.timezone.clone());
        let time = zoned.time();
        let seconds = i64::from(time.hour()) * 3600
            + i64::from(time.minute()) * 60
            + i64::from(time.second());
        let mut pairs: Vec<(String, RestrictedExpression)> = vec![
            (
                "now".into(),
                RestrictedExpression::new_long(now.as_second()),
            ),
            (
                "time_of_day".into(),
                RestrictedExpression::new_long(seconds),
            ),
            (
                "day_of_week".into(),
                RestrictedExpression::new_string(day_name(zoned.weekday()).into()),
            ),
        ];
        if rt == ResourceType::Database {
            // Who asks for the database, from where: always set (empty when unknown).
            for key in super::compile::DATABASE_CONTEXT_KEYS {
                let value = runtime.get(key).and_then(Value::as_str).unwrap_or("");
                pairs.push((key.into(), RestrictedExpression::new_string(value.into())));
            }
        }
        let null = Value::Null;
        for s in &slice.runtime_slots {
            if let Some(v) = s.project(lookup(&s.path, &null, runtime)) {
                pairs.push((s.name(), v));
            }
        }
        for &i in &slice.needs.derived {
            let d = &generation.derived[i];
            let value = d.eval(lookup(&d.condition.path, user.view(), runtime));
            pairs.push((d.name.clone(), RestrictedExpression::new_bool(value)));
        }
        Context::from_pairs(pairs).map_err(|e| e.to_string())
    }

    #[allow(clippy::too_many_arguments)]
    fn audit_decision(
        &self,
        user: &PreparedUser,
        runtime: &Value,
        action: &str,
        resource: &str,
        d: &Decision,
        started: Instant,
        masks: Vec<String>,
    ) {
        let Some(audit) = &self.audit else { return };
        audit.record(AuditRecord {
            time: Timestamp::now(),
            run_id: runtime
                .get("run_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            user_id: user.context().user_id.clone(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            decision: if d.allowed { "allow" } else { "deny" },
            policies: d.policies.clone(),
            generation: d.generation,
            errors: d.errors.clone(),
            latency_us: started.elapsed().as_micros() as u64,
            cached: d.cached,
            masks,
        });
    }
}

fn action_uid(action: &str) -> cedar_policy::EntityUid {
    uid("Action", action)
}

fn day_name(d: jiff::civil::Weekday) -> &'static str {
    use jiff::civil::Weekday::*;
    match d {
        Monday => "monday",
        Tuesday => "tuesday",
        Wednesday => "wednesday",
        Thursday => "thursday",
        Friday => "friday",
        Saturday => "saturday",
        Sunday => "sunday",
    }
}

fn kind_name(kind: &PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Rule {
            effect: Effect::Allow,
            ..
        } => "allow rule",
        PolicyKind::Rule {
            effect: Effect::Deny,
            ..
        } => "deny rule",
        PolicyKind::Native { forbid: false } => "native permit",
        PolicyKind::Native { forbid: true } => "native forbid",
        PolicyKind::Mask => "mask",
    }
}

/// Refuses a generation whose keyed `hash` masks have no key to use: without one every such
/// value would be redacted at run time, and an unkeyed hash of a short value (an SSN) can be
/// reversed by enumeration, so neither is a silent fallback. `"unkeyed": true` asks for the
/// Python SDK's plain SHA-256 on purpose.
///
/// A `plugin:` mask's `params` are checked against the schema the plugin declares, so a rule the
/// plugin would refuse (or misread) is refused with the policies, not value by value at run time.
fn check_masks(generation: &PolicyGeneration, masker: &super::Masker) -> Result<(), LoadError> {
    let mut problems: Vec<super::rules::Problem> = Vec::new();
    for (_, rule) in generation.masks.values().flatten() {
        if let super::rules::MaskType::Plugin { name, params } = &rule.mask {
            for message in masker.params_problems(name, params) {
                problems.push(
                    super::rules::Problem::new(
                        rule.loc.clone(),
                        Some(&format!("masking[{}]", rule.index)),
                        format!("`params` for `plugin:{name}`: {message}"),
                    )
                    .with_hint(Some("the keys and values the plugin documents".into())),
                );
            }
        }
    }
    let keyless = (!masker.has_key())
        .then(|| generation.masks.values().flatten())
        .into_iter()
        .flatten()
        .filter(|(_, rule)| matches!(rule.mask, super::rules::MaskType::Hash { unkeyed: false }))
        .map(|(_, rule)| {
            super::rules::Problem::new(
                rule.loc.clone(),
                Some(&format!("masking[{}]", rule.index)),
                "a `hash` mask is keyed, and no key is set",
            )
            .with_hint(Some(format!(
                "set `[policy] hmac_key` (or `{}`), or write `\"unkeyed\": true` in the rule for a plain SHA-256",
                super::mask::HMAC_KEY_ENV
            )))
        });
    problems.extend(keyless);
    if problems.is_empty() {
        return Ok(());
    }
    problems
        .sort_by(|a, b| (a.loc.file.as_ref(), a.loc.line).cmp(&(b.loc.file.as_ref(), b.loc.line)));
    Err(LoadError { problems })
}

/// The decision and its one-line reason from Cedar's verdict.
fn describe(v: &Verdict, slice: &Slice, generation: u64, cached: bool) -> Decision {
    let first = v
        .reasons
        .first()
        .and_then(|id| slice.entries.iter().find(|e| &e.id == id));
    let reason = if !v.errors.is_empty() {
        format!("denied: policy evaluation failed: {}", v.errors.join("; "))
    } else {
        // Joined, not `format!`ted: one allocation per decision, no `fmt::Formatter`.
        match (v.allowed, first.map(|e| &e.kind)) {
            (true, Some(PolicyKind::Rule { .. })) => {
                ["rule `", &v.reasons[0], "` granted access"].concat()
            }
            (true, _) => [
                "policy `",
                v.reasons.first().map_or("", String::as_str),
                "` permits access",
            ]
            .concat(),
            (false, Some(PolicyKind::Rule { .. })) => {
                ["rule `", &v.reasons[0], "` denied access"].concat()
            }
            (false, Some(_)) => ["policy `", &v.reasons[0], "` forbids access"].concat(),
            (false, None) => "no rule granted access".to_owned(),
        }
    };
    Decision {
        allowed: v.allowed,
        reason,
        policies: v.reasons.clone(),
        generation,
        errors: v.errors.clone(),
        cached,
    }
}

/// `runtime` (an object, or null for none) with `runtime.workflow` set to `workflow`: how a
/// question about one workflow's node is asked outside a run (a run sets it itself). `None`
/// leaves `runtime` as it is. Errs with fixed text when `runtime` is not an object or already
/// names another workflow.
pub fn for_workflow(runtime: Value, workflow: Option<&str>) -> Result<Value, &'static str> {
    let Some(workflow) = workflow else {
        return Ok(runtime);
    };
    let mut map = match runtime {
        Value::Null => serde_json::Map::new(),
        Value::Object(map) => map,
        _ => return Err("`runtime` must be a JSON object"),
    };
    match map.get("workflow") {
        Some(Value::String(w)) if w == workflow => {}
        Some(_) => return Err("`workflow` and `runtime.workflow` differ: give one"),
        None => {
            map.insert("workflow".into(), Value::String(workflow.to_owned()));
        }
    }
    Ok(Value::Object(map))
}

/// The values of the runtime attributes `paths` (what a slice reads) in `runtime`: run ids and
/// inputs no policy reads never split the decision cache.
/// A fingerprint of a database request's fixed context (`plugin`, `plugin_version`, `node`,
/// `workflow`).
fn database_fingerprint(runtime: &Value) -> u128 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"database\x1f");
    for key in super::compile::DATABASE_CONTEXT_KEYS {
        let value = runtime.get(key).and_then(Value::as_str).unwrap_or("");
        h.update(format!("{value:?}\u{1f}").as_bytes());
    }
    let d = h.finalize();
    u128::from_le_bytes(d[..16].try_into().expect("16 bytes"))
}

/// Below this much stack (as `stacker` reads it), Cedar is run on a stack of its own (Cedar
/// itself needs 100 KiB).
const CEDAR_RED_ZONE: usize = 256 * 1024;
/// The size of that stack.
const CEDAR_STACK: usize = 4 * 1024 * 1024;

fn runtime_fingerprint(paths: &[AttrPath], runtime: &Value) -> u128 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut text = Vec::new();
    for path in paths {
        match lookup(path, &Value::Null, runtime) {
            // JSON text never holds a raw 0x1f, so the concatenation is unambiguous.
            Some(v) => {
                text.clear();
                text.push(1);
                crate::json::write_value(&mut text, v);
                text.push(0x1f);
                h.update(&text);
            }
            None => h.update(b"\x00\x1f"),
        }
    }
    let d = h.finalize();
    u128::from_le_bytes(d[..16].try_into().expect("16 bytes"))
}

/// Which side of each time boundary `now` is on, for the slice's time conditions and expiries;
/// 0 when the slice reads no time. Exact, not hashed: two instants with the same signature get
/// the same decision. With more boundaries than fit in 60 bits, or a native policy that may read
/// the time in ways the compiler cannot see, the signature is the second itself (the context
/// holds the time in whole seconds, so that is exact too).
fn time_signature(slice: &Slice, now: Timestamp, tz: &TimeZone) -> u64 {
    let n = &slice.needs;
    if n.windows.is_empty() && !n.day && n.expiries.is_empty() && !slice.reads_clock {
        return 0;
    }
    if slice.reads_clock || n.windows.len() + n.expiries.len() > 56 {
        return (1 << 63) | (now.as_second() as u64 & ((1 << 62) - 1));
    }
    let zoned = now.to_zoned(tz.clone());
    let t = zoned.time();
    let seconds = u32::try_from(t.hour()).unwrap_or(0) * 3600
        + u32::try_from(t.minute()).unwrap_or(0) * 60
        + u32::try_from(t.second()).unwrap_or(0);
    let mut bits: u64 = 1;
    let mut push = |b: bool| bits = (bits << 1) | u64::from(b);
    for &(start, end) in &n.windows {
        push(if start <= end {
            seconds >= start && seconds <= end
        } else {
            seconds >= start || seconds <= end
        });
    }
    for &e in &n.expiries {
        push(now.as_second() < e);
    }
    if n.day {
        bits = (bits << 3) | u64::from(zoned.weekday().to_monday_zero_offset() as u8);
    }
    bits
}

/// Watches a policy directory and reloads the engine after changes settle.
pub struct PolicyWatcher {
    _inner: crate::watch::DirWatcher,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyWatcher")
    }
}

/// How long a changed policy file must stay unchanged before the directory is read again: a
/// file truncated and rewritten in place must never be read empty (its `forbid`s dropped).
/// Deploy with a rename instead (see [`crate::watch`]).
pub const POLICY_SETTLE: Duration = Duration::from_secs(1);

impl PolicyWatcher {
    fn start(engine: Arc<PolicyEngine>) -> Result<PolicyWatcher, notify::Error> {
        let dir: PathBuf = engine.generation().dir().to_owned();
        let inner = crate::watch::DirWatcher::start(
            &dir,
            is_policy_file,
            crate::watch::Reads::WholeDirectory,
            POLICY_SETTLE,
            None,
            move |_| {
                let _ = engine.reload();
            },
        )?;
        Ok(PolicyWatcher { _inner: inner })
    }
}

/// The files a policy directory is made of.
fn is_policy_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    !name.starts_with('.')
        && (name == super::generation::SCHEMA_FILE
            || name.ends_with(".cedar")
            || super::rules::is_rules_file(path))
}
