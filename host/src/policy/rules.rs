//! The `*.rules.json` model: Kailash-style permission rules and masking rules, parsed with the
//! file and line of every rule, so that each problem can be reported where it is.
//!
//! Parsing never stops at the first problem: [`parse_rules_file`] returns every rule it could
//! read and a [`Problem`] for every one it could not.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::suggest::did_you_mean;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Where something was written: a file and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLoc {
    /// The file, as given to the loader.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One thing wrong with a policy file, with its location and, when known, the rule at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it is.
    pub loc: SourceLoc,
    /// The rule or policy id, when known.
    pub rule: Option<String>,
    /// What is wrong (lower-case, no final period).
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// `rule` for `*.rules.json`, `policy` for native Cedar policies.
    pub kind: &'static str,
    /// The line at fault, when the file's text is at hand.
    pub snippet: Option<crate::diagnostic::Snippet>,
}

impl std::error::Error for Problem {}

impl miette::Diagnostic for Problem {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.snippet.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.snippet.as_ref().and_then(|s| s.labels())
    }
}

impl Problem {
    pub(crate) fn new(loc: SourceLoc, rule: Option<&str>, message: impl Into<String>) -> Self {
        Problem {
            loc,
            rule: rule.map(str::to_owned),
            message: message.into(),
            hint: None,
            kind: "rule",
            snippet: None,
        }
    }

    pub(crate) fn native(mut self) -> Self {
        self.kind = "policy";
        self
    }

    pub(crate) fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.loc)?;
        match &self.rule {
            Some(label) if label.starts_with("masking[") => write!(f, "{label}: ")?,
            Some(id) => write!(f, "{} `{id}`: ", self.kind)?,
            None => {}
        }
        // The hint is the diagnostic's help (and a line of its own in `LoadError::detail`).
        f.write_str(&self.message)
    }
}

/// What a rule guards: a workflow node or a whole workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// A node of a workflow.
    Node,
    /// A whole workflow.
    Workflow,
    /// A configured database, as a plugin reaches it through the `database` import.
    Database,
}

impl ResourceType {
    /// `node`, `workflow` or `database`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Node => "node",
            ResourceType::Workflow => "workflow",
            ResourceType::Database => "database",
        }
    }

    /// The Cedar entity type.
    pub(crate) fn cedar_type(self) -> &'static str {
        match self {
            ResourceType::Node => "Trellis::Node",
            ResourceType::Workflow => "Trellis::Workflow",
            ResourceType::Database => "Trellis::Database",
        }
    }

    /// The Cedar entity type's name within the `Trellis` namespace.
    pub(crate) fn entity_name(self) -> &'static str {
        match self {
            ResourceType::Node => "Node",
            ResourceType::Workflow => "Workflow",
            ResourceType::Database => "Database",
        }
    }

    /// The permissions this resource type knows.
    pub fn permissions(self) -> &'static [&'static str] {
        match self {
            ResourceType::Node => NODE_PERMISSIONS,
            ResourceType::Workflow => WORKFLOW_PERMISSIONS,
            ResourceType::Database => DATABASE_PERMISSIONS,
        }
    }

    /// Parses `node`, `workflow` or `database`.
    pub fn parse(s: &str) -> Option<ResourceType> {
        match s {
            "node" => Some(ResourceType::Node),
            "workflow" => Some(ResourceType::Workflow),
            "database" => Some(ResourceType::Database),
            _ => None,
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The workflow id whose `admin` permission guards the admin endpoints (a name no workflow
/// file can take).
pub const ADMIN_WORKFLOW: &str = "trellis:api";

/// Node permissions, as in Kailash's `NodePermission`.
pub const NODE_PERMISSIONS: &[&str] = &[
    "execute",
    "read_output",
    "write_input",
    "skip",
    "mask_output",
];
/// Workflow permissions, as in Kailash's `WorkflowPermission`.
pub const WORKFLOW_PERMISSIONS: &[&str] =
    &["view", "execute", "modify", "delete", "share", "admin"];
/// Database permissions: what a plugin's statement needs, by its shape (a plain `SELECT`,
/// `VALUES` or `TABLE` reads; anything else writes).
pub const DATABASE_PERMISSIONS: &[&str] = &["read", "write"];

/// Why a permission of the Kailash vocabulary is refused at load: Trellis never asks for it, so
/// a rule granting or denying it would do nothing. `None`: the host checks it.
pub fn unchecked(rt: ResourceType, permission: &str) -> Option<&'static str> {
    match (rt, permission) {
        (ResourceType::Node, "mask_output") => {
            Some("masking rules (`masking` in a rules file) decide what is masked for whom")
        }
        (ResourceType::Workflow, "modify" | "delete" | "share") => Some(
            "workflows are files: whoever may write the workflows directory changes, deletes or shares them",
        ),
        _ => None,
    }
}

/// The permissions of `rt` the host checks (what the Cedar schema declares actions for).
pub fn checked_permissions(rt: ResourceType) -> impl Iterator<Item = &'static str> {
    rt.permissions()
        .iter()
        .copied()
        .filter(move |p| unchecked(rt, p).is_none())
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The rule grants access when it decides.
    Allow,
    /// The rule refuses access when it decides.
    Deny,
}

/// One permission rule.
#[derive(Debug, Clone)]
pub struct PermissionRule {
    /// Unique across the policy directory.
    pub id: String,
    /// Node or workflow.
    pub resource_type: ResourceType,
    /// The node or workflow id.
    pub resource_id: String,
    /// For a node rule: the one workflow whose node it names. `None`: node `resource_id` of
    /// every workflow (node ids are global policy resources unless a rule scopes them).
    pub workflow: Option<String>,
    /// One of [`ResourceType::permissions`].
    pub permission: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Higher first; equal priorities keep file order.
    pub priority: i64,
    /// Applies only to this user, when given.
    pub user_id: Option<String>,
    /// Applies only to users with this role, when given.
    pub role: Option<String>,
    /// Applies only to users of this tenant, when given.
    pub tenant_id: Option<String>,
    /// Never applies at or after this instant.
    pub expires_at: Option<jiff::Timestamp>,
    /// When the rule holds; `None` means always.
    pub conditions: Option<Condition>,
    /// Where it was written.
    pub loc: SourceLoc,
}

/// A condition, any of the Kailash condition types, composable with `and` / `or` / `not`.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `attribute_expression`.
    Attr(AttrExpr),
    /// `time_of_day`: seconds since midnight, both ends inclusive; `start > end` wraps midnight.
    TimeOfDay {
        /// Start, seconds since midnight.
        start: u32,
        /// End, seconds since midnight.
        end: u32,
    },
    /// `day_of_week`: lower-case English day names.
    DayOfWeek(Vec<String>),
    /// `department_hierarchy`: `user.attributes.department` equals `department`, or (with
    /// children) starts with `department + "."`.
    DepartmentHierarchy {
        /// The department.
        department: String,
        /// Whether sub-departments match too (default true).
        include_children: bool,
    },
    /// `security_clearance`: `user.attributes.security_clearance` at least this level.
    SecurityClearance {
        /// The minimum level, one of [`CLEARANCE_LEVELS`].
        minimum: String,
    },
    /// `geographic_region`: `user.attributes.region` is one of these.
    GeographicRegion(Vec<String>),
    /// `ip_range`: the address at `attribute_path` (default `runtime.ip_address`) is in a range.
    IpRange {
        /// Where the address is.
        path: AttrPath,
        /// The ranges, validated `addr/prefix` strings.
        cidrs: Vec<String>,
    },
    /// All hold.
    And(Vec<Condition>),
    /// At least one holds.
    Or(Vec<Condition>),
    /// It does not hold.
    Not(Box<Condition>),
}

