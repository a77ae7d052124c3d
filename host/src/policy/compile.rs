//! Rules → Cedar policy text, and the Cedar schema the compiled policies are validated against.
//!
//! Cedar's types are strict and a JSON attribute may hold anything, so the host projects each
//! attribute a rule reads into typed *slots* (`str:user.attributes.department` holds the value
//! when it is a string, `lstr:…` its lower-case form, `num:…`/`frac:…` a number's floor and
//! whether it has a fraction, and so on). A slot is absent when the value is missing or of
//! another type, and every access is guarded with `has`, so a missing attribute makes a positive
//! comparison false and its negation true, as in Kailash, and no policy can fail with an error.
//! What Cedar cannot express at all (regex, string ordering, fractional bounds) becomes a
//! boolean `d:N` the host computes per request (see [`super::derive`]).
//!
//! Rule order is encoded into the policies: with the slice's rules sorted (priority, then file
//! order) and `H_i` meaning "rule i applies and its condition holds", allow rule i compiles to
//! `permit when { H_i }` and deny rule j to `forbid when { H_j && !H_i for every earlier allow
//! rule i }`. A forbid is satisfied exactly when its rule is the first that holds, and then it
//! overrides every permit (Cedar's forbid-overrides); otherwise a permit is satisfied exactly when
//! some allow holds, and the earliest satisfied permit is the first rule that holds. So Cedar's
//! own decision is Kailash's, and the engine reports the earliest satisfied policy as the
//! deciding one. (Permits carry no guards against earlier denies: forbid-overrides makes them
//! redundant, and every guard is evaluated again on each decision.)

use std::collections::BTreeSet;
use std::fmt::Write as _;

use cedar_policy::RestrictedExpression;
use serde_json::Value;

use super::derive::region_family;
use super::rules::{
    AttrCondition, AttrExpr, AttrPath, Condition, Effect, Operator, PermissionRule, clearance_level,
};

/// The kind of projection a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKind {
    /// The string.
    Str,
    /// The string, lower-case.
    LStr,
    /// A number's floor (booleans are 0 and 1, as in Python).
    Num,
    /// Whether a number has a fractional part.
    Frac,
    /// A list's string members.
    StrSet,
    /// A list's string members, lower-case.
    LStrSet,
    /// A list's whole-number members.
    NumSet,
    /// An object's keys.
    Keys,
    /// A string's clearance level, case-insensitive (unknown: 0).
    Lvl,
    /// A clearance level as the `security_clearance` condition reads it (case-sensitive;
    /// missing or unknown: 0).
    Clv,
    /// A string's region family (before the first `_`).
    Fam,
    /// The lower-case string's region family.
    LFam,
    /// An IP address.
    Ip,
}

const KINDS: &[(SlotKind, &str)] = &[
    (SlotKind::Str, "str"),
    (SlotKind::LStr, "lstr"),
    (SlotKind::Num, "num"),
    (SlotKind::Frac, "frac"),
    (SlotKind::StrSet, "strs"),
    (SlotKind::LStrSet, "lstrs"),
    (SlotKind::NumSet, "nums"),
    (SlotKind::Keys, "keys"),
    (SlotKind::Lvl, "lvl"),
    (SlotKind::Clv, "clv"),
    (SlotKind::Fam, "fam"),
    (SlotKind::LFam, "lfam"),
    (SlotKind::Ip, "ip"),
];

/// A typed projection of one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// The projection.
    pub kind: SlotKind,
    /// The attribute.
    pub path: AttrPath,
}

impl Slot {
    fn new(kind: SlotKind, path: &AttrPath) -> Slot {
        Slot {
            kind,
            path: path.clone(),
        }
    }

    /// `kind:path`, the attribute name in Cedar.
    pub fn name(&self) -> String {
        let prefix = KINDS
            .iter()
            .find(|(k, _)| *k == self.kind)
            .map_or("?", |(_, p)| p);
        format!("{prefix}:{}", self.path)
    }

    /// Parses a `kind:path` attribute name.
    pub fn parse(name: &str) -> Option<Slot> {
        let (prefix, path) = name.split_once(':')?;
        let kind = KINDS.iter().find(|(_, p)| *p == prefix)?.0;
        let path = AttrPath::parse(path).ok()?;
        Some(Slot { kind, path })
    }

