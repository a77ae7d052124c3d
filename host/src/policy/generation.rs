//! One loaded policy directory: every rule compiled, every native policy parsed with its id,
//! everything validated, and the policies sliced by (action, resource) so that a decision only
//! looks at the policies that can apply to it. A generation never changes once built.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicyId, PolicySet, ResourceConstraint, Schema,
    SchemaFragment, ValidationMode, Validator,
};

use super::compile::{self, Compiler, DerivedLeaf, MASK_ACTION, Needs, Slot};
use super::rules::{self, Effect, MaskingRule, PermissionRule, Problem, SourceLoc};
use super::user::uid;

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The name of the schema file in a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// `(action id, "node:ID" | "workflow:ID")`.
pub(crate) type SliceKey = (String, String);

/// What one policy in a slice is.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyKind {
    /// A compiled permission rule.
    Rule {
        /// Its effect.
        effect: Effect,
        /// Its priority.
        priority: i64,
    },
    /// A native Cedar policy.
    Native {
        /// `permit` or `forbid`.
        forbid: bool,
    },
    /// A masking rule's condition.
    Mask,
}

/// One policy of a slice, in decision order.
#[derive(Debug, Clone)]
pub struct SliceEntry {
    /// The policy id.
    pub id: String,
    /// What it is.
    pub kind: PolicyKind,
    /// Where it was written.
    pub loc: SourceLoc,
    /// For rules and masks: the condition alone (`H`), for `explain`.
    pub holds: Option<String>,
}

/// The policies for one (action, resource).
#[derive(Debug)]
pub(crate) struct Slice {
    pub(crate) pset: PolicySet,
    pub(crate) entries: Vec<SliceEntry>,
    pub(crate) needs: Needs,
    pub(crate) uses_runtime: bool,
    /// Runtime slots to put in the context.
    pub(crate) runtime_slots: Vec<Slot>,
    /// Every runtime attribute the slice reads (slots and derived values): a decision is cached
    /// per their values, never per the whole runtime (which holds the run id).
    pub(crate) runtime_paths: Vec<rules::AttrPath>,
    /// Whether a native policy here may read the time beyond the windows and expiries in
    /// `needs`: decisions are then cached per second only.
    pub(crate) reads_clock: bool,
    /// `Trellis::Action::"…"`, parsed once (`None` for the fallback slice).
    pub(crate) action_uid: Option<EntityUid>,
    /// `Trellis::Node::"…"` or `Trellis::Workflow::"…"`, built once (`None` for the fallback).
    pub(crate) resource_uid: Option<EntityUid>,
}

impl Slice {
    fn new(pset: PolicySet, entries: Vec<SliceEntry>, needs: Needs) -> Slice {
        Slice {
            pset,
            entries,
            needs,
            uses_runtime: false,
            runtime_slots: Vec::new(),
            runtime_paths: Vec::new(),
            reads_clock: false,
            action_uid: None,
            resource_uid: None,
        }
    }
}

/// A generation's maps by name, read on every decision: hashed with foldhash (seeded per
/// process) rather than SipHash, several times cheaper on a short name. Their keys come from
/// the policy and workflow files, not from callers.
pub(crate) type Lookup<V> = HashMap<String, V, foldhash::quality::RandomState>;

/// A loaded, validated policy directory.
#[derive(Debug)]
pub struct PolicyGeneration {
    id: u64,
    dir: PathBuf,
    /// Action → resource → slice: looked up without allocating, on every decision.
    pub(crate) slices: Lookup<Lookup<Slice>>,
    pub(crate) fallback: Slice,
    pub(crate) user_slots: Vec<Slot>,
    pub(crate) derived: Vec<DerivedLeaf>,
    pub(crate) masks: Lookup<Vec<(String, MaskingRule)>>,
    node_refs: Vec<NodeRef>,
    compiled: String,
    schema: String,
    policy_count: usize,
}

/// A rule or masking rule that names a node: what [`PolicyGeneration::node_refs`] lists, so the
/// host can warn when a node id it names is shared by workflows (see
/// [`crate::workflow::scope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    /// The node id.
    pub node: String,
    /// The one workflow it names the node of; `None`: the node in every workflow.
    pub workflow: Option<String>,
    /// The rule's id, or `masking[N]`.
    pub by: String,
    /// Where it was written.
    pub loc: SourceLoc,
}