/// Kailash's clearance levels, lowest first.
pub const CLEARANCE_LEVELS: &[&str] =
    &["public", "internal", "confidential", "secret", "top_secret"];

/// The level of a clearance name (Kailash: unknown names count as `public`).
pub fn clearance_level(name: &str) -> i64 {
    CLEARANCE_LEVELS
        .iter()
        .position(|l| *l == name)
        .map_or(0, |i| i as i64)
}

/// An attribute expression: a leaf comparison or `and` / `or` / `not` of expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrExpr {
    /// One comparison.
    Leaf(AttrCondition),
    /// All hold.
    And(Vec<AttrExpr>),
    /// At least one holds.
    Or(Vec<AttrExpr>),
    /// It does not hold.
    Not(Box<AttrExpr>),
}

/// One comparison of an attribute with a value.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrCondition {
    /// What is compared.
    pub path: AttrPath,
    /// How.
    pub operator: Operator,
    /// With what (the rule's value, as written).
    pub value: Value,
    /// Whether string comparisons respect case (default true).
    pub case_sensitive: bool,
}

/// An attribute path: `user.…` or `runtime.…`, split at dots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrPath(pub String);

impl AttrPath {
    /// Whether the value comes from the request's runtime data rather than the user.
    pub fn is_runtime(&self) -> bool {
        self.0.starts_with("runtime.")
    }

    /// The segments after the root (`user` or `runtime`).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.').skip(1)
    }

    /// Checks the path's shape; the message says what is accepted.
    pub fn parse(s: &str) -> Result<AttrPath, (String, Option<String>)> {
        let hint = Some(
            "attribute paths are `user.user_id`, `user.tenant_id`, `user.email`, `user.roles`, \
             `user.attributes.KEY…` or `runtime.KEY…`"
                .to_owned(),
        );
        if s.split('.').any(str::is_empty) {
            return Err((format!("attribute path `{s}` has an empty segment"), hint));
        }
        let mut parts = s.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("runtime"), Some(_), _) => Ok(AttrPath(s.to_owned())),
            (Some("user"), Some("user_id" | "tenant_id" | "email" | "roles"), None) => {
                Ok(AttrPath(s.to_owned()))
            }
            // `user.attributes` alone is the whole map: `contains` asks whether a key is in it.
            (Some("user"), Some("attributes"), _) => Ok(AttrPath(s.to_owned())),
            (Some("user"), Some(other), _) => {
                let known = ["user_id", "tenant_id", "email", "roles", "attributes"];
                let hint = did_you_mean(other, &known)
                    .map(|m| format!("did you mean `user.{m}`?"))
                    .or(hint);
                Err((
                    format!("unknown user field `{other}` in attribute path `{s}`"),
                    hint,
                ))
            }
            _ => Err((
                format!("attribute path `{s}` must start with `user.` or `runtime.`"),
                hint,
            )),
        }
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The 17 attribute operators of Kailash's `AttributeOperator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Operator {
    Equals,
    NotEquals,
    Contains,
    NotContains,
    ContainsAny,
    In,
    NotIn,
    GreaterThan,
    LessThan,
    GreaterOrEqual,
    LessOrEqual,
    Matches,
    HierarchicalMatch,
    SecurityLevelMeets,
    SecurityLevelBelow,
    MatchesDataRegion,
    Between,
}

impl Operator {
    /// Every operator with its name in rule files.
    pub const ALL: [(Operator, &'static str); 17] = [
        (Operator::Equals, "equals"),
        (Operator::NotEquals, "not_equals"),
        (Operator::Contains, "contains"),
        (Operator::NotContains, "not_contains"),
        (Operator::ContainsAny, "contains_any"),
        (Operator::In, "in"),
        (Operator::NotIn, "not_in"),
        (Operator::GreaterThan, "greater_than"),
        (Operator::LessThan, "less_than"),
        (Operator::GreaterOrEqual, "greater_or_equal"),
        (Operator::LessOrEqual, "less_or_equal"),
        (Operator::Matches, "matches"),
        (Operator::HierarchicalMatch, "hierarchical_match"),
        (Operator::SecurityLevelMeets, "security_level_meets"),
        (Operator::SecurityLevelBelow, "security_level_below"),
        (Operator::MatchesDataRegion, "matches_data_region"),
        (Operator::Between, "between"),
    ];

    /// The name used in rule files.
    pub fn name(self) -> &'static str {
        Operator::ALL
            .iter()
            .find(|(op, _)| *op == self)
            .map_or("?", |(_, n)| n)
    }

    /// Parses a name used in rule files.
    pub fn parse(s: &str) -> Option<Operator> {
        Operator::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(op, _)| *op)
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One masking rule.
#[derive(Debug, Clone)]
pub struct MaskingRule {
    /// The node whose output is masked.
    pub resource_id: String,
    /// The one workflow whose node it names; `None`: that node in every workflow.
    pub workflow: Option<String>,
    /// Which field: dotted, with `[]` for every element of an array (`items[].ssn`).
    pub field_path: FieldPath,
    /// How.
    pub mask: MaskType,
    /// When; `None` means always.
    pub condition: Option<Condition>,
    /// Where it was written.
    pub loc: SourceLoc,
    /// Position among the file's masking rules (for its policy id).
    pub index: usize,
}

/// A field path: segments, each a key optionally followed by `[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    /// As written.
    pub text: String,
    /// The parsed segments.
    pub segments: Vec<FieldSegment>,
}

