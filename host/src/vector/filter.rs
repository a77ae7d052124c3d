//! The structured metadata filter: parsed from JSON, compiled to PostgreSQL with every key and
//! value bound as a parameter, and evaluated in Rust for the embedded SQLite backend.
//!
//! # Grammar
//!
//! A filter is a JSON object; all its entries must hold (`AND`):
//!
//! | entry | meaning |
//! | --- | --- |
//! | `"type": "article"` | `metadata` contains `{"type": "article"}` (JSONB containment, `@>`; a GIN index on `metadata` serves it) |
//! | `"year": {"$eq": 2024}` | the same, spelled as an operator |
//! | `"type": {"$ne": "draft"}` | not `"draft"` (a missing key counts as not equal) |
//! | `"type": {"$in": ["a", "b"]}` | equal to one of the values |
//! | `"year": {"$gt": 2020}` (`$gte`, `$lt`, `$lte`) | a number compared with a number, or a string with a string (byte order); other types never match |
//! | `"author": {"$exists": true}` | the key is present (`false`: absent) |
//! | `"$and": [F, …]`, `"$or": [F, …]` | all / any of the filters |
//!
//! Several operators on one key all apply (`{"year": {"$gte": 2020, "$lt": 2024}}`). Keys are
//! top-level metadata keys; any string is allowed, and it is bound, never spliced. A filter
//! given as a string (the Python SDK takes raw SQL there) is refused with the JSON form to use.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::sql::params::json_kind as kind;

/// Deepest `$and`/`$or` nesting accepted.
const MAX_DEPTH: usize = 16;
/// Most conditions in one filter.
const MAX_CONDITIONS: usize = 1024;

/// A parsed, validated filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    /// `metadata @> object`.
    Contains(Map<String, Value>),
    Ne(String, Value),
    In(String, Vec<Value>),
    Compare(String, Cmp, Value),
    Exists(String, bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Cmp {
    fn sql(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Gte => ">=",
            Cmp::Lt => "<",
            Cmp::Lte => "<=",
        }
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            Cmp::Gt => ord == Ordering::Greater,
            Cmp::Gte => ord != Ordering::Less,
            Cmp::Lt => ord == Ordering::Less,
            Cmp::Lte => ord != Ordering::Greater,
        }
    }
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum FilterError {
    /// A SQL text filter, as the Python SDK accepts.
    #[error("`metadata_filter` must be a JSON object, not SQL text `{sql}`")]
    #[diagnostic(help("write it as JSON: {suggestion}"))]
    SqlText {
        /// What was given.
        sql: String,
        /// The JSON form to use instead.
        suggestion: String,
    },
    /// Something else that is not an object.
    #[error("`metadata_filter` must be a JSON object, not {found}")]
    #[diagnostic(help("e.g. {{\"type\": \"article\", \"year\": {{\"$gte\": 2020}}}}"))]
    NotAnObject {
        /// The JSON kind given.
        found: &'static str,
    },
    /// An operator the grammar does not have.
    #[error("unknown filter operator `{op}` at `{path}`")]
    #[diagnostic(help(
        "use one of `$eq`, `$ne`, `$in`, `$gt`, `$gte`, `$lt`, `$lte`, `$exists`, `$and`, `$or`"
    ))]
    UnknownOperator {
        /// The operator.
        op: String,
        /// Where in the filter.
        path: String,
    },
    /// An operator with the wrong kind of operand.
    #[error("filter operator `{op}` at `{path}` needs {expected}")]
    BadOperand {
        /// The operator.
        op: String,
        /// Where in the filter.
        path: String,
        /// What it needs.
        expected: &'static str,
    },
    /// An empty key, or an empty object of operators.
    #[error("empty {what} at `{path}` in `metadata_filter`")]
    Empty {
        /// What is empty.
        what: &'static str,
        /// Where in the filter.
        path: String,
    },
    /// Too deep or too large.
    #[error(
        "`metadata_filter` is too large: at most {MAX_DEPTH} levels of `$and`/`$or` and {MAX_CONDITIONS} conditions"
    )]
    TooLarge,
}

