//! The workflow runtime: runs a validated [`Workflow`] as a DAG. A node starts as soon as every
//! node it reads from has finished, so independent nodes run concurrently; each node has a time
//! limit; the first node that fails (or times out) fails the run, naming the node and the cause,
//! and the nodes still running are cancelled (the pool rolls back whatever they held open).
//!
//! Policy is not checked here: [`super::AccessControlledRuntime`] decides which nodes run and what
//! of their output leaves the host, and calls [`Runtime::run`] with that plan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::task::JoinSet;

use super::node_config::{self, ConfigError, NodeConfig, Part, PluginConfig, Records, Typed};
use super::plugin_database::{DatabaseCaller, PluginDatabase};
use super::spec::{Connection, INPUT_PREFIX, NodeKind, NodeSpec, Workflow};
use crate::database::Databases;
use crate::database::tenants::{Checkout, TenantError};
use crate::json::object;
use crate::plugins::{CallError, PluginRegistry, PluginSet};
use crate::pool::breaker::Outcome;
use crate::pool::ops::{OpError, PoolOperations};
use crate::sql::{ErrorKind, SqlError};
use crate::vector::{VectorError, VectorStore};

/// Rewrites a node's output before downstream nodes read it (masking for nodes marked so).
pub type OutputFilter = Arc<dyn Fn(&NodeSpec, Value) -> Value + Send + Sync>;

/// What the caller decided before the run.
#[derive(Clone, Default)]
pub struct Plan {
    /// Per node (by index): `Some(reason)` to skip it.
    pub skip: Vec<Option<String>>,
    /// Applied to the outputs of the nodes whose index is listed, before downstream nodes see
    /// them.
    pub downstream_filter: Option<(Vec<bool>, OutputFilter)>,
    /// The caller's tenant: a database per tenant is reached through this tenant's pool.
    pub tenant: Arc<str>,
    /// Decides the statements plugin nodes send through the `database` import (`None`: every
    /// one is denied).
    pub database_policy: Option<super::DatabasePolicy>,
    /// The plugins the run pinned (`None`: the registry's at each node).
    pub plugins: Option<Arc<PluginSet>>,
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Per node (by index): its output, if it ran.
    pub outputs: Vec<Option<Value>>,
    /// Nodes skipped, with why, in workflow order.
    pub skipped: Vec<(String, String)>,
    /// Per node (by index): how long it ran.
    pub durations: Vec<Option<Duration>>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A node failed.
    #[error("{location}: {source}")]
    Node {
        /// The node's id.
        node: String,
        /// `file:line: node `id`` (or the workflow name).
        location: String,
        /// Why.
        #[source]
        source: NodeError,
    },
    /// A node ran past its time limit.
    #[error("{location}: did not finish within {limit:?}")]
    Timeout {
        /// The node's id.
        node: String,
        /// Where it is defined.
        location: String,
        /// Its limit.
        limit: Duration,
    },
}

impl RunError {
    /// The failing node's id.
    pub fn node(&self) -> &str {
        match self {
            RunError::Node { node, .. } | RunError::Timeout { node, .. } => node,
        }
    }
}