/// One segment of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSegment {
    /// The object key.
    pub key: String,
    /// Whether the value under the key is an array whose every element continues the path.
    pub each: bool,
}

impl FieldPath {
    /// Parses `a.b`, `items[].ssn`, `[].ssn` (a top-level array).
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let mut segments = Vec::new();
        for part in text.split('.') {
            let (key, each) = match part.strip_suffix("[]") {
                Some(key) => (key, true),
                None => (part, false),
            };
            if key.contains('[') || key.contains(']') {
                return Err(format!(
                    "field path `{text}`: only `[]` (every element) is supported"
                ));
            }
            if key.is_empty() && !(each && segments.is_empty()) {
                return Err(format!("field path `{text}` has an empty segment"));
            }
            segments.push(FieldSegment {
                key: key.to_owned(),
                each,
            });
        }
        Ok(FieldPath {
            text: text.to_owned(),
            segments,
        })
    }
}

/// How a field is masked.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskType {
    /// `"[REDACTED]"`.
    Redact,
    /// First 2 and last 2 characters kept, the rest starred (4 or fewer: all stars).
    Partial,
    /// First 16 hex characters of SHA-256 of the string form.
    /// The first 16 hex characters of HMAC-SHA256 under the `hmac` key; with `unkeyed`, of a
    /// plain SHA-256 (the Python SDK's form, which enumeration can reverse for short values).
    Hash {
        /// Written `"unkeyed": true` in the rule.
        unkeyed: bool,
    },
    /// `mask_value`, or `"[MASKED]"`.
    Replace(Option<Value>),
    /// JSON `null`.
    Null,
    /// `***@domain`.
    Email,
    /// Stars, then the last 4 characters.
    Last4,
    /// The first 4 characters, then stars.
    First4,
    /// Keyed HMAC-SHA-256 of the string form, first 16 hex characters (joinable pseudonyms).
    Hmac,
    /// A date or date-time string cut to its year.
    DateYear,
    /// A masking plugin, by name, with the rule's `params` (a JSON object, `{}` when the rule
    /// gives none), which the plugin receives with every value.
    Plugin {
        /// The plugin's name.
        name: String,
        /// The rule's `params`.
        params: Value,
    },
}

/// The mask's name as rules write it (`redact`, `plugin:NAME`, …).
impl fmt::Display for MaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MaskType::*;
        f.write_str(match self {
            Redact => "redact",
            Partial => "partial",
            Hash { .. } => "hash",
            Replace(_) => "replace",
            Null => "null",
            Email => "email",
            Last4 => "last4",
            First4 => "first4",
            Hmac => "hmac",
            DateYear => "date_year",
            Plugin { name, .. } => return write!(f, "plugin:{name}"),
        })
    }
}

/// The built-in mask type names.
pub const MASK_TYPES: &[&str] = &[
    "redact",
    "partial",
    "hash",
    "replace",
    "null",
    "email",
    "last4",
    "first4",
    "hmac",
    "date_year",
];

/// The condition type names.
pub const CONDITION_TYPES: &[&str] = &[
    "attribute_expression",
    "time_of_day",
    "day_of_week",
    "department_hierarchy",
    "security_clearance",
    "geographic_region",
    "ip_range",
    "and",
    "or",
    "not",
];

const DAYS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn suggest(input: &str, candidates: &[&str]) -> Option<String> {
    did_you_mean(input, candidates).map(|m| format!("did you mean `{m}`?"))
}

/// The rules and masking rules of one file.
#[derive(Debug, Clone, Default)]
pub struct RuleFile {
    /// Permission rules, in file order.
    pub rules: Vec<PermissionRule>,
    /// Masking rules, in file order.
    pub masking: Vec<MaskingRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile<'a> {
    #[serde(borrow, default)]
    rules: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    masking: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule<'a> {
    id: String,
    resource_type: String,
    resource_id: String,
    workflow: Option<String>,
    permission: String,
    effect: String,
    #[serde(default)]
    priority: i64,
    user_id: Option<String>,
    role: Option<String>,
    tenant_id: Option<String>,
    expires_at: Option<String>,
    #[serde(borrow)]
    conditions: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMask<'a> {
    resource_id: String,
    workflow: Option<String>,
    field_path: String,
    mask_type: String,
    mask_value: Option<Value>,
    #[serde(default)]
    params: Option<Value>,
    /// `hash` only: without the key (see [`MaskType::Hash`]).
    unkeyed: Option<bool>,
    #[serde(borrow)]
    condition: Option<&'a RawValue>,
}

/// Reads one `*.rules.json` text. `file` is how locations name it.
pub fn parse_rules_file(file: &str, text: &str) -> (RuleFile, Vec<Problem>) {
    let file: Arc<str> = Arc::from(file);
    let mut out = RuleFile::default();
    let mut problems = Vec::new();
    let newlines = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let parser = Parser {
        file: &file,
        text,
        newlines,
    };
    let raw: RawFile = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let message = clean_serde(&e.to_string());
            let hint = if message.starts_with("unknown field") {
                Some("a rules file is `{\"rules\": [...], \"masking\": [...]}`".to_owned())
            } else {
                None
            };
            problems.push(
                Problem::new(parser.loc_line(e.line().max(1)), None, message).with_hint(hint),
            );
            return (out, problems);
        }
    };
    for raw_rule in raw.rules {
        match parser.rule(raw_rule) {
            Ok(rule) => out.rules.push(rule),
            Err(mut p) => problems.append(&mut p),
        }
    }
    for (index, raw_mask) in raw.masking.into_iter().enumerate() {
        match parser.mask(raw_mask, index) {
            Ok(mask) => out.masking.push(mask),
            Err(mut p) => problems.append(&mut p),
        }
    }
    (out, problems)
}

/// serde's messages end with ` at line N column M`; our locations say that already.
fn clean_serde(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

struct Parser<'a> {
    file: &'a Arc<str>,
    text: &'a str,
    /// Byte offsets of every `\n` in `text`.
    newlines: Vec<usize>,
}

type Parsed<T> = Result<T, Vec<Problem>>;