impl Filter {
    /// Parses and validates a filter. `null` is no filter (`Ok(None)`).
    pub fn from_json(value: &Value) -> Result<Option<Filter>, FilterError> {
        match value {
            Value::Null => Ok(None),
            Value::String(sql) => Err(FilterError::SqlText {
                sql: sql.clone(),
                suggestion: suggest(sql),
            }),
            Value::Object(map) => {
                let mut budget = MAX_CONDITIONS;
                let root = parse_object(map, "$", 0, &mut budget)?;
                Ok(Some(Filter { root }))
            }
            other => Err(FilterError::NotAnObject { found: kind(other) }),
        }
    }

    /// Compiles to a PostgreSQL boolean expression over the JSONB column `column` (a validated,
    /// quoted identifier). Placeholders are numbered from `$first`; the values to bind, in order,
    /// are appended to `args`. Every key and value is a parameter.
    pub fn to_postgres(&self, column: &str, first: usize, args: &mut Vec<Value>) -> String {
        let mut sql = String::new();
        let mut next = first;
        let mut bind = |value: Value, args: &mut Vec<Value>| {
            args.push(value);
            let n = next;
            next += 1;
            n
        };
        pg(&self.root, column, &mut sql, args, &mut bind);
        sql
    }

    /// Whether `metadata` passes the filter, with the same meaning as [`Filter::to_postgres`].
    pub fn matches(&self, metadata: &Value) -> bool {
        eval(&self.root, metadata)
    }
}

/// The JSON form of the common SQL shapes `metadata->>'k' = 'v'`, or a general example.
fn suggest(sql: &str) -> String {
    let simple = (|| {
        let rest = sql.trim().strip_prefix("metadata")?.trim_start();
        let rest = rest.strip_prefix("->>")?.trim_start().strip_prefix('\'')?;
        let (key, rest) = rest.split_once('\'')?;
        let rest = rest.trim_start().strip_prefix('=')?.trim_start();
        let value = rest.strip_prefix('\'')?.strip_suffix('\'')?;
        (!value.contains('\'') && !key.is_empty()).then(|| json!({ key: value }).to_string())
    })();
    simple.unwrap_or_else(|| r#"{"type": "article", "year": {"$gte": 2020}}"#.to_owned())
}

fn parse_object(
    map: &Map<String, Value>,
    path: &str,
    depth: usize,
    budget: &mut usize,
) -> Result<Node, FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError::TooLarge);
    }
    let mut contains = Map::new();
    let mut parts = Vec::new();
    for (key, value) in map {
        *budget = budget.checked_sub(1).ok_or(FilterError::TooLarge)?;
        let here = format!("{path}.{key}");
        match key.as_str() {
            "$and" | "$or" => {
                let items = value.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                    FilterError::BadOperand {
                        op: key.clone(),
                        path: here.clone(),
                        expected: "a non-empty array of filter objects",
                    }
                })?;
                let mut nodes = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{here}[{i}]");
                    let obj = item.as_object().ok_or_else(|| FilterError::BadOperand {
                        op: key.clone(),
                        path: item_path.clone(),
                        expected: "filter objects in its array",
                    })?;
                    nodes.push(parse_object(obj, &item_path, depth + 1, budget)?);
                }
                parts.push(if key == "$and" {
                    Node::And(nodes)
                } else {
                    Node::Or(nodes)
                });
            }
            op if op.starts_with('$') => {
                return Err(FilterError::UnknownOperator {
                    op: op.to_owned(),
                    path: path.to_owned(),
                });
            }
            "" => {
                return Err(FilterError::Empty {
                    what: "key",
                    path: path.to_owned(),
                });
            }
            field => match value {
                Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => {
                    if ops.is_empty() {
                        return Err(FilterError::Empty {
                            what: "operator object",
                            path: here,
                        });
                    }
                    for (op, operand) in ops {
                        *budget = budget.checked_sub(1).ok_or(FilterError::TooLarge)?;
                        parts.push(parse_operator(field, op, operand, &here, &mut contains)?);
                    }
                }
                plain => {
                    contains.insert(field.to_owned(), plain.clone());
                }
            },
        }
    }
    parts.retain(|p| !matches!(p, Node::And(v) if v.is_empty()));
    if !contains.is_empty() {
        parts.insert(0, Node::Contains(contains));
    }
    Ok(match parts.len() {
        1 => parts.pop().expect("one part"),
        _ => Node::And(parts),
    })
}