    fn cedar_type(&self) -> &'static str {
        match self.kind {
            SlotKind::Str | SlotKind::LStr | SlotKind::Fam | SlotKind::LFam => "String",
            SlotKind::Num | SlotKind::Lvl | SlotKind::Clv => "Long",
            SlotKind::Frac => "Bool",
            SlotKind::StrSet | SlotKind::LStrSet | SlotKind::Keys => "Set<String>",
            SlotKind::NumSet => "Set<Long>",
            SlotKind::Ip => "ipaddr",
        }
    }

    fn holder(&self) -> &'static str {
        if self.path.is_runtime() {
            "context"
        } else {
            "principal"
        }
    }

    fn has(&self) -> String {
        format!("{} has {}", self.holder(), lit(&self.name()))
    }

    fn get(&self) -> String {
        format!("{}[{}]", self.holder(), lit(&self.name()))
    }

    /// The slot's value for attribute value `value` (`None`: missing), or `None` when absent.
    pub fn project(&self, value: Option<&Value>) -> Option<RestrictedExpression> {
        use RestrictedExpression as R;
        if self.kind == SlotKind::Clv {
            let level = value.and_then(Value::as_str).map_or(0, clearance_level);
            return Some(R::new_long(level));
        }
        let value = value?;
        match self.kind {
            SlotKind::Str => value.as_str().map(|s| R::new_string(s.to_owned())),
            SlotKind::LStr => value.as_str().map(|s| R::new_string(s.to_lowercase())),
            SlotKind::Num => number(value).and_then(floor_i64).map(R::new_long),
            SlotKind::Frac => number(value)
                .filter(|f| floor_i64(*f).is_some())
                .map(|f| R::new_bool(f.fract() != 0.0)),
            SlotKind::StrSet | SlotKind::LStrSet => value.as_array().map(|items| {
                R::new_set(items.iter().filter_map(Value::as_str).map(|s| {
                    R::new_string(if self.kind == SlotKind::LStrSet {
                        s.to_lowercase()
                    } else {
                        s.to_owned()
                    })
                }))
            }),
            SlotKind::NumSet => value.as_array().map(|items| {
                R::new_set(
                    items
                        .iter()
                        .filter_map(number)
                        .filter(|f| f.fract() == 0.0)
                        .filter_map(floor_i64)
                        .map(R::new_long),
                )
            }),
            SlotKind::Keys => value
                .as_object()
                .map(|m| R::new_set(m.keys().map(|k| R::new_string(k.clone())))),
            SlotKind::Lvl => value
                .as_str()
                .map(|s| R::new_long(clearance_level(&s.to_lowercase()))),
            SlotKind::Fam => value
                .as_str()
                .map(|s| R::new_string(region_family(s).to_owned())),
            SlotKind::LFam => value
                .as_str()
                .map(|s| R::new_string(region_family(&s.to_lowercase()).to_owned())),
            SlotKind::Ip => value
                .as_str()
                .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
                .map(R::new_ip),
            SlotKind::Clv => None,
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

fn floor_i64(f: f64) -> Option<i64> {
    let f = f.floor();
    (f.is_finite() && (-9.0e15..=9.0e15).contains(&f)).then_some(f as i64)
}

/// A whole number as Python would compare it (`1`, `1.0`, `true`).
fn whole(v: &Value) -> Option<i64> {
    number(v).filter(|f| f.fract() == 0.0).and_then(floor_i64)
}

/// A Cedar string literal.
pub fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Cedar `like` pattern matching `s` literally.
fn like_lit(s: &str) -> String {
    lit(s).replace('*', "\\*")
}

/// A condition leaf the host evaluates per request.
#[derive(Debug, Clone)]
pub struct DerivedLeaf {
    /// `d:N`.
    pub name: String,
    /// The condition, evaluated with [`super::derive::eval_condition`].
    pub condition: AttrCondition,
    /// For `matches`: the pattern, compiled once (anchored at the start, as Python's `re.match`).
    regex: Option<regex::Regex>,
}

impl DerivedLeaf {
    /// The condition's value for attribute value `value` (`None`: missing).
    pub fn eval(&self, value: Option<&Value>) -> bool {
        match (&self.regex, value) {
            (Some(re), Some(Value::String(s))) => re.is_match(s),
            (Some(_), _) => false,
            (None, value) => super::derive::eval_condition(&self.condition, value),
        }
    }
}

/// What a compiled condition needs at request time.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Slots read (user slots live on the principal, runtime slots in the context).
    pub slots: BTreeSet<Slot>,
    /// Derived booleans, by index into the generation's list.
    pub derived: Vec<usize>,
    /// `time_of_day` windows read.
    pub windows: Vec<(u32, u32)>,
    /// Whether `day_of_week` is read.
    pub day: bool,
    /// `expires_at` instants (seconds) read.
    pub expiries: Vec<i64>,
}

impl Needs {
    /// Whether anything depends on the request's runtime data.
    pub fn uses_runtime(&self, derived: &[DerivedLeaf]) -> bool {
        self.slots.iter().any(|s| s.path.is_runtime())
            || self
                .derived
                .iter()
                .any(|&d| derived[d].condition.path.is_runtime())
    }

    /// Adds `other`'s needs.
    pub fn merge(&mut self, other: &Needs) {
        self.slots.extend(other.slots.iter().cloned());
        self.derived.extend(&other.derived);
        self.windows.extend(&other.windows);
        self.day |= other.day;
        self.expiries.extend(&other.expiries);
    }
}

/// The runtime attribute every run sets to its workflow's name.
pub const WORKFLOW_PATH: &str = "runtime.workflow";

/// Compiles conditions, collecting derived leaves for the whole generation.
#[derive(Debug, Default)]
pub struct Compiler {
    /// Every derived leaf, indexed by `d:N`.
    pub derived: Vec<DerivedLeaf>,
    /// Compiled patterns by (pattern, case-sensitive): each compiled once per generation.
    regexes: std::collections::HashMap<(String, bool), regex::Regex>,
    /// Derived leaves by their condition, so that the same condition in many rules is one
    /// `d:N` (one context attribute, one evaluation per request, a smaller schema).
    derived_by_condition: std::collections::HashMap<(AttrPath, Operator, String, bool), usize>,
}

impl Compiler {
    /// `H`: the rule applies to the user, is not expired, and its condition holds.
    pub fn holds(&mut self, rule: &PermissionRule, needs: &mut Needs) -> String {
        let mut parts = Vec::new();
        if let Some(w) = &rule.workflow {
            parts.push(self.in_workflow(w, needs));
        }
        if let Some(user) = &rule.user_id {
            parts.push(format!("principal == Trellis::User::{}", lit(user)));
        }
        if let Some(role) = &rule.role {
            parts.push(format!("principal in Trellis::Role::{}", lit(role)));
        }
        if let Some(tenant) = &rule.tenant_id {
            parts.push(format!("principal.tenant_id == {}", lit(tenant)));
        }
        if let Some(at) = rule.expires_at {
            needs.expiries.push(at.as_second());
            parts.push(format!("context.now < {}", at.as_second()));
        }
        if let Some(c) = &rule.conditions {
            parts.push(self.condition(c, needs));
        }
        if parts.is_empty() {
            "true".to_owned()
        } else {
            parts.join(" && ")
        }
    }

    /// The request is a run of workflow `name`: how a rule or mask that names one workflow's
    /// node is scoped. It reads `runtime.workflow`, which every run sets to its workflow.
    pub fn in_workflow(&mut self, name: &str, needs: &mut Needs) -> String {
        self.leaf(
            &AttrCondition {
                path: AttrPath(WORKFLOW_PATH.to_owned()),
                operator: Operator::Equals,
                value: Value::String(name.to_owned()),
                case_sensitive: true,
            },
            needs,
        )
    }

    /// A condition of any type.
    pub fn condition(&mut self, c: &Condition, needs: &mut Needs) -> String {
        match c {
            Condition::Attr(e) => self.attr(e, needs),
            Condition::And(cs) => group(
                cs.iter().map(|c| self.condition(c, needs)).collect(),
                " && ",
            ),
            Condition::Or(cs) => group(
                cs.iter().map(|c| self.condition(c, needs)).collect(),
                " || ",
            ),
            Condition::Not(c) => format!("!({})", self.condition(c, needs)),
            Condition::TimeOfDay { start, end } => {
                needs.windows.push((*start, *end));
                if start <= end {
                    format!("(context.time_of_day >= {start} && context.time_of_day <= {end})")
                } else {
                    format!("(context.time_of_day >= {start} || context.time_of_day <= {end})")
                }
            }
            Condition::DayOfWeek(days) => {
                needs.day = true;
                format!(
                    "[{}].contains(context.day_of_week)",
                    days.iter().map(|d| lit(d)).collect::<Vec<_>>().join(", ")
                )
            }
            Condition::DepartmentHierarchy {
                department,
                include_children: true,
            } => {
                format!("principal in Trellis::Department::{}", lit(department))
            }
            Condition::DepartmentHierarchy {
                department,
                include_children: false,
            } => {
                let s = Slot::new(
                    SlotKind::Str,
                    &AttrPath("user.attributes.department".into()),
                );
                let out = format!("({} && {} == {})", s.has(), s.get(), lit(department));
                needs.slots.insert(s);
                out
            }
            Condition::SecurityClearance { minimum } => {
                let s = Slot::new(
                    SlotKind::Clv,
                    &AttrPath("user.attributes.security_clearance".into()),
                );
                let out = format!(
                    "(if {} then {} else 0) >= {}",
                    s.has(),
                    s.get(),
                    clearance_level(minimum)
                );
                needs.slots.insert(s);
                out
            }
            Condition::GeographicRegion(regions) => {
                let s = Slot::new(SlotKind::Str, &AttrPath("user.attributes.region".into()));
                let out = if regions.is_empty() {
                    "false".to_owned()
                } else {
                    format!(
                        "({} && {}.contains({}))",
                        s.has(),
                        set_lit(regions.iter().map(|r| lit(r))),
                        s.get()
                    )
                };
                needs.slots.insert(s);
                out
            }
            Condition::IpRange { path, cidrs } => {
                let s = Slot::new(SlotKind::Ip, path);
                let ranges: Vec<String> = cidrs
                    .iter()
                    .map(|c| format!("{}.isInRange(ip({}))", s.get(), lit(c)))
                    .collect();
                let out = format!("({} && {})", s.has(), group(ranges, " || "));
                needs.slots.insert(s);
                out
            }
        }
    }

    fn attr(&mut self, e: &AttrExpr, needs: &mut Needs) -> String {
        match e {
            AttrExpr::Leaf(c) => self.leaf(c, needs),
            AttrExpr::And(es) => group(es.iter().map(|e| self.attr(e, needs)).collect(), " && "),
            AttrExpr::Or(es) => group(es.iter().map(|e| self.attr(e, needs)).collect(), " || "),
            AttrExpr::Not(e) => format!("!({})", self.attr(e, needs)),
        }
    }

    /// One comparison: native Cedar over slots where Cedar can say it, else a derived boolean.
    pub fn leaf(&mut self, c: &AttrCondition, needs: &mut Needs) -> String {
        match native(c) {
            Some((text, slots)) => {
                needs.slots.extend(slots);
                text
            }
            None => {
                // `Value`'s text is injective (`1` and `1.0` differ), so equal keys mean equal
                // conditions; equal conditions written differently merely stay apart.
                let key = (
                    c.path.clone(),
                    c.operator,
                    c.value.to_string(),
                    c.case_sensitive,
                );
                if let Some(&index) = self.derived_by_condition.get(&key) {
                    needs.derived.push(index);
                    return derived_text(&self.derived[index].name);
                }
                let index = self.derived.len();
                self.derived_by_condition.insert(key, index);
                let name = format!("d:{index}");
                let text = derived_text(&name);
                let regex = match (&c.operator, &c.value) {
                    (Operator::Matches, Value::String(re)) => {
                        let key = (re.clone(), c.case_sensitive);
                        match self.regexes.get(&key) {
                            Some(r) => Some(r.clone()),
                            None => {
                                let r = regex::RegexBuilder::new(&format!("^(?:{re})"))
                                    .case_insensitive(!c.case_sensitive)
                                    .build()
                                    .ok();
                                if let Some(r) = &r {
                                    self.regexes.insert(key, r.clone());
                                }
                                r
                            }
                        }
                    }
                    _ => None,
                };
                self.derived.push(DerivedLeaf {
                    name,
                    condition: c.clone(),
                    regex,
                });
                needs.derived.push(index);
                text
            }
        }
    }
}

/// How a policy reads derived boolean `name`.
fn derived_text(name: &str) -> String {
    format!("(context has {n} && context[{n}])", n = lit(name))
}

fn group(parts: Vec<String>, sep: &str) -> String {
    if parts.len() == 1 {
        parts.into_iter().next().expect("one")
    } else {
        format!("({})", parts.join(sep))
    }
}

fn set_lit(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// Collects slot uses while building one leaf's text.
struct Leaf<'a> {
    path: &'a AttrPath,
    slots: Vec<Slot>,
}

impl Leaf<'_> {
    /// `(has s && body(s))` for slot kind `kind`.
    fn guard(&mut self, kind: SlotKind, body: impl FnOnce(&str) -> String) -> String {
        let s = Slot::new(kind, self.path);
        let out = format!("({} && {})", s.has(), body(&s.get()));
        self.slots.push(s);
        out
    }

    /// A number comparison against whole number `n` using the floor and fraction slots.
    fn cmp(&mut self, op: Operator, n: i64) -> String {
        let num = Slot::new(SlotKind::Num, self.path);
        let frac = Slot::new(SlotKind::Frac, self.path);
        let (v, f) = (num.get(), frac.get());
        let body = match op {
            Operator::Equals => format!("{v} == {n} && !{f}"),
            Operator::GreaterThan => format!("({v} > {n} || ({v} == {n} && {f}))"),
            Operator::LessThan => format!("{v} < {n}"),
            Operator::GreaterOrEqual => format!("{v} >= {n}"),
            _ => format!("({v} < {n} || ({v} == {n} && !{f}))"),
        };
        let out = format!("({} && {} && {body})", num.has(), frac.has());
        self.slots.push(num);
        self.slots.push(frac);
        out
    }

    fn between(&mut self, lo: i64, hi: i64) -> String {
        let lower = self.cmp(Operator::GreaterOrEqual, lo);
        let upper = self.cmp(Operator::LessOrEqual, hi);
        format!("({lower} && {upper})")
    }
}