/// Every problem found while loading a policy directory. Its message counts them; each
/// problem is a diagnostic of its own ([`miette::Diagnostic::related`]) with its lines and help,
/// and [`LoadError::detail`] lists them as plain text (for logs and the API).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{} in the policy directory", count(.problems))]
#[diagnostic(help(
    "fix these and run `trellis policy check` again; the last good policies stay in force"
))]
pub struct LoadError {
    /// Each problem, with file and line.
    #[related]
    pub problems: Vec<Problem>,
}

fn count(problems: &[Problem]) -> String {
    let n = problems.len();
    format!("{n} problem{}", if n == 1 { "" } else { "s" })
}

impl LoadError {
    /// The count, then each problem with its hint, one per line: for logs and the API.
    pub fn detail(&self) -> String {
        let mut out = self.to_string();
        for p in &self.problems {
            out.push_str("\n  ");
            out.push_str(&p.to_string());
            if let Some(hint) = &p.hint {
                out.push_str("\n    hint: ");
                out.push_str(hint);
            }
        }
        out
    }

    /// Gives each problem the line it names, from `files` (`(path, text)`, as loaded).
    fn with_snippets(mut self, files: &[(PathBuf, String)]) -> LoadError {
        let texts: HashMap<String, Arc<str>> = files
            .iter()
            .map(|(path, text)| (path.display().to_string(), Arc::from(text.as_str())))
            .collect();
        for p in &mut self.problems {
            if let Some(text) = texts.get(&*p.loc.file) {
                p.snippet = Some(crate::diagnostic::Snippet::line(
                    p.loc.file.clone(),
                    text.clone(),
                    p.loc.line,
                ));
            }
        }
        self
    }
}

struct Native {
    policy: Policy,
    /// Whether it may read the context (the time): its decisions are then cached per second.
    reads_context: bool,
    id: String,
    forbid: bool,
    loc: SourceLoc,
    key: Option<SliceKey>,
}

/// One compiled policy, as text, before it is parsed.
struct Compiled {
    id: String,
    text: String,
    loc: SourceLoc,
    /// The rule id problems name (`None` for masking conditions).
    label: Option<String>,
}

/// A slice before its policies are parsed.
struct SliceBuild {
    key: SliceKey,
    texts: Vec<Compiled>,
    entries: Vec<SliceEntry>,
    needs: Needs,
}

impl SliceBuild {
    fn new(key: SliceKey) -> SliceBuild {
        SliceBuild {
            key,
            texts: Vec::new(),
            entries: Vec::new(),
            needs: Needs::default(),
        }
    }
}

/// Below this many policies one thread does it all (spawning costs more than it saves).
const PARALLEL_MIN: usize = 256;

