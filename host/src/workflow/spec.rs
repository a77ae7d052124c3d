//! A workflow definition: its inputs, its nodes and the connections between them, read from a
//! `workflows/*.toml` file (or built with [`super::WorkflowBuilder`]) and validated once: unknown
//! node types or plugins, duplicate ids, dangling connections and cycles are errors that name the
//! file, the line and the node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::sql::params::json_kind;

pub use super::check::{AnyName, Known};
pub use super::node_config::Typed;
pub use super::node_kind::NodeKind;

/// The JSON type a workflow input must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// A JSON string.
    String,
    /// A whole number.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON array.
    Array,
    /// A JSON object.
    Object,
    /// Anything.
    Any,
}

impl InputType {
    /// Whether `value` has this type.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            InputType::String => value.is_string(),
            InputType::Integer => value.is_i64() || value.is_u64(),
            InputType::Number => value.is_number(),
            InputType::Boolean => value.is_boolean(),
            InputType::Array => value.is_array(),
            InputType::Object => value.is_object(),
            InputType::Any => true,
        }
    }

    fn name(self) -> &'static str {
        match self {
            InputType::String => "a string",
            InputType::Integer => "a whole number",
            InputType::Number => "a number",
            InputType::Boolean => "true or false",
            InputType::Array => "an array",
            InputType::Object => "an object",
            InputType::Any => "any value",
        }
    }
}

/// One declared input of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// Its type.
    pub kind: InputType,
    /// The value used when the caller gives none; without one the input is required.
    pub default: Option<Value>,
    /// What it is for (shown by `GET /v1/workflows`).
    pub description: Option<String>,
}

/// One node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Unique within the workflow; also the policy resource id (`Trellis::Node::"id"`).
    pub id: String,
    /// What it runs.
    pub kind: NodeKind,
    /// Its configuration (the node type's JSON config). Strings `"$inputs.NAME"` are replaced by
    /// the run's input `NAME`; connections fill further keys at run time.
    pub config: Value,
    /// The same config typed by its node type, as far as the file fixes it (set when the
    /// workflow is validated).
    pub typed: Typed,
    /// The database it runs on (database nodes only; default: the workflow's, else `main`).
    pub database: Option<String>,
    /// The longest it may run (default: the workflow's `node_timeout`).
    pub timeout: Option<Duration>,
    /// Whether the run goes on without it when policy denies `execute` (it is then skipped).
    pub optional: bool,
    /// Whether downstream nodes see its output masked for the user (default: clear values;
    /// the response is masked either way).
    pub mask_downstream: bool,
    /// 1-based line of its definition, when read from a file.
    pub line: Option<usize>,
}

/// Two nodes are the same when their definitions are: `typed` follows from them.
impl PartialEq for NodeSpec {
    fn eq(&self, other: &NodeSpec) -> bool {
        self.id == other.id
            && self.kind == other.kind
            && self.config == other.config
            && self.database == other.database
            && self.timeout == other.timeout
            && self.optional == other.optional
            && self.mask_downstream == other.mask_downstream
            && self.line == other.line
    }
}

/// Data from one node's output into another node's config.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// The upstream node.
    pub from: String,
    /// Dotted path into its output (empty: the whole output).
    pub output: Vec<String>,
    /// The downstream node.
    pub to: String,
    /// Dotted path of the config key it fills.
    pub input: Vec<String>,
    /// 1-based line, when read from a file.
    pub line: Option<usize>,
}

/// A validated workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Its name (the file stem unless `name` is given); the policy resource id.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// The file it came from.
    pub source: Option<PathBuf>,
    /// Declared inputs.
    pub inputs: BTreeMap<String, InputSpec>,
    /// Nodes, in definition order.
    pub nodes: Vec<NodeSpec>,
    /// Connections.
    pub connections: Vec<Connection>,
    /// The default per-node time limit.
    pub node_timeout: Duration,
    /// Node indices in a dependency order.
    pub(crate) order: Vec<usize>,
    /// For each node, the indices of the nodes it reads from.
    pub(crate) upstream: Vec<Vec<usize>>,
}