/// The native Cedar text for `c`, or `None` when the host must derive it.
fn native(c: &AttrCondition) -> Option<(String, Vec<Slot>)> {
    let mut l = Leaf {
        path: &c.path,
        slots: Vec::new(),
    };
    let cs = c.case_sensitive;
    let str_kind = if cs { SlotKind::Str } else { SlotKind::LStr };
    let fold = |s: &str| if cs { s.to_owned() } else { s.to_lowercase() };
    let e = &c.value;
    let text = match c.operator {
        Operator::Equals | Operator::NotEquals => {
            let positive = match e {
                Value::String(s) => l.guard(str_kind, |v| format!("{v} == {}", lit(&fold(s)))),
                other => l.cmp(Operator::Equals, whole(other)?),
            };
            negate_if(c.operator == Operator::NotEquals, positive)
        }
        Operator::Contains | Operator::NotContains => {
            let positive = match e {
                Value::String(s) => {
                    let sub = l.guard(str_kind, |v| {
                        format!("{v} like {}", like_lit(&fold(s)).wrap_stars())
                    });
                    let member = l.guard(SlotKind::StrSet, |v| format!("{v}.contains({})", lit(s)));
                    let key = l.guard(SlotKind::Keys, |v| format!("{v}.contains({})", lit(s)));
                    format!("({sub} || {member} || {key})")
                }
                other => {
                    let n = whole(other)?;
                    l.guard(SlotKind::NumSet, |v| format!("{v}.contains({n})"))
                }
            };
            negate_if(c.operator == Operator::NotContains, positive)
        }
        Operator::ContainsAny => contains_any(&mut l, e, cs)?,
        Operator::In | Operator::NotIn => {
            negate_if(c.operator == Operator::NotIn, one_of(&mut l, e, cs)?)
        }
        Operator::GreaterThan
        | Operator::LessThan
        | Operator::GreaterOrEqual
        | Operator::LessOrEqual => l.cmp(c.operator, whole(e).filter(|_| !e.is_boolean())?),
        Operator::Between => {
            let [lo, hi] = e.as_array()?.as_slice() else {
                return None;
            };
            l.between(whole(lo)?, whole(hi)?)
        }
        Operator::Matches => return None,
        Operator::HierarchicalMatch => {
            let s = fold(e.as_str()?);
            l.guard(str_kind, |v| {
                format!(
                    "({v} == {} || {v} like {})",
                    lit(&s),
                    like_lit(&format!("{s}.")).trailing_star()
                )
            })
        }
        Operator::SecurityLevelMeets | Operator::SecurityLevelBelow => {
            let level = clearance_level(&e.as_str()?.to_lowercase());
            let op = if c.operator == Operator::SecurityLevelMeets {
                ">="
            } else {
                "<"
            };
            l.guard(SlotKind::Lvl, |v| format!("{v} {op} {level}"))
        }
        Operator::MatchesDataRegion => {
            let region = fold(e.as_str()?);
            let global = l.guard(SlotKind::LStr, |v| format!("{v} == \"global\""));
            let fam_kind = if cs { SlotKind::Fam } else { SlotKind::LFam };
            let family = l.guard(fam_kind, |v| {
                format!("{v} == {}", lit(region_family(&region)))
            });
            format!("({global} || {family})")
        }
    };
    Some((text, l.slots))
}