/// The items of an `and` / `or` / `not` list, each read with `read`: an empty list, or a `not`
/// of other than one item, is refused; every item's problems are reported at once.
fn boolean_items<T>(
    ty: &str,
    items: &[&RawValue],
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
    mut read: impl FnMut(&RawValue) -> Parsed<T>,
) -> Parsed<Vec<T>> {
    if items.is_empty() {
        return Err(p(format!("`{ty}` has no conditions"), None));
    }
    if ty == "not" && items.len() != 1 {
        return Err(p(
            format!("`not` takes exactly one condition, not {}", items.len()),
            Some("wrap several in `and` or `or`".into()),
        ));
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for &item in items {
        match read(item) {
            Ok(value) => out.push(value),
            Err(mut e) => problems.append(&mut e),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

impl Parser<'_> {
    fn loc_line(&self, line: usize) -> SourceLoc {
        SourceLoc {
            file: self.file.clone(),
            line,
        }
    }

    /// The location of a raw value borrowed from the file's text.
    fn loc(&self, raw: &RawValue) -> SourceLoc {
        let start = raw.get().as_ptr() as usize;
        let base = self.text.as_ptr() as usize;
        let offset = start.saturating_sub(base).min(self.text.len());
        // Newlines before `offset`: a binary search, so that big files stay linear.
        self.loc_line(self.newlines.partition_point(|&nl| nl < offset) + 1)
    }

    /// The location of serde error `e` inside raw value `raw`.
    /// A missing field is reported where the object starts, other errors where they are.
    fn loc_in(&self, raw: &RawValue, e: &serde_json::Error) -> SourceLoc {
        let mut loc = self.loc(raw);
        if !e.to_string().starts_with("missing field") {
            loc.line += e.line().saturating_sub(1);
        }
        loc
    }

    fn rule(&self, raw: &RawValue) -> Parsed<PermissionRule> {
        let loc = self.loc(raw);
        let r = self.raw_rule(raw)?;
        let id = r.id.clone();
        let p = |message: String, hint: Option<String>| {
            Problem::new(loc.clone(), Some(&id), message).with_hint(hint)
        };
        let mut problems = Vec::new();
        if r.id.is_empty() {
            problems.push(p("rule `id` is empty".into(), None));
        }
        let resource_type = ResourceType::parse(&r.resource_type);
        if resource_type.is_none() {
            problems.push(p(
                format!("unknown resource_type `{}`", r.resource_type),
                Some(
                    suggest(&r.resource_type, &["node", "workflow"])
                        .unwrap_or_else(|| "use `node` or `workflow`".into()),
                ),
            ));
        }
        if let Some(rt) = resource_type {
            check_permission(rt, &r, &p, &mut problems);
        }
        check_rule_workflow(resource_type, r.workflow.as_deref(), &p, &mut problems);
        let effect = rule_effect(&r.effect, &p, &mut problems);
        let expires_at = rule_expiry(r.expires_at.as_deref(), &p, &mut problems);
        let conditions = match r.conditions {
            None => None,
            Some(raw_cond) => match self.condition(raw_cond, &id) {
                Ok(c) => Some(c),
                Err(mut more) => {
                    problems.append(&mut more);
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(PermissionRule {
            id: r.id,
            resource_type: resource_type.expect("checked"),
            resource_id: r.resource_id,
            workflow: r.workflow,
            permission: r.permission,
            effect: effect.expect("checked"),
            priority: r.priority,
            user_id: r.user_id,
            role: r.role,
            tenant_id: r.tenant_id,
            expires_at,
            conditions,
            loc,
        })
    }

    /// Reads a rule's fields, or the problem naming them (with the rule's id, if it has one).
    fn raw_rule<'r>(&self, raw: &'r RawValue) -> Parsed<RawRule<'r>> {
        serde_json::from_str(raw.get()).map_err(|e| {
            let message = clean_serde(&e.to_string());
            let hint = unknown_field_hint(&message, RULE_FIELDS);
            let id_guess: Option<String> =
                serde_json::from_str::<serde_json::Map<String, Value>>(raw.get())
                    .ok()
                    .and_then(|m| m.get("id").and_then(Value::as_str).map(str::to_owned));
            vec![Problem::new(self.loc_in(raw, &e), id_guess.as_deref(), message).with_hint(hint)]
        })
    }

    fn mask(&self, raw: &RawValue, index: usize) -> Parsed<MaskingRule> {
        let loc = self.loc(raw);
        let label = format!("masking[{index}]");
        let m: RawMask = serde_json::from_str(raw.get()).map_err(|e| {
            let message = clean_serde(&e.to_string());
            let hint = unknown_field_hint(&message, MASK_FIELDS);
            vec![Problem::new(self.loc_in(raw, &e), Some(&label), message).with_hint(hint)]
        })?;
        let p = |message: String, hint: Option<String>| {
            Problem::new(loc.clone(), Some(&label), message).with_hint(hint)
        };
        let mut problems = Vec::new();
        let field_path = FieldPath::parse(&m.field_path).map_err(|e| p(e, None));
        let mask = match m.mask_type.as_str() {
            "redact" => Ok(MaskType::Redact),
            "partial" => Ok(MaskType::Partial),
            "hash" => Ok(MaskType::Hash {
                unkeyed: m.unkeyed.unwrap_or(false),
            }),
            "replace" => Ok(MaskType::Replace(m.mask_value.clone())),
            "null" => Ok(MaskType::Null),
            "email" => Ok(MaskType::Email),
            "last4" => Ok(MaskType::Last4),
            "first4" => Ok(MaskType::First4),
            "hmac" => Ok(MaskType::Hmac),
            "date_year" => Ok(MaskType::DateYear),
            other => match other.strip_prefix("plugin:") {
                Some(name) if !name.is_empty() => Ok(MaskType::Plugin {
                    name: name.to_owned(),
                    params: m
                        .params
                        .clone()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| Value::Object(Default::default())),
                }),
                _ => Err(p(
                    format!("unknown mask_type `{other}`"),
                    Some(suggest(other, MASK_TYPES).unwrap_or_else(|| {
                        format!("use one of `{}`, or `plugin:NAME`", MASK_TYPES.join("`, `"))
                    })),
                )),
            },
        };
        match &m.params {
            Some(_) if !m.mask_type.starts_with("plugin:") => problems.push(p(
                "`params` is only for `plugin:` masks".into(),
                Some("remove it: the built-in masks take no params".into()),
            )),
            Some(params) if !params.is_object() => problems.push(p(
                "`params` must be a JSON object".into(),
                Some("e.g. `\"params\": {\"keep\": 2}`: the keys the plugin documents".into()),
            )),
            _ => {}
        }
        if m.unkeyed.is_some() && m.mask_type != "hash" {
            problems.push(p(
                "`unkeyed` is only for `hash` masks".into(),
                Some("remove it".into()),
            ));
        }
        if m.workflow.as_deref() == Some("") {
            problems.push(p(
                "`workflow` is empty".into(),
                Some("name the workflow whose node this is, or remove `workflow` to mask the node in every workflow".into()),
            ));
        }
        let condition = match m.condition {
            None => Ok(None),
            Some(raw_cond) => self.condition(raw_cond, &label).map(Some),
        };
        let field_path = field_path.map_err(|e| problems.push(e)).ok();
        let mask = mask.map_err(|e| problems.push(e)).ok();
        let condition = condition.map_err(|mut e| problems.append(&mut e)).ok();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(MaskingRule {
            resource_id: m.resource_id,
            workflow: m.workflow,
            field_path: field_path.expect("checked"),
            mask: mask.expect("checked"),
            condition: condition.expect("checked"),
            loc,
            index,
        })
    }

    /// `{"type", "value"}`, or `{"type": "and"|"or"|"not", "conditions": [...]}`.
    fn condition(&self, raw: &RawValue, rule: &str) -> Parsed<Condition> {
        let loc = self.loc(raw);
        let p = |message: String, hint: Option<String>| {
            vec![Problem::new(loc.clone(), Some(rule), message).with_hint(hint)]
        };
        let (map, ty) = condition_fields(raw, &p)?;
        let value = map.get("value").copied();
        let need_value = || -> Parsed<&RawValue> {
            value.ok_or_else(|| p(format!("a `{ty}` condition needs a `value`"), None))
        };
        match ty.as_str() {
            "and" | "or" | "not" => {
                self.condition_list(&ty, map.get("conditions").copied(), value, rule, &p)
            }
            "attribute_expression" => Ok(Condition::Attr(self.attr_expr(need_value()?, rule)?)),
            "time_of_day" => time_of_day_condition(json(need_value()?), &p),
            "day_of_week" => day_of_week_condition(json(need_value()?), &p),
            "department_hierarchy" => department_condition(json(need_value()?), &p),
            "security_clearance" => clearance_condition(json(need_value()?), &p),
            "geographic_region" => region_condition(json(need_value()?), &p),
            "ip_range" => ip_range_condition(json(need_value()?), &p),
            "custom" => Err(p(
                "`custom` conditions are not supported: Trellis cannot compile arbitrary code to Cedar".into(),
                Some("express it with `attribute_expression`, or write a native `.cedar` policy".into()),
            )),
            other => Err(p(
                format!("unknown condition `{other}`"),
                Some(match suggest(other, CONDITION_TYPES) {
                    Some(s) => s,
                    None => format!("a condition type is one of `{}`", CONDITION_TYPES.join("`, `")),
                }),
            )),
        }
    }

    /// An `and` / `or` / `not` condition: its `conditions` (or `value.conditions`), each parsed.
    fn condition_list(
        &self,
        ty: &str,
        conditions: Option<&RawValue>,
        value: Option<&RawValue>,
        rule: &str,
        p: &impl Fn(String, Option<String>) -> Vec<Problem>,
    ) -> Parsed<Condition> {
        let list = match (conditions, value) {
            (Some(list), _) => list,
            // Also accept `{"type": "and", "value": {"conditions": [...]}}`.
            (None, Some(v)) => {
                let inner: std::collections::BTreeMap<String, &RawValue> =
                    serde_json::from_str(v.get()).map_err(|_| {
                        p(
                            format!("`{ty}` needs `conditions`: a list of conditions"),
                            None,
                        )
                    })?;
                *inner.get("conditions").ok_or_else(|| {
                    p(
                        format!("`{ty}` needs `conditions`: a list of conditions"),
                        None,
                    )
                })?
            }
            (None, None) => {
                return Err(p(
                    format!("`{ty}` needs `conditions`: a list of conditions"),
                    None,
                ));
            }
        };
        let items: Vec<&RawValue> = serde_json::from_str(list.get()).map_err(|_| {
            p(
                format!("`{ty}` needs `conditions`: a list of conditions"),
                None,
            )
        })?;
        let mut out = boolean_items(ty, &items, p, |item| self.condition(item, rule))?;
        Ok(match ty {
            "and" => Condition::And(out),
            "or" => Condition::Or(out),
            _ => Condition::Not(Box::new(out.pop().expect("one"))),
        })
    }

    /// A leaf `{"attribute_path", "operator", "value", "case_sensitive"?}` or
    /// `{"operator": "and"|"or"|"not", "conditions": [...]}`.
    fn attr_expr(&self, raw: &RawValue, rule: &str) -> Parsed<AttrExpr> {
        let loc = self.loc(raw);
        let p = |message: String, hint: Option<String>| {
            vec![Problem::new(loc.clone(), Some(rule), message).with_hint(hint)]
        };
        let map: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
            .map_err(|_| p("an attribute expression must be an object".into(), None))?;
        let operator: String = match map.get("operator") {
            Some(o) => serde_json::from_str(o.get())
                .map_err(|_| p("`operator` must be a string".into(), None))?,
            None => {
                return Err(p(
                    "an attribute expression needs an `operator`".into(),
                    None,
                ));
            }
        };
        if matches!(operator.as_str(), "and" | "or" | "not") {
            return self.attr_list(&operator, &map, rule, &p);
        }
        attr_leaf(&operator, &map, &p).map(AttrExpr::Leaf)
    }

    /// An `and` / `or` / `not` attribute expression: its `conditions`, each parsed.
    fn attr_list(
        &self,
        operator: &str,
        map: &std::collections::BTreeMap<String, &RawValue>,
        rule: &str,
        p: &impl Fn(String, Option<String>) -> Vec<Problem>,
    ) -> Parsed<AttrExpr> {
        for key in map.keys() {
            if !matches!(key.as_str(), "operator" | "conditions") {
                return Err(p(
                    format!("unknown field `{key}` in an `{operator}` expression"),
                    suggest(key, &["operator", "conditions"]),
                ));
            }
        }
        let items: Vec<&RawValue> = match map.get("conditions") {
            Some(list) => serde_json::from_str(list.get())
                .map_err(|_| p(format!("`{operator}` needs `conditions`: a list"), None))?,
            None => return Err(p(format!("`{operator}` needs `conditions`: a list"), None)),
        };
        let mut out = boolean_items(operator, &items, p, |item| self.attr_expr(item, rule))?;
        Ok(match operator {
            "and" => AttrExpr::And(out),
            "or" => AttrExpr::Or(out),
            _ => AttrExpr::Not(Box::new(out.pop().expect("one"))),
        })
    }
}

/// Checks that a rule's permission is one `rt` knows, is asked for, and (`admin`) is asked for
/// on the workflow it names.
fn check_permission(
    rt: ResourceType,
    r: &RawRule,
    p: &impl Fn(String, Option<String>) -> Problem,
    problems: &mut Vec<Problem>,
) {
    if !rt.permissions().contains(&r.permission.as_str()) {
        let list = rt.permissions().join("`, `");
        problems.push(p(
            format!("unknown {rt} permission `{}`", r.permission),
            Some(
                suggest(&r.permission, rt.permissions())
                    .unwrap_or_else(|| format!("a {rt} permission is one of `{list}`")),
            ),
        ));
    }
    if let Some(why) = unchecked(rt, &r.permission) {
        problems.push(p(
            format!("`{}` is never asked for on a {rt}: {why}", r.permission),
            Some("remove the rule".into()),
        ));
    }
    if rt == ResourceType::Workflow && r.permission == "admin" && r.resource_id != ADMIN_WORKFLOW {
        problems.push(p(
            format!(
                "`admin` is checked only on workflow `{ADMIN_WORKFLOW}` (the admin endpoints), never on `{}`",
                r.resource_id
            ),
            Some(format!("write `\"resource_id\": \"{ADMIN_WORKFLOW}\"` to grant the admin endpoints")),
        ));
    }
}

/// Checks a rule's `workflow`: not empty, and only on a node rule.
fn check_rule_workflow(
    resource_type: Option<ResourceType>,
    workflow: Option<&str>,
    p: &impl Fn(String, Option<String>) -> Problem,
    problems: &mut Vec<Problem>,
) {
    if let Some(w) = workflow {
        if w.is_empty() {
            problems.push(p(
                "`workflow` is empty".into(),
                Some("name the workflow whose node this is, or remove `workflow` to name the node in every workflow".into()),
            ));
        } else if resource_type == Some(ResourceType::Workflow) {
            problems.push(p(
                "`workflow` scopes a node rule; a workflow rule names its workflow in `resource_id`".into(),
                Some("remove `workflow`".into()),
            ));
        }
    }
}

/// A rule's `effect`, or `None` with the problem noted.
fn rule_effect(
    effect: &str,
    p: &impl Fn(String, Option<String>) -> Problem,
    problems: &mut Vec<Problem>,
) -> Option<Effect> {
    match effect {
        "allow" => Some(Effect::Allow),
        "deny" => Some(Effect::Deny),
        other => {
            problems.push(p(
                format!("unknown effect `{other}`"),
                Some(
                    suggest(other, &["allow", "deny"])
                        .unwrap_or_else(|| "use `allow` or `deny`".into()),
                ),
            ));
            None
        }
    }
}

/// A rule's `expires_at` as a time (`None`: not given, or not a time, with the problem noted).
fn rule_expiry(
    expires_at: Option<&str>,
    p: &impl Fn(String, Option<String>) -> Problem,
    problems: &mut Vec<Problem>,
) -> Option<jiff::Timestamp> {
    match expires_at {
        None => None,
        Some(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t),
            Err(_) => {
                problems.push(p(
                    format!("`expires_at` `{s}` is not an RFC 3339 time"),
                    Some("write it like `2026-12-31T23:59:59Z`".into()),
                ));
                None
            }
        },
    }
}

/// A condition's fields by name and its `type`, refusing a field no condition has.
fn condition_fields<'r>(
    raw: &'r RawValue,
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
) -> Parsed<(std::collections::BTreeMap<String, &'r RawValue>, String)> {
    let map: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| {
            p(
                "a condition must be an object `{\"type\": …, \"value\": …}`".into(),
                None,
            )
        })?;
    let ty: String = match map.get("type") {
        Some(t) => serde_json::from_str(t.get())
            .map_err(|_| p("condition `type` must be a string".into(), None))?,
        None => {
            return Err(p(
                "a condition needs a `type`".into(),
                Some(format!("one of `{}`", CONDITION_TYPES.join("`, `"))),
            ));
        }
    };
    for key in map.keys() {
        if !matches!(key.as_str(), "type" | "value" | "conditions") {
            return Err(p(
                format!("unknown field `{key}` in a `{ty}` condition"),
                suggest(key, &["type", "value", "conditions"]),
            ));
        }
    }
    Ok((map, ty))
}