/// Why one node failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum NodeError {
    /// Its config (after inputs and connections were filled in) is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// A connection into it could not be read.
    #[error("{0}")]
    Connection(String),
    /// The SQL node failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// The pool operation failed.
    #[error(transparent)]
    Pool(#[from] OpError),
    /// The vector operation failed.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// The plugin is not loaded (any more).
    #[error("plugin `{0}` is not loaded")]
    #[diagnostic(help(
        "put its .wasm file in the plugins directory; `GET /v1/plugins` lists what is loaded"
    ))]
    PluginMissing(String),
    /// The plugin call failed.
    #[error(transparent)]
    Plugin(#[from] CallError),
    /// The plugin refused one record.
    #[error("plugin `{plugin}` failed on record {index}: {message}")]
    Record {
        /// `name@version`.
        plugin: String,
        /// The record's position in the batch.
        index: usize,
        /// The plugin's message.
        message: String,
    },
    /// The database is not configured (any more).
    #[error("unknown database `{0}`")]
    Database(String),
    /// The database is per tenant, and this caller's tenant cannot use it now.
    #[error(transparent)]
    Tenant(#[from] TenantError),
}

impl From<ConfigError> for NodeError {
    fn from(error: ConfigError) -> NodeError {
        match error {
            ConfigError::Sql(e) => NodeError::Sql(e),
            ConfigError::Pool(e) => NodeError::Pool(e),
            ConfigError::Vector(e) => NodeError::Vector(e),
            ConfigError::Plugin(m) => NodeError::Config(m),
        }
    }
}

impl NodeError {
    /// What this outcome says of the database's reachability, for a tenant's circuit.
    fn reachability(result: &Result<Value, NodeError>) -> Outcome {
        let kind = match result {
            Ok(_) => return Outcome::Reached,
            Err(NodeError::Sql(e)) => e.kind(),
            Err(NodeError::Pool(e)) if e.pool_error().is_some() => e.kind(),
            Err(NodeError::Vector(VectorError::Database { source, .. })) => source.kind(),
            Err(_) => return Outcome::Inconclusive,
        };
        match kind {
            ErrorKind::Connection => Outcome::Unreachable,
            ErrorKind::Query | ErrorKind::Timeout => Outcome::Reached,
            _ => Outcome::Inconclusive,
        }
    }
}

/// Runs workflows on the host's databases and plugins.
#[derive(Clone)]
pub struct Runtime {
    databases: Databases,
    plugins: Arc<PluginRegistry>,
    vectors: Arc<HashMap<String, VectorStore>>,
}

impl Runtime {
    /// A runtime over `databases` and the plugin registry.
    pub fn new(databases: Databases, plugins: Arc<PluginRegistry>) -> Runtime {
        let vectors = databases
            .names()
            .filter_map(|name| {
                databases
                    .get(name)
                    .map(|pool| (name.to_owned(), VectorStore::new(pool.clone())))
            })
            .collect();
        Runtime {
            databases,
            plugins,
            vectors: Arc::new(vectors),
        }
    }

    /// The databases.
    pub fn databases(&self) -> &Databases {
        &self.databases
    }

    /// The plugin registry.
    pub fn plugins(&self) -> &Arc<PluginRegistry> {
        &self.plugins
    }

    /// Runs `workflow` with `inputs` (already checked by [`Workflow::bind_inputs`]).
    pub async fn run(
        &self,
        workflow: &Arc<Workflow>,
        inputs: &Map<String, Value>,
        plan: &Plan,
    ) -> Result<RunOutput, RunError> {
        let n = workflow.nodes.len();
        let mut state = Schedule::new(workflow, plan);
        // Pool operations of one run share their leases (acquire → execute → release); on a
        // database per tenant, on the caller's tenant's pool, held for the whole run.
        let leases = self.open_operations(workflow, plan)?;
        let mut running = JoinSet::new();
        while state.done < n {
            self.start_ready(
                workflow,
                inputs,
                plan,
                &leases.ops,
                &mut state,
                &mut running,
            )?;
            if state.done == n {
                break;
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            state.finish(workflow, plan, joined)?;
        }
        Ok(state.into_output(workflow))
    }

    /// The run's pool operations per database, with the tenant checkouts they hold open.
    #[allow(clippy::result_large_err)]
    fn open_operations(&self, workflow: &Workflow, plan: &Plan) -> Result<Leases, RunError> {
        let mut ops = HashMap::new();
        let mut held: Vec<Checkout> = Vec::new();
        for (i, node) in workflow.nodes.iter().enumerate() {
            let skipped = plan.skip.get(i).is_some_and(Option::is_some);
            if node.kind != NodeKind::PoolOperation || skipped {
                continue;
            }
            let Some(db) = node.database.clone() else {
                continue;
            };
            if ops.contains_key(&db) {
                continue;
            }
            if let Some(pool) = self.databases.get(&db) {
                ops.insert(db, PoolOperations::new(pool.clone()));
            } else if let Some(tenants) = self.databases.per_tenant(&db) {
                let checkout = tenants.checkout(&plan.tenant).map_err(|e| RunError::Node {
                    node: node.id.clone(),
                    location: workflow.locate(node),
                    source: e.into(),
                })?;
                ops.insert(db, PoolOperations::new(checkout.pool().clone()));
                held.push(checkout);
            }
        }
        Ok(Leases {
            ops: Arc::new(ops),
            _held: held,
        })
    }

    /// Starts (or skips) every node of `state` that is ready, each started one into `running`.
    #[allow(clippy::result_large_err)]
    fn start_ready(
        &self,
        workflow: &Arc<Workflow>,
        inputs: &Map<String, Value>,
        plan: &Plan,
        ops: &Arc<HashMap<String, PoolOperations>>,
        state: &mut Schedule,
        running: &mut JoinSet<NodeDone>,
    ) -> Result<(), RunError> {
        while let Some(i) = state.ready.pop() {
            if state.skips(workflow, i) {
                continue;
            }
            let node = &workflow.nodes[i];
            let config = self
                .config_for(workflow, i, inputs, &state.views)
                .map_err(|source| RunError::Node {
                    node: node.id.clone(),
                    location: workflow.locate(node),
                    source,
                })?;
            let limit = node.timeout.unwrap_or(workflow.node_timeout);
            let this = self.clone();
            let workflow = workflow.clone();
            let ops = ops.clone();
            let tenant = plan.tenant.clone();
            let database_policy = plan.database_policy.clone();
            let plugins = plan.plugins.clone();
            running.spawn(async move {
                let started = Instant::now();
                let node = &workflow.nodes[i];
                let on = RunsOn {
                    workload: &workflow.name,
                    tenant: &tenant,
                    database_policy,
                    plugins: plugins.as_deref(),
                };
                // Boxed, so the task's future stays small: spawning moves it several times,
                // and a node's own future (SQL, plugins, masking) is large.
                let result =
                    tokio::time::timeout(limit, Box::pin(this.run_node(node, &config, &ops, on)))
                        .await;
                (i, started.elapsed(), result.map_err(|_| limit))
            });
        }
        Ok(())
    }

    /// Node `i`'s typed config for this run: as typed at load, with what the run fills in
    /// (inputs and connections) parsed now.
    fn config_for(
        &self,
        workflow: &Workflow,
        i: usize,
        inputs: &Map<String, Value>,
        views: &[Option<Arc<Value>>],
    ) -> Result<Arc<NodeConfig>, NodeError> {
        let node = &workflow.nodes[i];
        Ok(match &node.typed {
            Typed::Ready(config) => config.clone(),
            Typed::Except(config, Part::Records)
                if let Some(records) = shared_records(workflow, i, views)? =>
            {
                Arc::new(config.with_records(records)?)
            }
            Typed::Except(config, part) => {
                let value = fill(workflow, i, Some(part.key()), inputs, views)?;
                Arc::new(config.with_part(*part, value)?)
            }
            Typed::AtRun | Typed::Unchecked => {
                let value = fill(workflow, i, None, inputs, views)?;
                Arc::new(NodeConfig::parse(&node.kind, &value)?)
            }
        })
    }

    /// Runs `f` on database `db`'s pool and vector store: the one pool, or for a database per
    /// tenant `tenant`'s, whose circuit then learns from the outcome.
    async fn on_database<F, Fut>(&self, db: &str, tenant: &str, f: F) -> Result<Value, NodeError>
    where
        F: FnOnce(crate::pool::Pool, VectorStore) -> Fut,
        Fut: std::future::Future<Output = Result<Value, NodeError>>,
    {
        if let (Some(pool), Some(store)) = (self.databases.get(db), self.vectors.get(db)) {
            return f(pool.clone(), store.clone()).await;
        }
        let tenants = self
            .databases
            .per_tenant(db)
            .ok_or_else(|| NodeError::Database(db.to_owned()))?;
        let checkout = tenants.checkout(tenant)?;
        let result = f(checkout.pool().clone(), checkout.vectors().clone()).await;
        checkout.finish(NodeError::reachability(&result));
        result
    }

    /// Runs one node; its statements count under the workflow's name for the pool's
    /// pre-warming, so the bursts of each workflow's runs are learnt.
    async fn run_node(
        &self,
        node: &NodeSpec,
        config: &NodeConfig,
        ops: &HashMap<String, PoolOperations>,
        on: RunsOn<'_>,
    ) -> Result<Value, NodeError> {
        let (workload, tenant) = (on.workload, on.tenant);
        let database = || node.database.clone().unwrap_or_else(|| "main".into());
        match config {
            NodeConfig::Sql(sql) => {
                self.on_database(&database(), tenant, |pool, _| async move {
                    Ok(crate::sql::node::run(&pool, sql, Some(workload), &sql.params).await?)
                })
                .await
            }
            NodeConfig::PoolOperation(request) => {
                let db = database();
                let ops = ops.get(&db).ok_or(NodeError::Database(db))?;
                // A lease without its own `workload` counts under the workflow's.
                Ok(ops.run(request, Some(workload)).await?)
            }
            NodeConfig::Vector(vector) => {
                self.on_database(&database(), tenant, |_, store| async move {
                    Ok(vector.run(&store).await?)
                })
                .await
            }
            NodeConfig::Plugin(config) => match &node.kind {
                NodeKind::Plugin(name) => self.run_plugin(name, config, node, on).await,
                _ => Err(NodeError::Config(
                    "a plugin config on another node type".into(),
                )),
            },
        }
    }

    /// A plugin node: its records through the plugin's batch transform. A plugin that asks for
    /// `database` gets the run's database access, each statement decided by `on`'s policy.
    async fn run_plugin(
        &self,
        name: &str,
        config: &PluginConfig,
        node: &NodeSpec,
        on: RunsOn<'_>,
    ) -> Result<Value, NodeError> {
        let plugin = match on.plugins {
            Some(set) => set.get(name),
            None => self.plugins.get(name),
        }
        .ok_or_else(|| NodeError::PluginMissing(name.to_owned()))?;
        // Checked at load against the plugin then loaded; now against the one that runs.
        let problems = plugin.config_problems(&config.settings, &["records"]);
        if !problems.is_empty() {
            return Err(NodeError::Config(format!(
                "plugin `{}` config: {}",
                plugin.label(),
                problems.join("; ")
            )));
        }
        // Written as serde_json writes them, into each `String` directly (`Value`'s `Display`
        // goes through a `fmt::Formatter` for every piece).
        let texts: Vec<String> = config
            .records
            .as_slice()
            .iter()
            .map(crate::json::to_string)
            .collect();
        let label = format!("{}@{}", plugin.name(), plugin.version());
        let database = plugin.uses_database().then(|| {
            Arc::new(PluginDatabase::new(
                self.databases.clone(),
                Arc::from(on.tenant),
                on.database_policy.clone(),
                DatabaseCaller {
                    plugin: plugin.name().to_owned(),
                    plugin_version: plugin.version().to_owned(),
                    node: node.id.clone(),
                    workflow: on.workload.to_owned(),
                },
            )) as Arc<dyn crate::plugins::DatabaseGate>
        });
        let results = plugin
            .clone()
            .transform_values_for(texts, config.settings.clone(), database)
            .await?;
        let mut data: Vec<Value> = Vec::with_capacity(results.len());
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(record) => data.push(record),
                Err(message) => {
                    return Err(NodeError::Record {
                        plugin: label,
                        index,
                        message,
                    });
                }
            }
        }
        let count = data.len();
        Ok(object([
            ("data", Value::Array(data)),
            ("count", count.into()),
            ("plugin", label.into()),
        ]))
    }
}