/// A list operand's strings and whole numbers (`None`: not a list, or a number that is not
/// whole).
fn strings_and_numbers(e: &Value) -> Option<(Vec<&str>, Vec<i64>)> {
    let items = e.as_array()?;
    let strings = items.iter().filter_map(Value::as_str).collect();
    let numbers = items
        .iter()
        .filter(|i| !i.is_string())
        .map(whole)
        .collect::<Option<_>>()?;
    Some((strings, numbers))
}

/// `contains_any`: whether a string attribute (or set) holds any of the strings, or a number
/// set any of the numbers (`None`: not a list, or a number that is not whole).
fn contains_any(l: &mut Leaf<'_>, e: &Value, cs: bool) -> Option<String> {
    let str_kind = if cs { SlotKind::Str } else { SlotKind::LStr };
    let fold = |s: &str| if cs { s.to_owned() } else { s.to_lowercase() };
    let (strings, numbers) = strings_and_numbers(e)?;
    let mut parts = Vec::new();
    if !strings.is_empty() {
        parts.push(l.guard(SlotKind::StrSet, |v| {
            format!(
                "{v}.containsAny({})",
                set_lit(strings.iter().map(|s| lit(s)))
            )
        }));
        let subs: Vec<String> = strings
            .iter()
            .map(|s| format!("{{V}} like {}", like_lit(&fold(s)).wrap_stars()))
            .collect();
        parts.push(l.guard(str_kind, |v| {
            group(subs.iter().map(|s| s.replace("{V}", v)).collect(), " || ")
        }));
    }
    if !numbers.is_empty() {
        parts.push(l.guard(SlotKind::NumSet, |v| {
            format!(
                "{v}.containsAny({})",
                set_lit(numbers.iter().map(i64::to_string))
            )
        }));
    }
    Some(if parts.is_empty() {
        "false".to_owned()
    } else {
        group(parts, " || ")
    })
}