/// A `time_of_day` condition's value: `start` and `end` times.
fn time_of_day_condition(
    v: Value,
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
) -> Parsed<Condition> {
    let get = |key: &str, default: &str| -> Parsed<u32> {
        let s = match v.get(key) {
            None => default.to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(p(
                    format!("`time_of_day` `{key}` must be a string like `08:00`"),
                    None,
                ));
            }
        };
        parse_time(&s).ok_or_else(|| {
            p(
                format!("`time_of_day` `{key}` `{s}` is not a time like `08:00` or `18:30:00`"),
                None,
            )
        })
    };
    unknown_keys(&v, &["start", "end"]).map_or(Ok(()), |k| {
        Err(p(
            format!("unknown field `{k}` in `time_of_day`"),
            suggest(&k, &["start", "end"]),
        ))
    })?;
    Ok(Condition::TimeOfDay {
        start: get("start", "00:00")?,
        end: get("end", "23:59")?,
    })
}

/// A `day_of_week` condition's value: `allowed_days`, day names.
fn day_of_week_condition(
    v: Value,
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
) -> Parsed<Condition> {
    unknown_keys(&v, &["allowed_days"]).map_or(Ok(()), |k| {
        Err(p(
            format!("unknown field `{k}` in `day_of_week`"),
            suggest(&k, &["allowed_days"]),
        ))
    })?;
    let days = string_list(v.get("allowed_days")).ok_or_else(|| {
        p(
            "`day_of_week` needs `allowed_days`: a list of day names".into(),
            None,
        )
    })?;
    let mut out = Vec::new();
    for d in days {
        let lower = d.to_lowercase();
        if !DAYS.contains(&lower.as_str()) {
            return Err(p(
                format!("unknown day `{d}`"),
                suggest(&lower, DAYS).or(Some("days are `monday` … `sunday`".into())),
            ));
        }
        out.push(lower);
    }
    Ok(Condition::DayOfWeek(out))
}

