//! Values the host computes per request for what Cedar cannot express (regex `matches`, string
//! ordering, comparisons with fractional numbers, `null` or list values), with the Python Kailash
//! SDK's semantics for each operator. The compiled policy reads the result as a boolean context
//! attribute, so the decision still comes from Cedar and `explain` can name the value.

use std::cmp::Ordering;

use serde_json::Value;

use super::rules::{AttrCondition, AttrPath, Operator};

/// The value at `path` in the user view (`{"user_id", …, "attributes"}`) or the runtime data;
/// `None` when missing or `null` (Kailash treats both as missing).
pub fn lookup<'a>(path: &AttrPath, user: &'a Value, runtime: &'a Value) -> Option<&'a Value> {
    let mut current = if path.is_runtime() { runtime } else { user };
    for segment in path.segments() {
        current = current.as_object()?.get(segment)?;
    }
    (!current.is_null()).then_some(current)
}

/// Python's `==` on JSON values: numbers (and booleans, which are ints in Python) by value.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (num(a), num(b)) {
        (Some(x), Some(y)) => return x == y,
        (Some(_), None) | (None, Some(_)) => return false,
        _ => {}
    }
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Python's ordering, or `None` where Python raises `TypeError`.
pub fn py_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (num(a), num(b)) {
        (Some(x), Some(y)) => return x.partial_cmp(&y),
        (Some(_), None) | (None, Some(_)) => return None,
        _ => {}
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                if !py_eq(p, q) {
                    return py_cmp(p, q);
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => None,
    }
}

/// A number as Python sees it (`True` is 1).
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

fn lower(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.to_lowercase()),
        other => other.clone(),
    }
}

/// `value in container` for a Python list, tuple or dict (dicts: keys).
fn py_in(item: &Value, container: &Value) -> bool {
    match container {
        Value::Array(items) => items.iter().any(|i| py_eq(i, item)),
        Value::Object(map) => item.as_str().is_some_and(|k| map.contains_key(k)),
        _ => false,
    }
}