/// `in` (before `not_in` negates it): whether the attribute is one of the strings or whole
/// numbers (`None`: not a list, or a number that is not whole).
fn one_of(l: &mut Leaf<'_>, e: &Value, cs: bool) -> Option<String> {
    let str_kind = if cs { SlotKind::Str } else { SlotKind::LStr };
    let fold = |s: &str| if cs { s.to_owned() } else { s.to_lowercase() };
    let (strings, numbers) = strings_and_numbers(e)?;
    let strings: Vec<String> = strings.into_iter().map(fold).collect();
    let mut parts = Vec::new();
    if !strings.is_empty() {
        parts.push(l.guard(str_kind, |v| {
            format!("{}.contains({v})", set_lit(strings.iter().map(|s| lit(s))))
        }));
    }
    for n in numbers {
        parts.push(l.cmp(Operator::Equals, n));
    }
    Some(if parts.is_empty() {
        "false".to_owned()
    } else {
        group(parts, " || ")
    })
}

fn negate_if(negate: bool, text: String) -> String {
    if negate { format!("!{text}") } else { text }
}

/// Helpers to put unescaped `*` wildcards around an escaped `like` literal.
trait Stars {
    fn wrap_stars(self) -> String;
    fn trailing_star(self) -> String;
}

impl Stars for String {
    /// `"abc"` → `"*abc*"`.
    fn wrap_stars(self) -> String {
        format!("\"*{}*\"", &self[1..self.len() - 1])
    }
    /// `"abc"` → `"abc*"`.
    fn trailing_star(self) -> String {
        format!("{}*\"", &self[..self.len() - 1])
    }
}