/// A `department_hierarchy` condition's value: `department` and `include_children`.
fn department_condition(
    v: Value,
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
) -> Parsed<Condition> {
    unknown_keys(&v, &["department", "include_children"]).map_or(Ok(()), |k| {
        Err(p(
            format!("unknown field `{k}` in `department_hierarchy`"),
            suggest(&k, &["department", "include_children"]),
        ))
    })?;
    let department = match v.get("department") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(p(
                "`department_hierarchy` needs `department`: a non-empty string".into(),
                None,
            ));
        }
    };
    let include_children = match v.get("include_children") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(p(
                "`include_children` must be `true` or `false`".into(),
                None,
            ));
        }
    };
    Ok(Condition::DepartmentHierarchy {
        department,
        include_children,
    })
}

/// A `security_clearance` condition's value: `minimum_clearance`, a known level.
fn clearance_condition(
    v: Value,
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
) -> Parsed<Condition> {
    unknown_keys(&v, &["minimum_clearance"]).map_or(Ok(()), |k| {
        Err(p(
            format!("unknown field `{k}` in `security_clearance`"),
            suggest(&k, &["minimum_clearance"]),
        ))
    })?;
    let minimum = match v.get("minimum_clearance") {
        None => "public".to_owned(),
        Some(Value::String(s)) if CLEARANCE_LEVELS.contains(&s.as_str()) => s.clone(),
        Some(other) => {
            let s = other.as_str().unwrap_or_default();
            return Err(p(
                format!(
                    "unknown clearance `{}`",
                    other
                        .as_str()
                        .map_or_else(|| other.to_string(), str::to_owned)
                ),
                suggest(s, CLEARANCE_LEVELS)
                    .or(Some(format!("one of `{}`", CLEARANCE_LEVELS.join("`, `")))),
            ));
        }
    };
    Ok(Condition::SecurityClearance { minimum })
}