fn spec_err(location: String, message: String, hint: Option<&str>) -> SpecError {
    SpecError {
        location,
        message,
        hint: hint.map(str::to_owned),
        snippet: None,
    }
}

/// The default per-node time limit.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(30);

/// A problem with a workflow definition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SpecError {
    /// `file:line` (or the workflow name for built workflows), and the node when one is at fault.
    pub location: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
    /// The line at fault, when the problem has one in a file.
    pub snippet: Option<Box<crate::diagnostic::Snippet>>,
}

impl miette::Diagnostic for SpecError {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.snippet
            .as_deref()
            .map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.snippet.as_ref().and_then(|s| s.labels())
    }
}

impl SpecError {
    /// Attaches the line of `text` (the file `path`) that the location names.
    fn in_file(mut self, path: &Path, text: &str) -> SpecError {
        let shown = path.display().to_string();
        let line = self
            .location
            .strip_prefix(&shown)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<usize>().ok()
            });
        if let Some(line) = line {
            self.snippet = Some(Box::new(crate::diagnostic::Snippet::line(
                shown,
                Arc::from(text),
                line,
            )));
        }
        self
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: Option<String>,
    description: Option<String>,
    database: Option<String>,
    node_timeout: Option<String>,
    #[serde(default)]
    inputs: BTreeMap<String, RawInput>,
    #[serde(default)]
    nodes: Vec<toml::Spanned<RawNode>>,
    #[serde(default)]
    connections: Vec<toml::Spanned<RawConnection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    #[serde(rename = "type", default = "any")]
    kind: InputType,
    default: Option<Value>,
    description: Option<String>,
}

fn any() -> InputType {
    InputType::Any
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    config: Option<Value>,
    database: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    mask_downstream: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    from: String,
    to: String,
}

/// Builds [`Workflow`]s; [`Workflow::parse`] and [`super::WorkflowBuilder`] both end here.
pub(crate) struct Draft {
    pub name: String,
    pub description: Option<String>,
    pub source: Option<PathBuf>,
    pub database: Option<String>,
    pub node_timeout: Duration,
    pub inputs: BTreeMap<String, InputSpec>,
    pub nodes: Vec<NodeSpec>,
    pub connections: Vec<Connection>,
}