/// The policy texts of rule `rule` at its place in a slice: see [`SliceTexts`].
///
/// `earlier_opposite` holds, for a deny rule, `H` of the earlier allow rules (empty for an allow
/// rule: see the module docs).
pub fn rule_policy(
    rule: &PermissionRule,
    action: &str,
    holds: &str,
    earlier_opposite: &[&str],
) -> SliceTexts {
    let effect = match rule.effect {
        Effect::Allow => "permit",
        Effect::Deny => "forbid",
    };
    let mut when = format!("({holds})");
    for h in earlier_opposite {
        let _ = write!(when, " && !({h})");
    }
    SliceTexts::new(
        &rule.id,
        &rule.loc.to_string(),
        effect,
        action,
        &format!(
            "{}::{}",
            rule.resource_type.cedar_type(),
            lit(&rule.resource_id)
        ),
        &when,
    )
}

/// A compiled policy of one slice, twice.
///
/// `shown` names the slice's action and resource in its scope, so it stands alone: it is what
/// `trellis policy compile` prints. `evaluated` leaves the scope open and is what the engine
/// parses, validates and evaluates: a slice is only ever evaluated for requests with its own
/// action and resource, so the scope would always hold, and Cedar rebuilds and compares a
/// policy's scope on every evaluation (about a sixth of a decision with 10,000 policies). The
/// schema gives every action the same principal and context types, so strict validation checks
/// the condition exactly as it would with the scope.
#[derive(Debug, Clone)]
pub struct SliceTexts {
    /// With the scope, for people.
    pub shown: String,
    /// Without it, for the engine.
    pub evaluated: String,
}