/// What a node runs on behalf of: the workflow (its statements' workload), the caller's tenant,
/// and the policy for its plugin's statements.
struct RunsOn<'a> {
    workload: &'a str,
    tenant: &'a str,
    database_policy: Option<super::DatabasePolicy>,
    /// The plugins the run pinned.
    plugins: Option<&'a PluginSet>,
}

/// The pool operations of one run, per database, and the tenant checkouts they hold open.
struct Leases {
    /// Per database: its operations (shared with the node tasks).
    ops: Arc<HashMap<String, PoolOperations>>,
    /// Held for the whole run (dropped after `ops`).
    _held: Vec<Checkout>,
}

/// A node task's end: its index, how long it ran, its result (`Err`: its limit, run past).
type NodeDone = (usize, Duration, Result<Result<Value, NodeError>, Duration>);

/// The scheduler's state during one run: what each node produced, and what waits on what.
struct Schedule {
    /// Per node: its output, once it ran.
    outputs: Vec<Option<Arc<Value>>>,
    /// Per node: its output as downstream nodes see it (filtered; else the output itself,
    /// shared, not copied).
    views: Vec<Option<Arc<Value>>>,
    /// Per node: how long it ran.
    durations: Vec<Option<Duration>>,
    /// Per node: why it is skipped, if it is.
    skipped: Vec<Option<String>>,
    /// Per node: how many of its upstream nodes have not finished.
    waiting: Vec<usize>,
    /// Per node: the nodes that read from it.
    downstream: Vec<Vec<usize>>,
    /// Nodes whose upstream nodes have all finished, not yet started.
    ready: Vec<usize>,
    /// How many nodes have finished or been skipped.
    done: usize,
}