fn parse_operator(
    field: &str,
    op: &str,
    operand: &Value,
    path: &str,
    contains: &mut Map<String, Value>,
) -> Result<Node, FilterError> {
    let bad = |expected| FilterError::BadOperand {
        op: op.to_owned(),
        path: path.to_owned(),
        expected,
    };
    let cmp = |c| match operand {
        Value::Number(_) | Value::String(_) => {
            Ok(Node::Compare(field.to_owned(), c, operand.clone()))
        }
        _ => Err(bad("a number or a string")),
    };
    match op {
        "$eq" => {
            if contains.contains_key(field) {
                // Two equalities on one key: keep both as separate containments.
                let mut one = Map::new();
                one.insert(field.to_owned(), operand.clone());
                return Ok(Node::Contains(one));
            }
            contains.insert(field.to_owned(), operand.clone());
            Ok(Node::And(Vec::new()))
        }
        "$ne" => Ok(Node::Ne(field.to_owned(), operand.clone())),
        "$in" => match operand {
            Value::Array(values) if !values.is_empty() => {
                Ok(Node::In(field.to_owned(), values.clone()))
            }
            _ => Err(bad("a non-empty array of values")),
        },
        "$gt" => cmp(Cmp::Gt),
        "$gte" => cmp(Cmp::Gte),
        "$lt" => cmp(Cmp::Lt),
        "$lte" => cmp(Cmp::Lte),
        "$exists" => match operand {
            Value::Bool(b) => Ok(Node::Exists(field.to_owned(), *b)),
            _ => Err(bad("`true` or `false`")),
        },
        other => Err(FilterError::UnknownOperator {
            op: other.to_owned(),
            path: path.to_owned(),
        }),
    }
}

fn one_key(field: &str, value: &Value) -> Value {
    let mut m = Map::new();
    m.insert(field.to_owned(), value.clone());
    Value::Object(m)
}

fn pg(
    node: &Node,
    col: &str,
    sql: &mut String,
    args: &mut Vec<Value>,
    bind: &mut impl FnMut(Value, &mut Vec<Value>) -> usize,
) {
    match node {
        Node::And(items) | Node::Or(items) => {
            let joiner = if matches!(node, Node::And(_)) {
                " AND "
            } else {
                " OR "
            };
            sql.push('(');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    sql.push_str(joiner);
                }
                pg(item, col, sql, args, bind);
            }
            if items.is_empty() {
                sql.push_str("TRUE");
            }
            sql.push(')');
        }
        Node::Contains(map) => {
            let n = bind(Value::Object(map.clone()), args);
            let _ = write!(sql, "({col} @> ${n}::jsonb)");
        }
        Node::Ne(field, value) => {
            let n = bind(one_key(field, value), args);
            let _ = write!(sql, "(NOT ({col} @> ${n}::jsonb))");
        }
        Node::In(field, values) => {
            let texts: Vec<Value> = values
                .iter()
                .map(|v| Value::String(one_key(field, v).to_string()))
                .collect();
            let n = bind(Value::Array(texts), args);
            let _ = write!(sql, "({col} @> ANY(CAST(${n}::text[] AS jsonb[])))");
        }
        Node::Compare(field, cmp, value) => {
            let k = bind(Value::String(field.clone()), args);
            let v = bind(value.clone(), args);
            let op = cmp.sql();
            if value.is_number() {
                let _ = write!(
                    sql,
                    "(CASE WHEN jsonb_typeof({col} -> ${k}::text) = 'number' THEN ({col} -> ${k}::text)::numeric {op} ${v}::numeric ELSE FALSE END)"
                );
            } else {
                let _ = write!(
                    sql,
                    "(CASE WHEN jsonb_typeof({col} -> ${k}::text) = 'string' THEN ({col} ->> ${k}::text) COLLATE \"C\" {op} ${v}::text COLLATE \"C\" ELSE FALSE END)"
                );
            }
        }
        Node::Exists(field, present) => {
            let k = bind(Value::String(field.clone()), args);
            let is = if *present { "IS NOT NULL" } else { "IS NULL" };
            let _ = write!(sql, "(({col} -> ${k}::text) {is})");
        }
    }
}