impl SliceTexts {
    /// The texts of policy `id` (`comment`: where it was written) under `action` on `resource`
    /// (a Cedar entity uid, e.g. `Trellis::Node::"n1"`).
    pub fn new(
        id: &str,
        comment: &str,
        effect: &str,
        action: &str,
        resource: &str,
        when: &str,
    ) -> SliceTexts {
        let head = format!("@id({})\n// {comment}\n{effect} (", lit(id));
        SliceTexts {
            shown: format!(
                "{head}\n  principal,\n  action == Trellis::Action::{action},\n  resource == {resource}\n)\nwhen {{ {when} }};\n",
                action = lit(action),
            ),
            evaluated: format!("{head}principal, action, resource)\nwhen {{ {when} }};\n"),
        }
    }
}

/// The Cedar action id of a rule's permission, e.g. `node:execute`.
pub fn action_id(resource_type: super::rules::ResourceType, permission: &str) -> String {
    qualified(resource_type.as_str(), permission)
}

/// `kind:id`, the form of an action's or a resource's id, in one allocation. `format!` writes
/// each piece through a `fmt::Formatter` (about 700 instructions for such an id, against about
/// 100), and a run makes two of them per decision.
pub(crate) fn qualified(kind: &str, id: &str) -> String {
    let mut out = String::with_capacity(kind.len() + 1 + id.len());
    out.push_str(kind);
    out.push(':');
    out.push_str(id);
    out
}

/// The action masking conditions are evaluated under.
pub const MASK_ACTION: &str = "mask";

/// What a database decision's context holds besides the request context: who asks, from where.
/// The host sets each from the run (`runtime.plugin`, … for rules).
pub const DATABASE_CONTEXT: &str =
    "plugin: String, plugin_version: String, node: String, workflow: String";