impl Schedule {
    /// The state before `workflow` runs with `plan`: nothing run, the sources ready.
    fn new(workflow: &Workflow, plan: &Plan) -> Schedule {
        let n = workflow.nodes.len();
        let skipped: Vec<Option<String>> = (0..n)
            .map(|i| plan.skip.get(i).cloned().flatten())
            .collect();
        let waiting: Vec<usize> = workflow.upstream.iter().map(Vec::len).collect();
        let mut downstream = vec![Vec::new(); n];
        for (to, froms) in workflow.upstream.iter().enumerate() {
            for &from in froms {
                downstream[from].push(to);
            }
        }
        let ready: Vec<usize> = workflow
            .order
            .iter()
            .copied()
            .filter(|&i| waiting[i] == 0)
            .collect();
        Schedule {
            outputs: vec![None; n],
            views: vec![None; n],
            durations: vec![None; n],
            skipped,
            waiting,
            downstream,
            ready,
            done: 0,
        }
    }

    /// Whether node `i` is skipped (by the plan or an upstream skip); if so it is done at once.
    fn skips(&mut self, workflow: &Workflow, i: usize) -> bool {
        let upstream_skipped = workflow.upstream[i]
            .iter()
            .find(|&&u| self.skipped[u].is_some())
            .map(|&u| workflow.nodes[u].id.clone());
        if self.skipped[i].is_none()
            && let Some(up) = upstream_skipped
        {
            self.skipped[i] = Some(format!("upstream node `{up}` was skipped"));
        }
        if self.skipped[i].is_some() {
            self.complete(i);
            return true;
        }
        false
    }