/// A `geographic_region` condition's value: `allowed_regions`.
fn region_condition(
    v: Value,
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
) -> Parsed<Condition> {
    unknown_keys(&v, &["allowed_regions"]).map_or(Ok(()), |k| {
        Err(p(
            format!("unknown field `{k}` in `geographic_region`"),
            suggest(&k, &["allowed_regions"]),
        ))
    })?;
    let regions = string_list(v.get("allowed_regions")).ok_or_else(|| {
        p(
            "`geographic_region` needs `allowed_regions`: a list of strings".into(),
            None,
        )
    })?;
    Ok(Condition::GeographicRegion(regions))
}

/// An `ip_range` condition's value: `cidrs`, and the `attribute_path` of the address.
fn ip_range_condition(
    v: Value,
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
) -> Parsed<Condition> {
    unknown_keys(&v, &["cidrs", "attribute_path"]).map_or(Ok(()), |k| {
        Err(p(
            format!("unknown field `{k}` in `ip_range`"),
            suggest(&k, &["cidrs", "attribute_path"]),
        ))
    })?;
    let cidrs = string_list(v.get("cidrs")).ok_or_else(|| {
        p(
            "`ip_range` needs `cidrs`: a list like `[\"10.0.0.0/8\"]`".into(),
            None,
        )
    })?;
    for c in &cidrs {
        if !valid_cidr(c) {
            return Err(p(
                format!("`{c}` is not an address range like `10.0.0.0/8`"),
                None,
            ));
        }
    }
    let path = match v.get("attribute_path") {
        None => AttrPath("runtime.ip_address".into()),
        Some(Value::String(s)) => AttrPath::parse(s).map_err(|(m, h)| p(m, h))?,
        Some(_) => return Err(p("`attribute_path` must be a string".into(), None)),
    };
    Ok(Condition::IpRange { path, cidrs })
}

/// A leaf attribute comparison: its fields, operator, path, value and case sensitivity.
fn attr_leaf(
    operator: &str,
    map: &std::collections::BTreeMap<String, &RawValue>,
    p: &impl Fn(String, Option<String>) -> Vec<Problem>,
) -> Parsed<AttrCondition> {
    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "attribute_path" | "operator" | "value" | "case_sensitive"
        ) {
            return Err(p(
                format!("unknown field `{key}` in an attribute condition"),
                suggest(
                    key,
                    &["attribute_path", "operator", "value", "case_sensitive"],
                ),
            ));
        }
    }
    let Some(op) = Operator::parse(operator) else {
        let names: Vec<&str> = Operator::ALL
            .iter()
            .map(|(_, n)| *n)
            .chain(["and", "or", "not"])
            .collect();
        return Err(p(
            format!("unknown operator `{operator}`"),
            Some(
                suggest(operator, &names)
                    .unwrap_or_else(|| format!("an operator is one of `{}`", names.join("`, `"))),
            ),
        ));
    };
    let path: String = match map.get("attribute_path") {
        Some(v) => serde_json::from_str(v.get())
            .map_err(|_| p("`attribute_path` must be a string".into(), None))?,
        None => {
            return Err(p(
                "an attribute condition needs an `attribute_path`".into(),
                None,
            ));
        }
    };
    let path = AttrPath::parse(&path).map_err(|(m, h)| p(m, h))?;
    let value: Value = match map.get("value") {
        Some(v) => json(v),
        None => return Err(p(format!("`{op}` needs a `value`"), None)),
    };
    let case_sensitive = match map.get("case_sensitive") {
        None => true,
        Some(v) => serde_json::from_str::<bool>(v.get())
            .map_err(|_| p("`case_sensitive` must be `true` or `false`".into(), None))?,
    };
    check_value(op, &value).map_err(|(m, h)| p(m, h))?;
    if path.0 == "user.attributes" && !matches!(op, Operator::Contains | Operator::NotContains) {
        return Err(p(
            format!("`user.attributes` is the whole attribute map: `{op}` cannot compare it"),
            Some(
                "use `contains` / `not_contains` with a key (does the user have this attribute?), or name one attribute: `user.attributes.KEY`"
                    .into(),
            ),
        ));
    }
    Ok(AttrCondition {
        path,
        operator: op,
        value,
        case_sensitive,
    })
}

const RULE_FIELDS: &[&str] = &[
    "id",
    "resource_type",
    "resource_id",
    "workflow",
    "permission",
    "effect",
    "priority",
    "user_id",
    "role",
    "tenant_id",
    "expires_at",
    "conditions",
];
const MASK_FIELDS: &[&str] = &[
    "resource_id",
    "workflow",
    "field_path",
    "mask_type",
    "mask_value",
    "params",
    "unkeyed",
    "condition",
];

fn unknown_field_hint(message: &str, fields: &[&str]) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let name = &rest[..rest.find('`')?];
    suggest(name, fields)
}

fn json(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn unknown_keys(v: &Value, known: &[&str]) -> Option<String> {
    v.as_object()?
        .keys()
        .find(|k| !known.contains(&k.as_str()))
        .cloned()
}

/// A list of strings, or one string (Kailash accepts both).
fn string_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// `HH:MM` or `HH:MM:SS` as seconds since midnight.
pub(crate) fn parse_time(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(99)).collect();
    let (h, m, sec) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    (h < 24 && m < 60 && sec < 60).then_some(h * 3600 + m * 60 + sec)
}