/// The keys of [`DATABASE_CONTEXT`].
pub const DATABASE_CONTEXT_KEYS: [&str; 4] = ["plugin", "plugin_version", "node", "workflow"];

/// The generated schema: the fixed vocabulary plus the slots and derived booleans in use.
pub fn schema_text(
    user_slots: &BTreeSet<Slot>,
    context_slots: &BTreeSet<Slot>,
    derived: &[DerivedLeaf],
) -> String {
    let mut user = String::from("user_id: String, tenant_id: String, email: String");
    for s in user_slots {
        let _ = write!(user, ",\n    {}?: {}", lit(&s.name()), s.cedar_type());
    }
    let mut ctx = String::from("now: Long, time_of_day: Long, day_of_week: String");
    for s in context_slots {
        let _ = write!(ctx, ",\n    {}?: {}", lit(&s.name()), s.cedar_type());
    }
    for d in derived {
        let _ = write!(ctx, ",\n    {}?: Bool", lit(&d.name));
    }
    // Only actions the host asks for: a native policy naming another does not validate.
    let node: Vec<String> = super::rules::checked_permissions(super::rules::ResourceType::Node)
        .map(|p| lit(&format!("node:{p}")))
        .collect();
    let workflow: Vec<String> =
        super::rules::checked_permissions(super::rules::ResourceType::Workflow)
            .map(|p| lit(&format!("workflow:{p}")))
            .collect();
    let database: Vec<String> =
        super::rules::checked_permissions(super::rules::ResourceType::Database)
            .map(|p| lit(&format!("database:{p}")))
            .collect();
    format!(
        "// Generated by trellis from the policy directory's rules.\nnamespace Trellis {{\n  entity Role;\n  entity Department in [Department];\n  entity User in [Role, Department] = {{\n    {user}\n  }};\n  entity Node;\n  entity Workflow;\n  entity Database;\n  type RequestContext = {{\n    {ctx}\n  }};\n  type DatabaseContext = {{\n    {DATABASE_CONTEXT},\n    {ctx}\n  }};\n  action {node}, {mask} appliesTo {{ principal: [User], resource: [Node], context: RequestContext }};\n  action {workflow} appliesTo {{ principal: [User], resource: [Workflow], context: RequestContext }};\n  action {database} appliesTo {{ principal: [User], resource: [Database], context: DatabaseContext }};\n}}\n",
        node = node.join(", "),
        mask = lit(MASK_ACTION),
        workflow = workflow.join(", "),
        database = database.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leaf(op: Operator, value: Value, cs: bool) -> AttrCondition {
        AttrCondition {
            path: AttrPath("user.attributes.x".into()),
            operator: op,
            value,
            case_sensitive: cs,
        }
    }

    #[test]
    fn like_patterns_escape_stars_in_values() {
        let (text, _) = native(&leaf(Operator::Contains, json!("a*b"), true)).unwrap();
        assert!(text.contains(r#"like "*a\*b*""#), "{text}");
        let (text, _) = native(&leaf(Operator::HierarchicalMatch, json!("fin*"), true)).unwrap();
        assert!(text.contains(r#"like "fin\*.*""#), "{text}");
        let (text, _) = native(&leaf(Operator::ContainsAny, json!(["x*"]), false)).unwrap();
        assert!(text.contains(r#"like "*x\**""#), "{text}");
    }

    #[test]
    fn what_cedar_cannot_say_is_derived() {
        assert!(native(&leaf(Operator::Matches, json!("^a"), true)).is_none());
        assert!(native(&leaf(Operator::GreaterThan, json!("m"), true)).is_none());
        assert!(native(&leaf(Operator::GreaterThan, json!(2.5), true)).is_none());
        assert!(native(&leaf(Operator::Equals, json!(null), true)).is_none());
        assert!(native(&leaf(Operator::GreaterThan, json!(2), true)).is_some());
    }

    #[test]
    fn slot_names_round_trip() {
        let s = Slot::new(SlotKind::LStrSet, &AttrPath("user.attributes.tags".into()));
        assert_eq!(s.name(), "lstrs:user.attributes.tags");
        assert_eq!(Slot::parse(&s.name()), Some(s));
    }
}