    /// Takes a node task's end: its failure fails the run, else its output is kept and shown on.
    #[allow(clippy::result_large_err)]
    fn finish(
        &mut self,
        workflow: &Workflow,
        plan: &Plan,
        joined: Result<NodeDone, tokio::task::JoinError>,
    ) -> Result<(), RunError> {
        let (i, elapsed, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                // A node task panicked: report it as the node's failure, never crash.
                let panic = e.to_string();
                return Err(RunError::Node {
                    node: "(unknown)".into(),
                    location: format!("workflow `{}`", workflow.name),
                    source: NodeError::Config(format!("a node task failed: {panic}")),
                });
            }
        };
        let node = &workflow.nodes[i];
        let output = match result {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => {
                return Err(RunError::Node {
                    node: node.id.clone(),
                    location: workflow.locate(node),
                    source,
                });
            }
            Err(limit) => {
                return Err(RunError::Timeout {
                    node: node.id.clone(),
                    location: workflow.locate(node),
                    limit,
                });
            }
        };
        self.durations[i] = Some(elapsed);
        let output = Arc::new(output);
        let view = match &plan.downstream_filter {
            Some((which, filter)) if which.get(i).copied().unwrap_or(false) => {
                Arc::new(filter(node, (*output).clone()))
            }
            _ => output.clone(),
        };
        self.views[i] = Some(view);
        self.outputs[i] = Some(output);
        self.complete(i);
        Ok(())
    }

    /// Counts node `i` done, and readies each node that waited on it last.
    fn complete(&mut self, i: usize) {
        self.done += 1;
        for &d in &self.downstream[i] {
            self.waiting[d] -= 1;
            if self.waiting[d] == 0 {
                self.ready.push(d);
            }
        }
    }

    /// What the run produced: per node its output and time, and the nodes skipped with why.
    fn into_output(self, workflow: &Workflow) -> RunOutput {
        // The views go first, so that an output no node filtered is moved out, not copied.
        drop(self.views);
        let outputs = self
            .outputs
            .into_iter()
            .map(|output| output.map(Arc::unwrap_or_clone))
            .collect();
        let skipped = workflow
            .nodes
            .iter()
            .zip(self.skipped)
            .filter_map(|(node, reason)| reason.map(|r| (node.id.clone(), r)))
            .collect();
        RunOutput {
            outputs,
            skipped,
            durations: self.durations,
        }
    }
}