/// Evaluates one attribute condition exactly as Kailash's `AttributeEvaluator` does.
pub fn eval_condition(c: &AttrCondition, value: Option<&Value>) -> bool {
    let expected = &c.value;
    let cs = c.case_sensitive;
    let Some(value) = value else {
        // Missing: Kailash passes `None`; only the negations (and `None == None`) hold.
        return match c.operator {
            Operator::NotEquals => !expected.is_null(),
            Operator::NotIn => !expected
                .as_array()
                .is_some_and(|a| a.iter().any(Value::is_null)),
            Operator::NotContains => true,
            Operator::Equals => expected.is_null(),
            Operator::In => expected
                .as_array()
                .is_some_and(|a| a.iter().any(Value::is_null)),
            _ => false,
        };
    };
    match c.operator {
        Operator::Equals => equals(value, expected, cs),
        Operator::NotEquals => !equals(value, expected, cs),
        Operator::Contains => contains(value, expected, cs),
        Operator::NotContains => !contains(value, expected, cs),
        Operator::ContainsAny => contains_any(value, expected, cs),
        Operator::In => is_in(value, expected, cs),
        Operator::NotIn => !is_in(value, expected, cs),
        Operator::GreaterThan => py_cmp(value, expected) == Some(Ordering::Greater),
        Operator::LessThan => py_cmp(value, expected) == Some(Ordering::Less),
        Operator::GreaterOrEqual => matches!(
            py_cmp(value, expected),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        Operator::LessOrEqual => matches!(
            py_cmp(value, expected),
            Some(Ordering::Less | Ordering::Equal)
        ),
        Operator::Matches => match (value.as_str(), expected.as_str()) {
            (Some(v), Some(re)) => python_match(re, v, cs),
            _ => false,
        },
        Operator::HierarchicalMatch => match (value.as_str(), expected.as_str()) {
            (Some(v), Some(e)) => {
                let (v, e) = if cs {
                    (v.to_owned(), e.to_owned())
                } else {
                    (v.to_lowercase(), e.to_lowercase())
                };
                v == e || v.starts_with(&format!("{e}."))
            }
            _ => false,
        },
        Operator::SecurityLevelMeets | Operator::SecurityLevelBelow => {
            match (value.as_str(), expected.as_str()) {
                (Some(v), Some(e)) => {
                    let (v, e) = (
                        super::rules::clearance_level(&v.to_lowercase()),
                        super::rules::clearance_level(&e.to_lowercase()),
                    );
                    if c.operator == Operator::SecurityLevelMeets {
                        v >= e
                    } else {
                        v < e
                    }
                }
                _ => false,
            }
        }
        Operator::MatchesDataRegion => match (value.as_str(), expected.as_str()) {
            (Some(v), Some(e)) => {
                if v.to_lowercase() == "global" {
                    return true;
                }
                let (v, e) = if cs {
                    (v.to_owned(), e.to_owned())
                } else {
                    (v.to_lowercase(), e.to_lowercase())
                };
                v == e || region_family(&v) == region_family(&e)
            }
            _ => false,
        },
        Operator::Between => match expected.as_array().map(Vec::as_slice) {
            Some([lo, hi]) => {
                matches!(py_cmp(lo, value), Some(Ordering::Less | Ordering::Equal))
                    && matches!(py_cmp(value, hi), Some(Ordering::Less | Ordering::Equal))
            }
            _ => false,
        },
    }
}

/// The part before the first `_` (`us_east` → `us`).
pub fn region_family(s: &str) -> &str {
    s.split('_').next().unwrap_or(s)
}

fn equals(value: &Value, expected: &Value, cs: bool) -> bool {
    if !cs && let (Value::String(v), Value::String(e)) = (value, expected) {
        return v.to_lowercase() == e.to_lowercase();
    }
    py_eq(value, expected)
}

fn contains(value: &Value, expected: &Value, cs: bool) -> bool {
    match value {
        Value::Array(_) | Value::Object(_) => py_in(expected, value),
        Value::String(v) => match expected.as_str() {
            Some(e) if cs => v.contains(e),
            Some(e) => v.to_lowercase().contains(&e.to_lowercase()),
            None => false,
        },
        _ => false,
    }
}

fn contains_any(value: &Value, expected: &Value, cs: bool) -> bool {
    let Some(items) = expected.as_array() else {
        return false;
    };
    match value {
        Value::Array(_) => items.iter().any(|i| py_in(i, value)),
        Value::String(v) => {
            let v = if cs { v.clone() } else { v.to_lowercase() };
            items.iter().any(|i| match i.as_str() {
                Some(s) if cs => v.contains(s),
                Some(s) => v.contains(&s.to_lowercase()),
                None => false,
            })
        }
        _ => false,
    }
}

fn is_in(value: &Value, expected: &Value, cs: bool) -> bool {
    let Some(items) = expected.as_array() else {
        return false;
    };
    if !cs && value.is_string() {
        let v = lower(value);
        return items.iter().any(|i| py_eq(&lower(i), &v));
    }
    items.iter().any(|i| py_eq(i, value))
}

/// Python's `re.match`: anchored at the start only.
fn python_match(re: &str, value: &str, cs: bool) -> bool {
    let pattern = format!("^(?:{re})");
    regex::RegexBuilder::new(&pattern)
        .case_insensitive(!cs)
        .build()
        .is_ok_and(|r| r.is_match(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(op: Operator, value: Value, cs: bool) -> AttrCondition {
        AttrCondition {
            path: AttrPath("user.attributes.x".into()),
            operator: op,
            value,
            case_sensitive: cs,
        }
    }

    #[test]
    fn python_comparisons() {
        assert!(py_eq(&json!(1), &json!(1.0)));
        assert!(py_eq(&json!(true), &json!(1)));
        assert!(!py_eq(&json!("1"), &json!(1)));
        assert_eq!(py_cmp(&json!("b"), &json!("a")), Some(Ordering::Greater));
        assert_eq!(py_cmp(&json!("b"), &json!(1)), None);
        assert_eq!(py_cmp(&json!([1, 2]), &json!([1, 3])), Some(Ordering::Less));
    }

    #[test]
    fn missing_attributes_make_negations_true() {
        for op in [Operator::NotEquals, Operator::NotIn, Operator::NotContains] {
            assert!(eval_condition(&cond(op, json!(["a"]), true), None), "{op}");
        }
        for (op, _) in Operator::ALL {
            if !matches!(
                op,
                Operator::NotEquals | Operator::NotIn | Operator::NotContains
            ) {
                assert!(
                    !eval_condition(&cond(op, json!(["a", "b"]), true), None),
                    "{op}"
                );
            }
        }
    }

    #[test]
    fn matches_is_anchored_at_the_start_only() {
        let c = cond(Operator::Matches, json!("ab+"), true);
        assert!(eval_condition(&c, Some(&json!("abbbz"))));
        assert!(!eval_condition(&c, Some(&json!("zab"))));
        let ci = cond(Operator::Matches, json!("ab+"), false);
        assert!(eval_condition(&ci, Some(&json!("ABB"))));
    }
}