/// Parses every compiled policy into its slice's set and validates each set strictly against
/// the generated schema (`None`: the schema is invalid, already reported), splitting the slices
/// into contiguous runs, one per core. Strict validation looks at one policy at a time, so
/// validating every slice is validating the whole set. Problems come back in slice order.
fn parse_and_validate(
    builds: Vec<SliceBuild>,
    validator: Option<&Validator>,
    loc_of: &HashMap<String, (SourceLoc, String)>,
) -> (HashMap<SliceKey, Slice>, Vec<Problem>, usize) {
    let total: usize = builds.iter().map(|b| b.texts.len()).sum();
    let threads = if total < PARALLEL_MIN {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    };
    // Contiguous runs of slices with about the same number of policies each.
    let mut runs: Vec<Vec<SliceBuild>> = Vec::with_capacity(threads);
    let per_run = total.div_ceil(threads).max(1);
    let mut current = Vec::new();
    let mut in_current = 0;
    for b in builds {
        in_current += b.texts.len();
        current.push(b);
        if in_current >= per_run && runs.len() + 1 < threads {
            runs.push(std::mem::take(&mut current));
            in_current = 0;
        }
    }
    runs.push(current);
    let work = |run: Vec<SliceBuild>| -> (Vec<(SliceKey, Slice)>, Vec<Problem>, usize) {
        let mut problems = Vec::new();
        let mut count = 0;
        let mut out = Vec::with_capacity(run.len());
        for build in run {
            let mut pset = PolicySet::new();
            for c in build.texts {
                match Policy::parse(Some(PolicyId::new(&c.id)), c.text) {
                    Ok(policy) => {
                        if pset.add(policy).is_ok() {
                            count += 1;
                        }
                    }
                    Err(e) => problems.push(Problem::new(
                        c.loc,
                        c.label.as_deref(),
                        format!("compiled to invalid Cedar (a Trellis bug): {e}"),
                    )),
                }
            }
            if let Some(validator) = validator {
                let result = validator.validate(&pset, ValidationMode::Strict);
                for e in result.validation_errors() {
                    let (loc, rule) = loc_of
                        .get(&e.policy_id().to_string())
                        .cloned()
                        .unwrap_or_else(|| {
                            (
                                SourceLoc {
                                    file: Arc::from("<compiled>"),
                                    line: 1,
                                },
                                e.policy_id().to_string(),
                            )
                        });
                    problems.push(Problem::new(
                        loc,
                        Some(&rule),
                        format!("compiled policy fails strict validation (a Trellis bug): {e}"),
                    ));
                }
            }
            out.push((build.key, Slice::new(pset, build.entries, build.needs)));
        }
        (out, problems, count)
    };
    let results: Vec<_> = if runs.len() == 1 {
        runs.into_iter().map(work).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = runs
                .into_iter()
                .map(|run| scope.spawn(move || work(run)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let mut slices = HashMap::with_capacity(results.iter().map(|r| r.0.len()).sum());
    let mut problems = Vec::new();
    let mut count = 0;
    for (out, mut p, n) in results {
        slices.extend(out);
        problems.append(&mut p);
        count += n;
    }
    (slices, problems, count)
}

impl PolicyGeneration {
    /// Whether a masking rule for node `node` runs a `plugin:` mask (a call into a plugin,
    /// which a request must not run on an async worker).
    pub fn has_plugin_masks(&self, node: &str) -> bool {
        self.masks.get(node).is_some_and(|rules| {
            rules
                .iter()
                .any(|(_, rule)| matches!(rule.mask, super::rules::MaskType::Plugin { .. }))
        })
    }
}

impl PolicyGeneration {
    /// Loads `dir`: `schema.cedarschema`, `*.cedar` and `*.rules.json`, in file-name order.
    pub fn load(dir: &Path) -> Result<PolicyGeneration, LoadError> {
        let io = |path: &Path, e: std::io::Error| LoadError {
            problems: vec![Problem::new(
                SourceLoc {
                    file: Arc::from(path.display().to_string()),
                    line: 1,
                },
                None,
                format!("cannot read: {e}"),
            )],
        };
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        let mut files = Vec::new();
        for path in names {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if name == SCHEMA_FILE || name.ends_with(".cedar") || rules::is_rules_file(&path) {
                let text =
                    crate::served_file::read_to_string(dir, &path).map_err(|e| io(&path, e))?;
                files.push((path, text));
            }
        }
        Self::from_sources(dir, &files)
    }

    /// Builds a generation from `(path, text)` pairs, as if read from `dir`.
    pub fn from_sources(
        dir: &Path,
        files: &[(PathBuf, String)],
    ) -> Result<PolicyGeneration, LoadError> {
        let mut problems = Vec::new();
        let Sources {
            rules: rules_list,
            masks,
            natives: natives_src,
            schema: user_schema,
        } = read_sources(files, &mut problems);
        check_rule_ids(&rules_list, &mut problems);

        let mut out = Passes::default();
        compile_rules(&rules_list, &mut out);
        let node_refs = node_refs_of(&rules_list, &masks);

        let mask_map = compile_masks(masks, &mut out);
        let Passes {
            compiler,
            text: mut compiled_text,
            builds,
            loc_of,
        } = out;
        // Slots: what the rules read, plus what the user's schema declares for native policies.
        let (mut user_slots, context_slots) = slots_read(&builds);
        let native_schema = user_schema
            .as_ref()
            .and_then(|(file, text)| read_user_schema(file, text, &mut user_slots, &mut problems));
        let schema_text = compile::schema_text(&user_slots, &context_slots, &compiler.derived);
        let generated = generated_schema(&schema_text, &mut problems);

        // Parse and strictly validate every compiled policy, slice by slice, on all cores.
        let validator = generated.clone().map(Validator::new);
        let (mut slices, mut compiled_problems, compiled_count) =
            parse_and_validate(builds, validator.as_ref(), &loc_of);
        problems.append(&mut compiled_problems);

        let natives = parse_natives(
            &natives_src,
            native_schema.as_ref(),
            generated.as_ref(),
            &loc_of,
            &mut problems,
        );
        for n in &natives {
            compiled_text.push_str(&format!(
                "// native policy `{}` from {}\n{}\n\n",
                n.id, n.loc, n.policy
            ));
        }
        if !problems.is_empty() {
            return Err(LoadError { problems }.with_snippets(files));
        }

        let fallback = finish_slices(&natives, &mut slices, &compiler.derived);
        let policy_count = compiled_count + natives.len();
        Ok(PolicyGeneration {
            id: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            dir: dir.to_owned(),
            slices: by_action(slices),
            fallback,
            user_slots: user_slots.into_iter().collect(),
            derived: compiler.derived,
            masks: mask_map,
            node_refs,
            compiled: compiled_text,
            schema: schema_text,
            policy_count,
        })
    }

    /// This generation's number; every reload takes a higher one.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All compiled policies (and the native ones), as Cedar text.
    pub fn cedar_text(&self) -> &str {
        &self.compiled
    }

    /// The schema the compiled policies were validated against.
    pub fn schema_text(&self) -> &str {
        &self.schema
    }

    /// Every node a rule or masking rule names, in file order.
    pub fn node_refs(&self) -> &[NodeRef] {
        &self.node_refs
    }

    /// How many Cedar policies it holds.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    pub(crate) fn slice(&self, action: &str, resource: &str) -> &Slice {
        self.slices
            .get(action)
            .and_then(|by_resource| by_resource.get(resource))
            .unwrap_or(&self.fallback)
    }
}

/// A policy directory's files, sorted by kind: the rules parsed, the rest as text.
struct Sources {
    rules: Vec<PermissionRule>,
    masks: Vec<MaskingRule>,
    /// `(shown path, text)` of each `.cedar` file.
    natives: Vec<(String, String)>,
    /// `(shown path, text)` of `schema.cedarschema`, if there is one.
    schema: Option<(String, String)>,
}

/// Pass: sorts the files by kind, parsing each `*.rules.json` (its problems go to `problems`).
fn read_sources(files: &[(PathBuf, String)], problems: &mut Vec<Problem>) -> Sources {
    let mut sources = Sources {
        rules: Vec::new(),
        masks: Vec::new(),
        natives: Vec::new(),
        schema: None,
    };
    for (path, text) in files {
        let shown = path.display().to_string();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == SCHEMA_FILE {
            sources.schema = Some((shown, text.clone()));
        } else if name.ends_with(".cedar") {
            sources.natives.push((shown, text.clone()));
        } else {
            let (file, mut p) = rules::parse_rules_file(&shown, text);
            problems.append(&mut p);
            sources.rules.extend(file.rules);
            sources.masks.extend(file.masking);
        }
    }
    sources
}

/// Pass: refuses duplicate rule ids, which would make decisions ambiguous.
fn check_rule_ids(rules_list: &[PermissionRule], problems: &mut Vec<Problem>) {
    let mut seen: HashMap<&str, &SourceLoc> = HashMap::new();
    for r in rules_list {
        if let Some(first) = seen.insert(&r.id, &r.loc) {
            problems.push(
                Problem::new(
                    r.loc.clone(),
                    Some(&r.id),
                    format!("duplicate rule id, first used at {first}"),
                )
                .with_hint(Some("give every rule a unique `id`".into())),
            );
        }
    }
}

/// Every node a rule or masking rule names, in file order (rules first).
fn node_refs_of(rules_list: &[PermissionRule], masks: &[MaskingRule]) -> Vec<NodeRef> {
    rules_list
        .iter()
        .filter(|r| r.resource_type == rules::ResourceType::Node)
        .map(|r| NodeRef {
            node: r.resource_id.clone(),
            workflow: r.workflow.clone(),
            by: r.id.clone(),
            loc: r.loc.clone(),
        })
        .chain(masks.iter().map(|m| NodeRef {
            node: m.resource_id.clone(),
            workflow: m.workflow.clone(),
            by: format!("masking[{}]", m.index),
            loc: m.loc.clone(),
        }))
        .collect()
}

/// The slots the compiled policies read: `(user slots, runtime slots)`.
fn slots_read(builds: &[SliceBuild]) -> (BTreeSet<Slot>, BTreeSet<Slot>) {
    let mut user_slots: BTreeSet<Slot> = BTreeSet::new();
    let mut context_slots: BTreeSet<Slot> = BTreeSet::new();
    for build in builds {
        for s in &build.needs.slots {
            if s.path.is_runtime() {
                context_slots.insert(s.clone())
            } else {
                user_slots.insert(s.clone())
            };
        }
    }
    (user_slots, context_slots)
}

/// Pass: parses the user's `schema.cedarschema` (for native policies), adding the user slots it
/// declares; `None` with a problem when it is invalid.
fn read_user_schema(
    file: &str,
    text: &str,
    user_slots: &mut BTreeSet<Slot>,
    problems: &mut Vec<Problem>,
) -> Option<Schema> {
    match Schema::from_cedarschema_str(text) {
        Ok((schema, _)) => {
            user_slots.extend(declared_user_slots(text));
            Some(schema)
        }
        Err(e) => {
            problems.extend(diagnostic_problems(file, text, None, &e, "invalid schema"));
            None
        }
    }
}

/// Pass: parses the generated schema; `None` with a problem when it is invalid (a Trellis bug).
fn generated_schema(schema_text: &str, problems: &mut Vec<Problem>) -> Option<Schema> {
    match Schema::from_cedarschema_str(schema_text) {
        Ok((s, _)) => Some(s),
        Err(e) => {
            problems.push(Problem::new(
                SourceLoc {
                    file: Arc::from("<generated schema>"),
                    line: 1,
                },
                None,
                format!("the generated schema is invalid (a Trellis bug): {e}"),
            ));
            None
        }
    }
}

/// The slices by action, then resource.
fn by_action(slices: HashMap<SliceKey, Slice>) -> Lookup<Lookup<Slice>> {
    let mut by_action: Lookup<Lookup<Slice>> = Lookup::default();
    for ((action, resource), slice) in slices {
        by_action.entry(action).or_default().insert(resource, slice);
    }
    by_action
}

/// The last component of a shown path, for policy ids that do not depend on the working directory.
fn file_name(shown: &str) -> &str {
    Path::new(shown)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(shown)
}

fn mask_name(m: &MaskingRule) -> String {
    match &m.mask {
        rules::MaskType::Plugin { name, .. } => format!("plugin:{name}"),
        other => format!("{other:?}")
            .split('(')
            .next()
            .unwrap_or("")
            .to_lowercase(),
    }
}

/// The slice a native policy bound to one action and one resource belongs to.
fn slice_key_of(action: &str, resource_uid: &str) -> Option<SliceKey> {
    let (ty, id) = resource_uid.split_once("::\"")?;
    let id = id.strip_suffix('"')?;
    let rt = match ty {
        "Trellis::Node" => "node",
        "Trellis::Workflow" => "workflow",
        "Trellis::Database" => "database",
        _ => return None,
    };
    Some((
        action.to_owned(),
        format!("{rt}:{}", id.replace("\\\"", "\"").replace("\\\\", "\\")),
    ))
}

/// Slots a user's `schema.cedarschema` declares on `Trellis::User` (e.g. `"str:user.attributes.region"?: String`).
fn declared_user_slots(text: &str) -> Vec<Slot> {
    let Ok((fragment, _)) = SchemaFragment::from_cedarschema_str(text) else {
        return Vec::new();
    };
    let Ok(json) = fragment.to_json_value() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(namespaces) = json.as_object() {
        for ns in namespaces.values() {
            if let Some(attrs) = ns
                .pointer("/entityTypes/User/shape/attributes")
                .and_then(|a| a.as_object())
            {
                out.extend(attrs.keys().filter_map(|k| Slot::parse(k)));
            }
        }
    }
    out
}

/// The 1-based line where each policy statement starts (skipping comments and blank lines).
fn statement_lines(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut line, mut at_start, mut in_str, mut escaped) = (1, true, false, false);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if !b.is_ascii_whitespace() {
            if at_start {
                out.push(line);
                at_start = false;
            }
            if b == b'"' {
                in_str = true;
            } else if b == b';' {
                at_start = true;
            }
        }
        if b == b'\n' {
            line += 1;
        }
        i += 1;
    }
    out
}