/// Node `i`'s config, or its key `part` alone, with `$inputs.NAME` replaced and its
/// connections filled in.
fn fill(
    workflow: &Workflow,
    i: usize,
    part: Option<&str>,
    inputs: &Map<String, Value>,
    views: &[Option<Arc<Value>>],
) -> Result<Value, NodeError> {
    let node = &workflow.nodes[i];
    // A key the file leaves out is a table when connections fill keys inside it.
    let mut config = match part {
        Some(key) => match node.config.get(key) {
            Some(value) => value.clone(),
            None if workflow
                .connections
                .iter()
                .any(|c| c.to == node.id && c.input.len() > 1 && c.input[0] == key) =>
            {
                Value::Object(Map::new())
            }
            None => Value::Null,
        },
        None => node.config.clone(),
    };
    substitute_inputs(&mut config, inputs);
    // A connection that fills no key only orders the nodes.
    for c in workflow
        .connections
        .iter()
        .filter(|c| c.to == node.id && !c.input.is_empty())
    {
        let into = match part {
            Some(key) if c.input[0] == key => &c.input[1..],
            Some(_) => continue,
            None => &c.input[..],
        };

        let value = follow(upstream(workflow, views, c)?, c)?;
        set_path(&mut config, into, value.clone())?;
    }
    Ok(config)
}

/// The output of `c`'s upstream node as downstream nodes see it.
fn upstream<'v>(
    workflow: &Workflow,
    views: &'v [Option<Arc<Value>>],
    c: &Connection,
) -> Result<&'v Arc<Value>, NodeError> {
    let from = workflow
        .nodes
        .iter()
        .position(|n| n.id == c.from)
        .expect("validated connection");
    views[from]
        .as_ref()
        .ok_or_else(|| NodeError::Connection(format!("upstream node `{}` has no output", c.from)))
}

/// The output of `c`'s upstream node at the connection's path, as `view` (that output as
/// downstream nodes see it) holds it.
fn follow<'v>(view: &'v Value, c: &Connection) -> Result<&'v Value, NodeError> {
    node_config::follow(view, &c.output).ok_or_else(|| {
        NodeError::Connection(format!(
            "the output of `{}` has no `{}` (connection `{}` → `{}.{}`)",
            c.from,
            c.output.join("."),
            [c.from.as_str()]
                .into_iter()
                .chain(c.output.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("."),
            c.to,
            c.input.join(".")
        ))
    })
}

/// Plugin node `i`'s records when one connection fills them whole and the file sets none:
/// the upstream output's array, shared ([`Records::Shared`]) rather than copied into a
/// config. `None` when the records are made another way (see [`fill`]).
fn shared_records(
    workflow: &Workflow,
    i: usize,
    views: &[Option<Arc<Value>>],
) -> Result<Option<Records>, NodeError> {
    let node = &workflow.nodes[i];
    if node.config.get(Part::Records.key()).is_some() {
        return Ok(None);
    }
    let mut filling = workflow.connections.iter().filter(|c| {
        c.to == node.id && c.input.first().map(String::as_str) == Some(Part::Records.key())
    });
    let (Some(c), None) = (filling.next(), filling.next()) else {
        return Ok(None);
    };
    if c.input.len() != 1 {
        return Ok(None);
    }
    let view = upstream(workflow, views, c)?;
    let found = follow(view, c)?;
    Ok(Some(Records::shared(view, &c.output, found)?))
}