fn eval(node: &Node, meta: &Value) -> bool {
    let field = |f: &str| meta.as_object().and_then(|m| m.get(f));
    match node {
        Node::And(items) => items.iter().all(|n| eval(n, meta)),
        Node::Or(items) => items.iter().any(|n| eval(n, meta)),
        Node::Contains(map) => map
            .iter()
            .all(|(k, v)| field(k).is_some_and(|have| contains(have, v))),
        Node::Ne(f, v) => !field(f).is_some_and(|have| contains(have, v)),
        Node::In(f, values) => {
            field(f).is_some_and(|have| values.iter().any(|v| contains(have, v)))
        }
        Node::Compare(f, cmp, want) => match (field(f), want) {
            (Some(Value::Number(have)), Value::Number(want)) => {
                match (have.as_f64(), want.as_f64()) {
                    (Some(a), Some(b)) => a.partial_cmp(&b).is_some_and(|o| cmp.holds(o)),
                    _ => false,
                }
            }
            (Some(Value::String(have)), Value::String(want)) => {
                cmp.holds(have.as_bytes().cmp(want.as_bytes()))
            }
            _ => false,
        },
        Node::Exists(f, present) => field(f).is_some() == *present,
    }
}

/// JSONB containment below the top level (`@>`): objects contain the keys of the other with
/// contained values; arrays contain every element of the other; scalars are equal (numbers by
/// value, so `1` equals `1.0`).
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            w.iter().all(|wv| h.iter().any(|hv| contains(hv, wv)))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Value) -> Filter {
        Filter::from_json(&v).unwrap().unwrap()
    }

    #[test]
    fn plain_equalities_become_one_bound_containment() {
        let mut args = Vec::new();
        let sql =
            f(json!({"type": "article", "lang": "en"})).to_postgres("\"metadata\"", 3, &mut args);
        assert_eq!(sql, "(\"metadata\" @> $3::jsonb)");
        assert_eq!(args, vec![json!({"type": "article", "lang": "en"})]);
    }

    #[test]
    fn keys_and_values_never_reach_the_sql_text() {
        let evil = "x') OR 1=1; DROP TABLE t; --";
        let filter = f(json!({
            evil: evil,
            "$or": [{evil: {"$gt": evil}}, {evil: {"$exists": true}}, {evil: {"$in": [evil]}}],
            "k": {"$ne": evil, "$lte": 3}
        }));
        let mut args = Vec::new();
        let sql = filter.to_postgres("m", 1, &mut args);
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(!sql.contains("1=1"), "{sql}");
        // Every placeholder number is bound exactly once, in order.
        for n in 1..=args.len() {
            assert!(sql.contains(&format!("${n}:")), "${n} missing in {sql}");
        }
    }

    #[test]
    fn sql_text_is_refused_with_the_json_form() {
        let err = Filter::from_json(&json!("metadata->>'type' = 'article'")).unwrap_err();
        assert_eq!(
            crate::diagnostic::plain(&err),
            "`metadata_filter` must be a JSON object, not SQL text `metadata->>'type' = 'article'`\nhelp: write it as JSON: {\"type\":\"article\"}"
        );
        let err = Filter::from_json(&json!("1=1")).unwrap_err();
        assert!(
            crate::diagnostic::plain(&err).contains(r#"{"type": "article""#),
            "{err}"
        );
        assert!(matches!(
            Filter::from_json(&json!([1])),
            Err(FilterError::NotAnObject { .. })
        ));
    }

    #[test]
    fn bad_operators_and_operands_name_the_place() {
        let err = Filter::from_json(&json!({"a": {"$regex": "x"}})).unwrap_err();
        assert_eq!(
            err,
            FilterError::UnknownOperator {
                op: "$regex".into(),
                path: "$.a".into()
            }
        );
        let err = Filter::from_json(&json!({"$or": [{"a": {"$in": []}}]})).unwrap_err();
        assert!(matches!(err, FilterError::BadOperand { ref path, .. } if path == "$.$or[0].a"));
        assert!(Filter::from_json(&json!({"a": {"$gt": [1]}})).is_err());
        assert!(Filter::from_json(&json!({"a": {"$exists": 1}})).is_err());
        assert!(Filter::from_json(&json!({"$and": []})).is_err());
        assert!(Filter::from_json(&json!({"$nor": []})).is_err());
        let mut deep = json!({"a": 1});
        for _ in 0..20 {
            deep = json!({"$and": [deep]});
        }
        assert_eq!(Filter::from_json(&deep).unwrap_err(), FilterError::TooLarge);
    }

    #[test]
    fn evaluation_follows_jsonb_semantics() {
        let meta = json!({"type": "article", "year": 2021, "tags": ["a", "b"], "name": "Bob"});
        assert!(f(json!({"type": "article"})).matches(&meta));
        assert!(f(json!({"year": 2021.0})).matches(&meta));
        assert!(f(json!({"tags": ["b"]})).matches(&meta));
        assert!(!f(json!({"tags": "b"})).matches(&meta));
        assert!(f(json!({"type": {"$ne": "report"}})).matches(&meta));
        assert!(f(json!({"missing": {"$ne": 1}})).matches(&meta));
        assert!(f(json!({"type": {"$in": ["x", "article"]}})).matches(&meta));
        assert!(f(json!({"year": {"$gt": 2020, "$lte": 2021}})).matches(&meta));
        assert!(!f(json!({"year": {"$lt": 2021}})).matches(&meta));
        assert!(!f(json!({"type": {"$gt": 1}})).matches(&meta));
        assert!(f(json!({"name": {"$lt": "a"}})).matches(&meta)); // byte order: 'B' < 'a'
        assert!(f(json!({"name": {"$exists": true}, "x": {"$exists": false}})).matches(&meta));
        assert!(f(json!({"$or": [{"type": "x"}, {"year": 2021}]})).matches(&meta));
        assert!(!f(json!({"$and": [{"type": "article"}, {"year": 2000}]})).matches(&meta));
        assert!(f(json!({"year": {"$eq": 2021}, "type": "article"})).matches(&meta));
    }

    #[test]
    fn compiled_sql_has_the_expected_shape() {
        let mut args = Vec::new();
        // Keys in sorted order: serde_json keeps insertion order when another crate enables its
        // `preserve_order` feature, and sorts them otherwise; this literal reads the same both ways.
        let sql = f(json!({"$or": [{"a": {"$exists": false}}, {"b": {"$in": [1, 2]}}], "year": {"$gte": 2020}}))
            .to_postgres("m", 1, &mut args);
        assert_eq!(
            sql,
            "((((m -> $1::text) IS NULL) OR (m @> ANY(CAST($2::text[] AS jsonb[])))) AND (CASE WHEN jsonb_typeof(m -> $3::text) = 'number' THEN (m -> $3::text)::numeric >= $4::numeric ELSE FALSE END))"
        );
        assert_eq!(
            args,
            vec![
                json!("a"),
                json!(["{\"b\":1}", "{\"b\":2}"]),
                json!("year"),
                json!(2020)
            ]
        );
    }
}