fn statement_index(starts: &[usize], line: usize) -> usize {
    starts.iter().position(|&l| l == line).unwrap_or(usize::MAX)
}

/// Problems from a Cedar diagnostic, each at the line of one of its labels.
fn diagnostic_problems(
    file: &str,
    text: &str,
    id: Option<&str>,
    d: &dyn miette::Diagnostic,
    what: &str,
) -> Vec<Problem> {
    let line = d.labels().and_then(|mut l| l.next()).map_or(1, |l| {
        text[..l.offset().min(text.len())].matches('\n').count() + 1
    });
    let mut message = format!("{what}: {d}");
    // Cedar names the policy by its parse-time id (`policy3`); the location says which it is.
    if let Some(start) = message.find("for policy `policy")
        && let Some(end) = message[start..].find("`, ")
    {
        message.replace_range(start..start + end + 3, "");
    }
    if let Some(help) = d.help() {
        message.push_str(&format!(" ({help})"));
    }
    vec![
        Problem::new(
            SourceLoc {
                file: Arc::from(file),
                line,
            },
            id,
            message,
        )
        .native(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_lines_skip_comments_and_strings() {
        let text = "// c\n@id(\"a;b\")\npermit(principal, action, resource);\n\nforbid(principal, action, resource)\nwhen { true };\n";
        assert_eq!(statement_lines(text), [2, 5]);
    }
}

/// What the compiling passes build up: the compiler (with its derived values), the compiled
/// text for people, the slices' policy texts, and where each policy was written.
#[derive(Default)]
struct Passes {
    compiler: Compiler,
    text: String,
    builds: Vec<SliceBuild>,
    loc_of: HashMap<String, (SourceLoc, String)>,
}

/// Pass: compiles the rules, slice by slice, in decision order (priority, then file order).
fn compile_rules(rules_list: &[PermissionRule], out: &mut Passes) {
    let mut order: Vec<(SliceKey, Vec<usize>)> = Vec::new();
    let mut index: HashMap<SliceKey, usize> = HashMap::new();
    for (i, r) in rules_list.iter().enumerate() {
        let key = (
            compile::action_id(r.resource_type, &r.permission),
            format!("{}:{}", r.resource_type, r.resource_id),
        );
        let slot = *index.entry(key.clone()).or_insert_with(|| {
            order.push((key, Vec::new()));
            order.len() - 1
        });
        order[slot].1.push(i);
    }
    for (key, mut members) in order {
        // Priority first (highest wins), then file order (a stable sort keeps it).
        members.sort_by_key(|&i| std::cmp::Reverse(rules_list[i].priority));
        let mut build = SliceBuild::new(key);
        let mut holds_list: Vec<(Effect, String)> = Vec::new();
        for &i in &members {
            let rule = &rules_list[i];
            let mut rule_needs = Needs::default();
            let holds = out.compiler.holds(rule, &mut rule_needs);
            build.needs.merge(&rule_needs);
            // Only a deny needs guards (against the earlier allows that hold): a permit
            // never does, since any forbid that holds overrides it in Cedar anyway.
            let earlier: Vec<&str> = holds_list
                .iter()
                .filter(|(e, _)| rule.effect == Effect::Deny && *e == Effect::Allow)
                .map(|(_, h)| h.as_str())
                .collect();
            let texts = compile::rule_policy(rule, &build.key.0, &holds, &earlier);
            holds_list.push((rule.effect, holds.clone()));
            out.text.push_str(&texts.shown);
            out.text.push('\n');
            out.loc_of
                .insert(rule.id.clone(), (rule.loc.clone(), rule.id.clone()));
            build.texts.push(Compiled {
                id: rule.id.clone(),
                text: texts.evaluated,
                loc: rule.loc.clone(),
                label: Some(rule.id.clone()),
            });
            build.entries.push(SliceEntry {
                id: rule.id.clone(),
                kind: PolicyKind::Rule {
                    effect: rule.effect,
                    priority: rule.priority,
                },
                loc: rule.loc.clone(),
                holds: Some(holds),
            });
        }
        out.builds.push(build);
    }
}

/// Pass: compiles each masking rule's condition into one permit under the `mask` action, in its
/// node's slice; returns the masks by node.
fn compile_masks(masks: Vec<MaskingRule>, out: &mut Passes) -> Lookup<Vec<(String, MaskingRule)>> {
    let mut mask_map: Lookup<Vec<(String, MaskingRule)>> = Lookup::default();
    let mut mask_builds: HashMap<String, usize> = HashMap::new();
    for m in masks {
        let id = format!("mask:{}:{}", file_name(&m.loc.file), m.index);
        let mut needs = Needs::default();
        let scope = m
            .workflow
            .as_deref()
            .map(|w| out.compiler.in_workflow(w, &mut needs));
        let condition = m
            .condition
            .as_ref()
            .map(|c| out.compiler.condition(c, &mut needs));
        let holds = match (scope, condition) {
            (Some(s), Some(c)) => format!("{s} && {c}"),
            (Some(s), None) => s,
            (None, Some(c)) => c,
            (None, None) => "true".to_owned(),
        };
        let texts = compile::SliceTexts::new(
            &id,
            &format!("{} ({} on `{}`)", m.loc, mask_name(&m), m.field_path.text),
            "permit",
            MASK_ACTION,
            &format!("Trellis::Node::{}", compile::lit(&m.resource_id)),
            &holds,
        );
        out.text.push_str(&texts.shown);
        out.text.push('\n');
        let slot = *mask_builds.entry(m.resource_id.clone()).or_insert_with(|| {
            out.builds.push(SliceBuild::new((
                MASK_ACTION.to_owned(),
                format!("node:{}", m.resource_id),
            )));
            out.builds.len() - 1
        });
        let build = &mut out.builds[slot];
        out.loc_of
            .insert(id.clone(), (m.loc.clone(), format!("masking[{}]", m.index)));
        build.texts.push(Compiled {
            id: id.clone(),
            text: texts.evaluated,
            loc: m.loc.clone(),
            label: None,
        });
        build.needs.merge(&needs);
        build.entries.push(SliceEntry {
            id: id.clone(),
            kind: PolicyKind::Mask,
            loc: m.loc.clone(),
            holds: Some(holds),
        });
        mask_map
            .entry(m.resource_id.clone())
            .or_default()
            .push((id, m));
    }
    mask_map
}

/// Pass: attaches the native policies (one bound to an action and a resource to its slice, any
/// other to every access slice and the fallback), then settles what each slice reads at request
/// time (its action and resource uids, runtime slots and paths); returns the fallback slice.
fn finish_slices(
    natives: &[Native],
    slices: &mut HashMap<SliceKey, Slice>,
    derived: &[DerivedLeaf],
) -> Slice {
    let mut fallback = Slice::new(PolicySet::new(), Vec::new(), Needs::default());
    for n in natives {
        let entry = SliceEntry {
            id: n.id.clone(),
            kind: PolicyKind::Native { forbid: n.forbid },
            loc: n.loc.clone(),
            holds: None,
        };
        match &n.key {
            Some(key) => {
                let slice = slices
                    .entry(key.clone())
                    .or_insert_with(|| Slice::new(PolicySet::new(), Vec::new(), Needs::default()));
                let _ = slice.pset.add(n.policy.clone());
                slice.entries.push(entry);
                slice.reads_clock |= n.reads_context;
            }
            None => {
                let _ = fallback.pset.add(n.policy.clone());
                fallback.entries.push(entry);
                fallback.reads_clock |= n.reads_context;
            }
        }
    }
    for (key, slice) in slices.iter_mut() {
        if key.0 != MASK_ACTION {
            for (n, e) in natives
                .iter()
                .filter(|n| n.key.is_none())
                .zip(fallback.entries.iter())
            {
                let _ = slice.pset.add(n.policy.clone());
                slice.entries.push(e.clone());
                slice.reads_clock |= n.reads_context;
            }
        }
        slice.action_uid = Some(uid("Action", &key.0));
        slice.resource_uid = key.1.split_once(':').and_then(|(rt, id)| match rt {
            "node" => Some(uid("Node", id)),
            "workflow" => Some(uid("Workflow", id)),
            "database" => Some(uid("Database", id)),
            _ => None,
        });
        slice.uses_runtime = slice.needs.uses_runtime(derived);
        slice.runtime_slots = slice
            .needs
            .slots
            .iter()
            .filter(|s| s.path.is_runtime())
            .cloned()
            .collect();
        slice.needs.derived.sort_unstable();
        slice.needs.derived.dedup();
        let mut paths: Vec<rules::AttrPath> = slice
            .runtime_slots
            .iter()
            .map(|s| s.path.clone())
            .chain(
                slice
                    .needs
                    .derived
                    .iter()
                    .map(|&i| &derived[i].condition.path)
                    .filter(|p| p.is_runtime())
                    .cloned(),
            )
            .collect();
        paths.sort_unstable();
        paths.dedup();
        slice.runtime_paths = paths;
    }
    fallback
}

/// Pass: parses the native `.cedar` files (ids from `@id`, else `file:index`; a duplicate of any
/// id, compiled or native, is a problem), refuses actions the host never asks for, finds the
/// slice each bound policy belongs to, and validates each file strictly against the user's
/// schema (else the generated one).
fn parse_natives(
    natives_src: &[(String, String)],
    native_schema: Option<&Schema>,
    generated: Option<&Schema>,
    loc_of: &HashMap<String, (SourceLoc, String)>,
    problems: &mut Vec<Problem>,
) -> Vec<Native> {
    let mut natives: Vec<Native> = Vec::new();
    let mut native_ids: HashMap<String, SourceLoc> = loc_of
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (file, text) in natives_src {
        let parsed = match PolicySet::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                for err in e.iter() {
                    problems.extend(diagnostic_problems(file, text, None, err, "cannot parse"));
                }
                continue;
            }
        };
        let starts = statement_lines(text);
        let mut file_set = PolicySet::new();
        for i in 0.. {
            let Some(p) = parsed.policy(&PolicyId::new(format!("policy{i}"))) else {
                break;
            };
            let line = starts.get(i).copied().unwrap_or(1);
            let loc = SourceLoc {
                file: Arc::from(file.as_str()),
                line,
            };
            let id = p
                .annotation("id")
                .map_or_else(|| format!("{}:{i}", file_name(file)), str::to_owned);
            if let Some(first) = native_ids.insert(id.clone(), loc.clone()) {
                problems.push(
                    Problem::new(
                        loc.clone(),
                        Some(&id),
                        format!("duplicate policy id, first used at {first}"),
                    )
                    .with_hint(Some("give every policy a unique `@id(\"…\")`".into()))
                    .native(),
                );
                continue;
            }
            let policy = p.new_id(PolicyId::new(&id));
            check_native_actions(&policy, &loc, &id, problems);
            let _ = file_set.add(p.clone());
            natives.push(native(policy, id, loc));
        }
        if let Some(schema) = native_schema.or(generated) {
            validate_native_file(file, text, &starts, &file_set, &natives, schema, problems);
        }
    }
    natives
}