fn valid_cidr(s: &str) -> bool {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
    let Ok(addr) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    prefix.is_empty() || prefix.parse::<u8>().is_ok_and(|p| p <= max)
}

/// Rejects rule values that make an operator always false (a mistake, not a policy).
fn check_value(op: Operator, value: &Value) -> Result<(), (String, Option<String>)> {
    let list_needed = matches!(op, Operator::In | Operator::NotIn | Operator::ContainsAny);
    if list_needed && !value.is_array() {
        // "alice,bob" was meant as two items, not one.
        let items = match value.as_str() {
            Some(text) if text.contains(',') => text
                .split(',')
                .map(|item| Value::String(item.trim().to_owned()).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            _ => value.to_string(),
        };
        return Err((
            format!("`{op}` needs a list value, not `{value}`"),
            Some(format!("write `\"value\": [{items}]`")),
        ));
    }
    if op == Operator::Between && value.as_array().is_none_or(|a| a.len() != 2) {
        return Err((
            "`between` needs a list of two bounds, like `[1, 10]`".into(),
            None,
        ));
    }
    let string_needed = matches!(
        op,
        Operator::Matches
            | Operator::HierarchicalMatch
            | Operator::SecurityLevelMeets
            | Operator::SecurityLevelBelow
            | Operator::MatchesDataRegion
    );
    if string_needed && !value.is_string() {
        return Err((format!("`{op}` needs a string value, not `{value}`"), None));
    }
    if op == Operator::Matches
        && let Some(re) = value.as_str()
        && let Err(e) = regex_syntax::Parser::new().parse(re)
    {
        return Err((
            format!(
                "`{re}` is not a valid regular expression: {}",
                e.to_string().lines().last().unwrap_or("")
            ),
            None,
        ));
    }
    Ok(())
}

/// Whether `path` names a `*.rules.json` file.
pub fn is_rules_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".rules.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_bad_rule_with_its_line_and_keeps_the_good_ones() {
        let text = r#"{"rules": [
  {"id": "ok", "resource_type": "node", "resource_id": "n", "permission": "execute", "effect": "allow"},
  {"id": "bad", "resource_type": "node", "resource_id": "n", "permission": "execute", "effect": "allow",
   "conditions": {"type": "departmen_hierarchy", "value": {"department": "x"}}},
  {"id": "bad2", "resource_type": "node", "resource_id": "n", "permission": "exeucte", "effect": "allow"}
]}"#;
        let (file, problems) = parse_rules_file("p/a.rules.json", text);
        assert_eq!(file.rules.len(), 1);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].loc.line, 4);
        assert_eq!(
            problems[0].message,
            "unknown condition `departmen_hierarchy`"
        );
        assert!(
            problems[0]
                .hint
                .as_deref()
                .unwrap()
                .contains("did you mean `department_hierarchy`?")
        );
        assert_eq!(problems[1].loc.line, 5);
        assert!(problems[1].hint.as_deref().unwrap().contains("`execute`"));
    }

    #[test]
    fn custom_conditions_are_rejected() {
        let text = r#"{"rules": [{"id": "c", "resource_type": "node", "resource_id": "n", "permission": "execute",
          "effect": "allow", "conditions": {"type": "custom", "value": {"code": "True"}}}]}"#;
        let (_, problems) = parse_rules_file("c.rules.json", text);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .contains("`custom` conditions are not supported")
        );
    }

    #[test]
    fn misspelt_operator_suggests_the_right_one() {
        let text = r#"{"rules": [{"id": "o", "resource_type": "node", "resource_id": "n", "permission": "execute",
          "effect": "allow", "conditions": {"type": "attribute_expression",
          "value": {"attribute_path": "user.attributes.department", "operator": "hierarchical_mach", "value": "x"}}}]}"#;
        let (_, problems) = parse_rules_file("o.rules.json", text);
        assert_eq!(problems[0].message, "unknown operator `hierarchical_mach`");
        assert!(
            problems[0]
                .hint
                .as_deref()
                .unwrap()
                .contains("`hierarchical_match`")
        );
    }

    #[test]
    fn field_paths_parse_nesting_and_arrays() {
        let p = FieldPath::parse("items[].ssn").unwrap();
        assert_eq!(p.segments.len(), 2);
        assert!(p.segments[0].each);
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("[].x").is_ok());
    }

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("08:00"), Some(8 * 3600));
        assert_eq!(parse_time("23:59:59"), Some(86399));
        assert_eq!(parse_time("24:00"), None);
        assert_eq!(parse_time("8:00"), None);
    }

    mod arbitrary {
        use super::*;
        use proptest::prelude::*;

        /// A JSON value built from the rule format's own keys and condition names, so that the
        /// parser gets past the JSON and into every rule and condition path.
        fn ruleish() -> impl Strategy<Value = Value> {
            let key = prop::sample::select(vec![
                "id",
                "resource_type",
                "resource_id",
                "permission",
                "effect",
                "priority",
                "conditions",
                "condition",
                "type",
                "value",
                "attribute_path",
                "operator",
                "department",
                "include_children",
                "start",
                "end",
                "user_id",
                "role",
                "tenant_id",
                "expires_at",
                "field_path",
                "mask_type",
                "mask_value",
                "params",
                "unkeyed",
                "rules",
                "masking",
                "and",
                "or",
                "not",
            ]);
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                prop::sample::select(vec![
                    "node",
                    "workflow",
                    "execute",
                    "allow",
                    "deny",
                    "equals",
                    "in",
                    "contains",
                    "department_hierarchy",
                    "time_of_day",
                    "and",
                    "or",
                    "not",
                    "between",
                    "attribute_expression",
                    "user.attributes.x",
                    "08:00",
                    "25:99",
                    "redact",
                    "hash",
                    "plugin:",
                    "plugin:x",
                    "a[].b",
                    "[]",
                    "",
                    "custom",
                ])
                .prop_map(Value::from),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(5, 64, 8, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec((key.clone(), inner), 0..8).prop_map(|pairs| {
                        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                    }),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn the_rules_parser_never_panics(rules in prop::collection::vec(ruleish(), 0..4), masks in prop::collection::vec(ruleish(), 0..3)) {
                let text = serde_json::json!({"rules": rules, "masking": masks}).to_string();
                let _ = parse_rules_file("p.rules.json", &text);
            }

            #[test]
            fn the_rules_parser_never_panics_on_any_text(text in any::<String>()) {
                let _ = parse_rules_file("p.rules.json", &text);
            }
        }
    }
}