/// Replaces every string that is exactly `$inputs.NAME` with the input's value.
fn substitute_inputs(value: &mut Value, inputs: &Map<String, Value>) {
    match value {
        Value::String(s) => {
            if let Some(input) = s
                .strip_prefix(INPUT_PREFIX)
                .and_then(|name| inputs.get(name))
            {
                *value = input.clone();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| substitute_inputs(v, inputs)),
        Value::Object(map) => map.values_mut().for_each(|v| substitute_inputs(v, inputs)),
        _ => {}
    }
}

/// Sets `path` in `config` (an object), creating objects on the way.
fn set_path(config: &mut Value, path: &[String], value: Value) -> Result<(), NodeError> {
    let Some((last, parents)) = path.split_last() else {
        *config = value;
        return Ok(());
    };
    let name = |p: Option<&String>| p.map_or_else(|| "the config".to_owned(), |k| format!("`{k}`"));
    let not_a_table = |p: Option<&String>| {
        NodeError::Connection(format!(
            "cannot fill `{}`: {} is not a table",
            path.join("."),
            name(p)
        ))
    };
    let mut at = config;
    let mut parent = None;
    for key in parents {
        let map = at.as_object_mut().ok_or_else(|| not_a_table(parent))?;
        at = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        parent = Some(key);
    }
    let map = at.as_object_mut().ok_or_else(|| not_a_table(parent))?;
    map.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A plugin node's records filled whole by one connection share the upstream output (no
    /// copy), and are refused or emptied as a copied value would be.
    #[test]
    fn records_from_one_connection_share_the_upstream_output() {
        let text = r#"
[[nodes]]
id = "rows"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 1" }

[[nodes]]
id = "sum"
type = "plugin:sum-by-key"

[[connections]]
from = "rows.result.data"
to = "sum.records"
"#;
        let workflow = Workflow::parse(
            text,
            std::path::Path::new("w.toml"),
            &crate::workflow::AnyName,
        )
        .unwrap();
        let view = |data: Value| vec![Some(Arc::new(json!({"result": {"data": data}}))), None];
        let rows = json!([{"a": 1}, {"a": "x"}]);
        let views = view(rows.clone());
        let Some(Records::Shared { output, .. }) = shared_records(&workflow, 1, &views).unwrap()
        else {
            panic!("the records should be shared");
        };
        assert!(Arc::ptr_eq(&output, views[0].as_ref().unwrap()));
        let records = shared_records(&workflow, 1, &views).unwrap().unwrap();
        assert_eq!(records.as_slice(), rows.as_array().unwrap().as_slice());
        assert_eq!(
            shared_records(&workflow, 1, &view(Value::Null))
                .unwrap()
                .unwrap()
                .as_slice(),
            [] as [Value; 0]
        );
        let err = shared_records(&workflow, 1, &view(json!("text"))).unwrap_err();
        assert!(
            err.to_string()
                .contains("`records` must be an array of records, not a string"),
            "{err}"
        );
        let missing = vec![Some(Arc::new(json!({"result": {}}))), None];
        let err = shared_records(&workflow, 1, &missing).unwrap_err();
        assert!(err.to_string().contains("has no `result.data`"), "{err}");
        // Records the file gives are filled in as before.
        let own = text.replace(
            "type = \"plugin:sum-by-key\"",
            "type = \"plugin:sum-by-key\"\nconfig = { records = [] }",
        );
        let workflow = Workflow::parse(
            &own,
            std::path::Path::new("w.toml"),
            &crate::workflow::AnyName,
        )
        .unwrap();
        assert!(shared_records(&workflow, 1, &views).unwrap().is_none());
    }

    #[test]
    fn inputs_are_substituted_only_as_whole_values() {
        let mut config = json!({
            "query": "SELECT '$inputs.x' AS literal",
            "params": {"x": "$inputs.x", "list": ["$inputs.y", "$inputs.missing"]}
        });
        let inputs = json!({"x": 5, "y": "why"});
        substitute_inputs(&mut config, inputs.as_object().unwrap());
        assert_eq!(
            config,
            json!({
                "query": "SELECT '$inputs.x' AS literal",
                "params": {"x": 5, "list": ["why", "$inputs.missing"]}
            })
        );
    }

    #[test]
    fn set_path_creates_tables() {
        let mut config = json!({"query": "q"});
        set_path(&mut config, &["params".into(), "a".into()], json!(1)).unwrap();
        assert_eq!(config, json!({"query": "q", "params": {"a": 1}}));
        let err = set_path(&mut config, &["query".into(), "a".into()], json!(1)).unwrap_err();
        assert!(err.to_string().contains("`query` is not a table"));
    }
}