/// Refuses each action in a native policy's scope that the host never asks for.
fn check_native_actions(policy: &Policy, loc: &SourceLoc, id: &str, problems: &mut Vec<Problem>) {
    let actions = match policy.action_constraint() {
        ActionConstraint::Eq(a) => vec![a],
        ActionConstraint::In(list) => list,
        ActionConstraint::Any => Vec::new(),
    };
    for a in actions {
        let name = a.id().unescaped().to_owned();
        let why = name.split_once(':').and_then(|(rt, permission)| {
            rules::ResourceType::parse(rt).and_then(|rt| rules::unchecked(rt, permission))
        });
        if let Some(why) = why {
            problems.push(
                Problem::new(
                    loc.clone(),
                    Some(id),
                    format!("action `{name}` is never asked for: {why}"),
                )
                .with_hint(Some(
                    "remove the policy, or the action from its scope".into(),
                ))
                .native(),
            );
        }
    }
}

/// A parsed native policy, with the slice it belongs to when it is bound to one action and one
/// resource.
fn native(policy: Policy, id: String, loc: SourceLoc) -> Native {
    let key = match (policy.action_constraint(), policy.resource_constraint()) {
        (ActionConstraint::Eq(a), ResourceConstraint::Eq(r)) => {
            slice_key_of(a.id().unescaped(), &r.to_string())
        }
        _ => None,
    };
    Native {
        forbid: policy.effect() == cedar_policy::Effect::Forbid,
        // Conservative: a mention anywhere (even in a comment) counts.
        reads_context: policy.to_string().contains("context"),
        policy,
        id,
        loc,
        key,
    }
}

/// Validates one native file's policies strictly against `schema`, each problem naming the
/// policy at fault.
fn validate_native_file(
    file: &str,
    text: &str,
    starts: &[usize],
    file_set: &PolicySet,
    natives: &[Native],
    schema: &Schema,
    problems: &mut Vec<Problem>,
) {
    let result = Validator::new(schema.clone()).validate(file_set, ValidationMode::Strict);
    for e in result.validation_errors() {
        let i: usize = e
            .policy_id()
            .to_string()
            .trim_start_matches("policy")
            .parse()
            .unwrap_or(0);
        let id = natives
            .iter()
            .rev()
            .find(|n| n.loc.file.as_ref() == file && statement_index(starts, n.loc.line) == i)
            .map(|n| n.id.clone());
        problems.extend(diagnostic_problems(
            file,
            text,
            id.as_deref(),
            e,
            "fails strict validation",
        ));
    }
}