impl Workflow {
    /// Reads and validates `path`.
    pub fn load(path: &Path, known: &dyn Known) -> Result<Workflow, SpecError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let text = crate::served_file::read_to_string(dir, path).map_err(|e| SpecError {
            location: path.display().to_string(),
            message: format!("cannot read the workflow file: {e}"),
            hint: None,
            snippet: None,
        })?;
        Workflow::parse(&text, path, known)
    }

    /// Parses `text` as the workflow file `path` and validates it.
    pub fn parse(text: &str, path: &Path, known: &dyn Known) -> Result<Workflow, SpecError> {
        Workflow::parse_unlocated(text, path, known).map_err(|e| e.in_file(path, text))
    }

    fn parse_unlocated(text: &str, path: &Path, known: &dyn Known) -> Result<Workflow, SpecError> {
        let at = |offset: usize| format!("{}:{}", path.display(), line_of(text, offset));
        let raw: RawWorkflow = toml::from_str(text).map_err(|e| SpecError {
            location: at(e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_owned(),
            hint: e
                .message()
                .starts_with("unknown field")
                .then(|| "see the workflow format in workflows/README.md".to_owned()),
            snippet: None,
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("workflow")
            .to_owned();
        let file_err = |message: String| SpecError {
            location: path.display().to_string(),
            message,
            hint: None,
            snippet: None,
        };
        let node_timeout = match &raw.node_timeout {
            None => DEFAULT_NODE_TIMEOUT,
            Some(t) => parse_duration(t).map_err(|m| file_err(format!("`node_timeout`: {m}")))?,
        };
        let mut inputs = BTreeMap::new();
        for (name, input) in raw.inputs {
            inputs.insert(
                name,
                InputSpec {
                    kind: input.kind,
                    default: input.default,
                    description: input.description,
                },
            );
        }
        let mut nodes = Vec::new();
        for spanned in raw.nodes {
            let line = line_of(text, spanned.span().start);
            let node = spanned.into_inner();
            let located = |message: String| SpecError {
                location: format!("{}:{line}: node `{}`", path.display(), node.id),
                message,
                hint: None,
                snippet: None,
            };
            let kind = NodeKind::parse(&node.kind).map_err(located)?;
            let timeout = node
                .timeout
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|m| located(format!("`timeout`: {m}")))?;
            nodes.push(NodeSpec {
                id: node.id,
                kind,
                config: node
                    .config
                    .unwrap_or_else(|| Value::Object(Default::default())),
                typed: Typed::Unchecked,
                database: node.database,
                timeout,
                optional: node.optional,
                mask_downstream: node.mask_downstream,
                line: Some(line),
            });
        }
        let mut connections = Vec::new();
        for spanned in raw.connections {
            let line = line_of(text, spanned.span().start);
            let c = spanned.into_inner();
            let (from, output) = split_path(&c.from);
            let (to, input) = split_path(&c.to);
            connections.push(Connection {
                from,
                output,
                to,
                input,
                line: Some(line),
            });
        }
        Draft {
            name: raw.name.unwrap_or(stem),
            description: raw.description,
            source: Some(path.to_owned()),
            database: raw.database,
            node_timeout,
            inputs,
            nodes,
            connections,
        }
        .validate(known)
    }

    /// The node with `id`.
    pub fn node(&self, id: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Checks `inputs` against the declared inputs and fills in defaults. Every problem is
    /// reported at once.
    pub fn bind_inputs(
        &self,
        given: &serde_json::Map<String, Value>,
    ) -> Result<serde_json::Map<String, Value>, Vec<String>> {
        let mut problems = Vec::new();
        for name in given.keys() {
            if !self.inputs.contains_key(name) {
                let known: Vec<_> = self.inputs.keys().map(|k| format!("`{k}`")).collect();
                problems.push(format!(
                    "unknown input `{name}`; this workflow takes {}",
                    if known.is_empty() {
                        "no inputs".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        let mut bound = serde_json::Map::new();
        for (name, spec) in &self.inputs {
            match given.get(name).or(spec.default.as_ref()) {
                Some(v) if spec.kind.accepts(v) => {
                    bound.insert(name.clone(), v.clone());
                }
                Some(v) => problems.push(format!(
                    "input `{name}` must be {}, not {}",
                    spec.kind.name(),
                    json_kind(v)
                )),
                None => problems.push(format!("missing input `{name}` ({})", spec.kind.name())),
            }
        }
        if problems.is_empty() {
            Ok(bound)
        } else {
            Err(problems)
        }
    }

    /// `file:line: node `id`` for messages about a node.
    pub fn locate(&self, node: &NodeSpec) -> String {
        match (&self.source, node.line) {
            (Some(path), Some(line)) => format!("{}:{line}: node `{}`", path.display(), node.id),
            _ => format!("workflow `{}`: node `{}`", self.name, node.id),
        }
    }
}

impl Draft {
    fn location(&self, line: Option<usize>, node: Option<&str>) -> String {
        let mut s = match (&self.source, line) {
            (Some(path), Some(line)) => format!("{}:{line}", path.display()),
            (Some(path), None) => path.display().to_string(),
            (None, _) => format!("workflow `{}`", self.name),
        };
        if let Some(node) = node {
            s.push_str(&format!(": node `{node}`"));
        }
        s
    }

    /// Validates the draft, in passes: the nodes, their databases, the connections, every node's
    /// config, then the order they run in.
    pub(crate) fn validate(mut self, known: &dyn Known) -> Result<Workflow, SpecError> {
        let index = self.check_nodes(known)?;
        // Database defaults are resolved here so the runtime needs no fallbacks.
        let default_db = self.database.clone().unwrap_or_else(|| "main".to_owned());
        for node in &mut self.nodes {
            if node.kind.uses_database() && node.database.is_none() {
                node.database = Some(default_db.clone());
            }
        }
        let (upstream, filled) = self.check_connections(&index)?;
        self.check_configs(&filled, known)?;
        let order = topological_order(&upstream).map_err(|cycle| {
            let names: Vec<&str> = cycle.iter().map(|&i| self.nodes[i].id.as_str()).collect();
            let first = &self.nodes[cycle[0]];
            spec_err(
                self.location(first.line, Some(&first.id)),
                format!("the connections form a cycle: {}", names.join(" → ")),
                Some("a workflow is a DAG: remove one of these connections"),
            )
        })?;
        Ok(Workflow {
            name: self.name,
            description: self.description,
            source: self.source,
            inputs: self.inputs,
            nodes: self.nodes,
            connections: self.connections,
            node_timeout: self.node_timeout,
            order,
            upstream,
        })
    }

    /// The name, then each node: its id, config, SQL, plugin or database, and the inputs it
    /// reads. Returns each node's index by id.
    fn check_nodes(&self, known: &dyn Known) -> Result<HashMap<String, usize>, SpecError> {
        let err = spec_err;
        if !valid_id(&self.name) {
            return Err(err(
                self.location(None, None),
                format!("invalid workflow name `{}`", self.name),
                Some("use letters, digits, `_` and `-` only"),
            ));
        }
        if self.nodes.is_empty() {
            return Err(err(
                self.location(None, None),
                "the workflow has no nodes".into(),
                Some("add a `[[nodes]]` table with `id` and `type`"),
            ));
        }
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let at = self.location(node.line, Some(&node.id));
            if !valid_id(&node.id) {
                return Err(err(
                    at,
                    "invalid node id".into(),
                    Some("use letters, digits, `_` and `-` only (dots separate paths)"),
                ));
            }
            if let Some(first) = index.insert(node.id.clone(), i) {
                let first_line = self.nodes[first]
                    .line
                    .map(|l| format!(" (first defined at line {l})"))
                    .unwrap_or_default();
                return Err(err(at, format!("duplicate node id{first_line}"), None));
            }
            if !node.config.is_object() {
                return Err(err(at, "`config` must be a table".into(), None));
            }
            let sql_from_run = node.kind.takes_sql()
                && match node.config.get("query") {
                    None => false,
                    Some(Value::String(q)) => q.starts_with(INPUT_PREFIX),
                    Some(_) => true,
                };
            if sql_from_run {
                return Err(err(
                    at,
                    "`query` must be the statement's text: an input can never become SQL".into(),
                    Some(
                        "pass the value as a parameter: `query = \"… WHERE x = :x\"` with `params = { x = \"$inputs.NAME\" }`",
                    ),
                ));
            }
            if let NodeKind::Plugin(name) = &node.kind {
                known.plugin(name).map_err(|m| {
                    err(
                        at.clone(),
                        m,
                        Some("build it into the plugins directory (`scripts/build-plugins`)"),
                    )
                })?;
                if node.database.is_some() {
                    return Err(err(at, "a plugin node takes no `database`".into(), None));
                }
            } else {
                let db = node
                    .database
                    .clone()
                    .or_else(|| self.database.clone())
                    .unwrap_or_else(|| "main".to_owned());
                if !known.database(&db) {
                    return Err(err(
                        at,
                        format!("unknown database `{db}`"),
                        Some("name a database from `[databases]` in trellis.toml"),
                    ));
                }
            }
            let mut refs = Vec::new();
            input_refs(&node.config, &mut refs);
            for r in refs {
                if !self.inputs.contains_key(&r) {
                    return Err(err(
                        at,
                        format!("`$inputs.{r}` names an input the workflow does not declare"),
                        Some(&format!("declare it: `[inputs.{r}]` with a `type`")),
                    ));
                }
            }
        }
        Ok(index)
    }

    /// Each connection's ends and the key it fills; returns each node's upstream nodes and the
    /// (node, key) pairs connections fill.
    #[allow(clippy::type_complexity)]
    fn check_connections(
        &mut self,
        index: &HashMap<String, usize>,
    ) -> Result<(Vec<Vec<usize>>, HashSet<(usize, Vec<String>)>), SpecError> {
        let err = spec_err;
        let mut upstream = vec![Vec::new(); self.nodes.len()];
        let mut filled: HashSet<(usize, Vec<String>)> = HashSet::new();
        let mut connections = std::mem::take(&mut self.connections);
        for c in &mut connections {
            let at = self.location_for_connection(c);
            let from = *index.get(&c.from).ok_or_else(|| {
                err(
                    at.clone(),
                    format!("connection from unknown node `{}`", c.from),
                    Some(&known_nodes(&self.nodes)),
                )
            })?;
            let to = *index.get(&c.to).ok_or_else(|| {
                err(
                    at.clone(),
                    format!("connection to unknown node `{}`", c.to),
                    Some(&known_nodes(&self.nodes)),
                )
            })?;
            if from == to {
                return Err(err(
                    at,
                    format!("node `{}` is connected to itself", c.to),
                    None,
                ));
            }
            if c.input.is_empty() {
                match self.nodes[to].kind {
                    NodeKind::Plugin(_) => c.input = vec!["records".to_owned()],
                    // `from = "a"`, `to = "b"`: b runs after a, and takes nothing from it.
                    _ if c.output.is_empty() => {}
                    _ => {
                        return Err(err(
                            at,
                            format!(
                                "the connection into `{}` must name the config key it fills",
                                c.to
                            ),
                            Some(
                                "e.g. `to = \"report.params.start_date\"` or `to = \"search.vector\"`",
                            ),
                        ));
                    }
                }
            }
            if self.nodes[to].kind.takes_sql() && c.input.first().is_some_and(|k| k == "query") {
                return Err(err(
                    at,
                    format!(
                        "a connection cannot fill `{}.query`: another node's output can never become SQL",
                        c.to
                    ),
                    Some("connect into a parameter instead: `to = \"NODE.params.NAME\"`"),
                ));
            }
            if !c.input.is_empty() && !filled.insert((to, c.input.clone())) {
                return Err(err(
                    at,
                    format!(
                        "`{}.{}` is filled by two connections",
                        c.to,
                        c.input.join(".")
                    ),
                    None,
                ));
            }
            if !upstream[to].contains(&from) {
                upstream[to].push(from);
            }
        }
        self.connections = connections;
        Ok((upstream, filled))
    }

    /// Every node's config, checked now rather than when a request runs it, and typed as far
    /// as the file fixes it; every problem of every node at once.
    fn check_configs(
        &mut self,
        filled: &HashSet<(usize, Vec<String>)>,
        known: &dyn Known,
    ) -> Result<(), SpecError> {
        let err = spec_err;
        let mut problems = Vec::new();
        let mut typed = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let config = node.config.as_object().expect("checked above");
            let filled_keys = filled
                .iter()
                .filter(|(to, _)| *to == i)
                .filter_map(|(_, path)| path.first().map(String::as_str));
            let mut later: Vec<&str> = filled_keys.clone().collect();
            later.extend(
                config
                    .iter()
                    .filter(|(_, v)| v.as_str().is_some_and(|s| s.starts_with(INPUT_PREFIX)))
                    .map(|(k, _)| k.as_str()),
            );
            let messages = super::check::node_config(&node.kind, config, &later, known);
            if !messages.is_empty() {
                let at = self.location(node.line, Some(&node.id));
                problems.extend(messages.into_iter().map(|m| (at.clone(), m)));
                continue;
            }
            // The keys a run fills: by connections, or with inputs anywhere inside them.
            let slots: BTreeSet<&str> = filled_keys
                .chain(config.iter().filter_map(|(k, v)| {
                    let mut refs = Vec::new();
                    input_refs(v, &mut refs);
                    (!refs.is_empty()).then_some(k.as_str())
                }))
                .collect();
            match Typed::prepare(&node.kind, &node.config, &slots) {
                Ok(t) => typed.push((i, t)),
                Err(e) => problems.push((self.location(node.line, Some(&node.id)), e.to_string())),
            }
        }
        match problems.len() {
            0 => {}
            1 => {
                let (location, message) = problems.remove(0);
                return Err(err(location, message, Some(super::check::HINT)));
            }
            n => {
                let list: Vec<String> = problems
                    .iter()
                    .map(|(at, m)| format!("  {at}: {m}"))
                    .collect();
                return Err(err(
                    self.location(None, None),
                    format!("{n} problems in node configs:\n{}", list.join("\n")),
                    Some(super::check::HINT),
                ));
            }
        }
        for (i, t) in typed {
            self.nodes[i].typed = t;
        }
        Ok(())
    }

    fn location_for_connection(&self, c: &Connection) -> String {
        format!(
            "{}: connection `{}` → `{}`",
            self.location(c.line, None),
            c.from,
            c.to
        )
    }
}

fn known_nodes(nodes: &[NodeSpec]) -> String {
    let ids: Vec<String> = nodes.iter().map(|n| format!("`{}`", n.id)).collect();
    format!("the nodes are {}", ids.join(", "))
}

/// Kahn's algorithm; on a cycle, returns the nodes on one cycle (in order, first repeated).
fn topological_order(upstream: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = upstream.len();
    let mut pending: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut downstream = vec![Vec::new(); n];
    for (to, froms) in upstream.iter().enumerate() {
        for &from in froms {
            downstream[from].push(to);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in &downstream[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk upstream from a node still pending until a node repeats: that is a cycle.
    let start = (0..n).find(|&i| pending[i] > 0).expect("a pending node");
    let mut path = vec![start];
    let mut at = start;
    loop {
        let next = *upstream[at]
            .iter()
            .find(|&&u| pending[u] > 0)
            .expect("a pending node has a pending upstream");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(cycle);
        }
        path.push(next);
        at = next;
    }
}

/// `node.a.b` → (`node`, [`a`, `b`]).
fn split_path(text: &str) -> (String, Vec<String>) {
    let mut parts = text.split('.');
    let head = parts.next().unwrap_or_default().to_owned();
    (head, parts.map(str::to_owned).collect())
}

/// The input names a config reads (`"$inputs.NAME"` strings anywhere in it).
pub(crate) fn input_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix(INPUT_PREFIX) {
                out.push(name.to_owned());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| input_refs(v, out)),
        Value::Object(map) => map.values().for_each(|v| input_refs(v, out)),
        _ => {}
    }
}

/// A config string that is exactly `$inputs.NAME` stands for the run's input `NAME`.
pub const INPUT_PREFIX: &str = "$inputs.";

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); e.g. `30s`"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workflow, String> {
        Workflow::parse(text, Path::new("workflows/w.toml"), &AnyName).map_err(|e| e.to_string())
    }

    const TWO: &str = r#"
[inputs.since]
type = "string"
default = "2024-01-01"

[[nodes]]
id = "rows"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 1", params = { since = "$inputs.since" } }

[[nodes]]
id = "sum"
type = "plugin:sum-by-key"

[[connections]]
from = "rows.result.data"
to = "sum"
"#;

    #[test]
    fn reads_nodes_connections_and_defaults() {
        let w = parse(TWO).unwrap();
        assert_eq!(w.name, "w");
        assert_eq!(w.nodes[0].kind, NodeKind::Sql);
        assert_eq!(w.nodes[0].database.as_deref(), Some("main"));
        assert_eq!(w.nodes[0].line, Some(6));
        assert_eq!(w.nodes[1].kind, NodeKind::Plugin("sum-by-key".into()));
        assert_eq!(w.connections[0].output, vec!["result", "data"]);
        assert_eq!(w.connections[0].input, vec!["records"]);
        assert_eq!(w.order, vec![0, 1]);
        assert_eq!(w.upstream, vec![vec![], vec![0]]);
    }

    #[test]
    fn errors_name_file_line_and_node() {
        let e = parse("[[nodes]]\nid = \"a\"\ntype = \"AsyncSQLDatabaseNod\"\n").unwrap_err();
        assert!(
            e.starts_with("workflows/w.toml:1: node `a`: unknown node type `AsyncSQLDatabaseNod`"),
            "{e}"
        );
        assert!(e.contains("did you mean `AsyncSQLDatabaseNode`"), "{e}");

        let e = parse(&TWO.replace("to = \"sum\"", "to = \"summ\"")).unwrap_err();
        assert!(
            e.starts_with(
                "workflows/w.toml:15: connection `rows` → `summ`: connection to unknown node `summ`"
            ),
            "{e}"
        );
        let e = parse(&TWO.replace("$inputs.since", "$inputs.sine")).unwrap_err();
        assert!(
            e.contains("node `rows`: `$inputs.sine` names an input"),
            "{e}"
        );
        let e = parse(&TWO.replace("id = \"sum\"", "id = \"rows\"")).unwrap_err();
        assert!(
            e.contains("duplicate node id (first defined at line 6)"),
            "{e}"
        );
        let e = parse("nodes = []\nbogus = 1\n").unwrap_err();
        assert!(
            e.starts_with("workflows/w.toml:2: unknown field `bogus`"),
            "{e}"
        );
    }

    #[test]
    fn cycles_are_named() {
        let text = r#"
[[nodes]]
id = "a"
type = "plugin:p"
[[nodes]]
id = "b"
type = "plugin:p"
[[nodes]]
id = "c"
type = "plugin:p"
[[connections]]
from = "a"
to = "b"
[[connections]]
from = "b"
to = "c.records"
[[connections]]
from = "c"
to = "b.extra"
"#;
        let e = parse(text).unwrap_err();
        assert!(e.contains("the connections form a cycle: c → b → c"), "{e}");
    }

    #[test]
    fn unknown_plugin_and_database_are_errors() {
        struct Only;
        impl Known for Only {
            fn plugin(&self, name: &str) -> Result<(), String> {
                Err(format!("plugin `{name}` is not loaded"))
            }
            fn database(&self, name: &str) -> bool {
                name == "main"
            }
        }
        let e = Workflow::parse(TWO, Path::new("w.toml"), &Only)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("w.toml:11: node `sum`: plugin `sum-by-key` is not loaded"),
            "{e}"
        );
        let text = TWO.replace(
            "type = \"AsyncSQLDatabaseNode\"",
            "type = \"AsyncSQLDatabaseNode\"\ndatabase = \"dw\"",
        );
        let e = parse_with(&text, &Only);
        assert!(e.contains("node `rows`: unknown database `dw`"), "{e}");
    }

    fn parse_with(text: &str, known: &dyn Known) -> String {
        Workflow::parse(text, Path::new("w.toml"), known)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn inputs_are_checked_all_at_once() {
        let w = parse(&TWO.replace("default = \"2024-01-01\"", "").replace(
            "[inputs.since]",
            "[inputs.limit]\ntype = \"integer\"\n[inputs.since]",
        ));
        // `$inputs.since` is still declared; `limit` is unused, which is allowed.
        let w = w.unwrap();
        let given = serde_json::json!({"limit": "ten", "other": 1});
        let problems = w.bind_inputs(given.as_object().unwrap()).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("unknown input `other`"));
        assert_eq!(
            problems[1],
            "input `limit` must be a whole number, not a string"
        );
        assert_eq!(problems[2], "missing input `since` (a string)");
    }
}
