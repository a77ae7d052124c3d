//! One generation of what a host serves: its policies, plugins and workflows, swapped as one.
//!
//! Each of the three is loaded and swapped on its own (from a watched directory, or at start).
//! [`Generations`] takes what is in service in all three at once and numbers it: a run pins the
//! generation in force when it starts, decides, runs its plugin nodes and masks with that
//! generation's parts only, and reports its number (`generation`). A plugin or policy swapped
//! during the run serves the next run, never the rest of this one. A watching host makes a new
//! generation from each change; a host following a control plane ([`crate::fleet::follow`])
//! prepares a whole bundle as a generation off to the side ([`Generations::prepare`]) and swaps
//! it in as one ([`Generations::install`]), numbered as the control plane numbers it.

use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use std::path::Path;

use crate::plugins::{PluginRegistry, PluginSet, PluginSource, RegistryMasker};
use crate::policy::{PolicyEngine, PolicyGeneration};
use crate::workflow::{HostNames, Pinned, WorkflowSet, set::Loaded};

/// What one generation serves.
#[derive(Debug)]
pub struct Generation {
    /// Its number: 1 at start, one more for every change of any part.
    pub id: u64,
    /// The policies.
    pub policy: Arc<PolicyGeneration>,
    /// The plugins.
    pub plugins: Arc<PluginSet>,
    /// The workflows.
    pub workflows: Arc<Loaded>,
}

impl Generation {
    /// What a run of this generation pins.
    pub fn pinned(&self) -> Pinned {
        Pinned {
            generation: self.id,
            policy: self.policy.clone(),
            plugins: self.plugins.clone(),
        }
    }

    /// Whether `self` holds exactly these parts.
    fn holds(
        &self,
        policy: &Arc<PolicyGeneration>,
        plugins: &Arc<PluginSet>,
        workflows: &Arc<Loaded>,
    ) -> bool {
        Arc::ptr_eq(&self.policy, policy)
            && Arc::ptr_eq(&self.plugins, plugins)
            && Arc::ptr_eq(&self.workflows, workflows)
    }
}

/// The generation in force on a host, made anew whenever a part changes.
pub struct Generations {
    policy: Arc<PolicyEngine>,
    plugins: Arc<PluginRegistry>,
    workflows: Arc<WorkflowSet>,
    current: ArcSwap<Generation>,
    /// One refresh at a time: numbers never go backwards.
    refreshing: Mutex<()>,
}

impl std::fmt::Debug for Generations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Generations({})", self.current.load().id)
    }
}

impl Generations {
    /// Generation 1: what the three serve now.
    pub fn new(
        policy: Arc<PolicyEngine>,
        plugins: Arc<PluginRegistry>,
        workflows: Arc<WorkflowSet>,
    ) -> Generations {
        Generations::numbered(policy, plugins, workflows, 1)
    }

    /// Generation `id`: what the three serve now (0 on a host that has nothing from its control
    /// plane yet).
    pub fn numbered(
        policy: Arc<PolicyEngine>,
        plugins: Arc<PluginRegistry>,
        workflows: Arc<WorkflowSet>,
        id: u64,
    ) -> Generations {
        let first = Generation {
            id,
            policy: policy.generation(),
            plugins: plugins.snapshot(),
            workflows: workflows.current(),
        };
        Generations {
            policy,
            plugins,
            workflows,
            current: ArcSwap::from_pointee(first),
            refreshing: Mutex::new(()),
        }
    }

    /// The generation in force: pin it for a whole run.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Takes in what the three serve now: a new generation when any part changed. Returns the
    /// generation in force afterwards.
    pub fn refresh(&self) -> u64 {
        let _one = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.current.load_full();
        let (policy, plugins, workflows) = (
            self.policy.generation(),
            self.plugins.snapshot(),
            self.workflows.current(),
        );
        if now.holds(&policy, &plugins, &workflows) {
            return now.id;
        }
        let next = Generation {
            id: now.id + 1,
            policy,
            plugins,
            workflows,
        };
        tracing::info!(
            generation = next.id,
            policy_generation = next.policy.id(),
            workflows_generation = next.workflows.generation,
            "new generation in service"
        );
        let id = next.id;
        self.current.store(Arc::new(next));
        id
    }

    /// Loads the bundle in `dir` (`policies/`, `plugins/`, `workflows/`) as generation `id`,
    /// off to the side: nothing serves it until [`Generations::install`]. Every part is checked
    /// against the others (workflows against the staged plugins and `databases`, `plugin:` masks
    /// against the staged plugins); any problem refuses the whole bundle, each problem naming
    /// its file.
    pub fn prepare(
        &self,
        dir: &Path,
        id: u64,
        databases: Vec<String>,
    ) -> Result<Generation, Vec<String>> {
        let (plugins, mut problems) = self.plugins.prepare(&dir.join("plugins"));
        let plugins = Arc::new(plugins);
        let policy = match self.policy.prepare(
            &dir.join("policies"),
            Arc::new(RegistryMasker::pinned(plugins.clone())),
        ) {
            Ok(policy) => Some(Arc::new(policy)),
            Err(e) => {
                problems.extend(crate::diagnostic::problems(&e));
                None
            }
        };
        let known = Arc::new(HostNames {
            plugins: PluginSource::Pinned(plugins.clone()),
            databases,
        });
        let workflows = WorkflowSet::prepare(&dir.join("workflows"), known);
        problems.extend(
            workflows
                .errors
                .values()
                .map(|e| crate::diagnostic::plain(e)),
        );
        match policy {
            Some(policy) if problems.is_empty() => Ok(Generation {
                id,
                policy,
                plugins,
                workflows,
            }),
            _ => Err(problems),
        }
    }

    /// Puts `next` in service at once: runs that start from now on pin it, runs under way
    /// finish on theirs. The registry, the policy engine and the workflow set then show it too
    /// (listings, metrics, `/ready`).
    pub fn install(&self, next: Generation) {
        let _one = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let next = Arc::new(next);
        self.current.store(next.clone());
        self.plugins.install(next.plugins.clone());
        self.policy.install(next.policy.clone());
        self.workflows.install(next.workflows.clone());
        tracing::info!(
            generation = next.id,
            policy_generation = next.policy.id(),
            "control-plane generation in service"
        );
    }

    /// Refreshes on every change of a part, until the host stops (the task ends when the three
    /// are dropped).
    pub fn follow(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        let (mut policy, mut plugins, mut workflows) = (
            self.policy.changes(),
            self.plugins.changes(),
            self.workflows.changes(),
        );
        tokio::spawn(async move {
            loop {
                let changed = tokio::select! {
                    r = policy.changed() => r,
                    r = plugins.changed() => r,
                    r = workflows.changed() => r,
                };
                let Some(this) = this.upgrade() else { return };
                if changed.is_err() {
                    return;
                }
                this.refresh();
            }
        })
    }
}
