//! Engine-level tests: every operator through Cedar against Kailash's semantics, the guide's
//! examples, rule order, expiry, fail-closed forbids, masking through Cedar, reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::policy::derive::eval_condition;
use crate::policy::rules::{AttrCondition, AttrPath, Operator};

fn generation(files: &[(&str, &str)]) -> PolicyGeneration {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    match PolicyGeneration::from_sources(Path::new("."), &files) {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    }
}

fn engine(files: &[(&str, &str)]) -> PolicyEngine {
    PolicyEngine::new(generation(files), EngineSettings::default())
}

fn user(v: Value) -> PreparedUser {
    PreparedUser::new(serde_json::from_value(v).unwrap())
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn decide(
    e: &PolicyEngine,
    u: &PreparedUser,
    rt: ResourceType,
    id: &str,
    perm: &str,
    now: &str,
) -> Decision {
    e.decide(&AccessRequest {
        user: u,
        resource_type: rt,
        resource_id: id,
        permission: perm,
        now: at(now),
        runtime: &Value::Null,
    })
}

fn node(e: &PolicyEngine, u: &PreparedUser, id: &str) -> bool {
    decide(
        e,
        u,
        ResourceType::Node,
        id,
        "execute",
        "2026-01-05T10:00:00Z",
    )
    .allowed
}

fn rule(id: &str, resource: &str, effect: &str, priority: i64, conditions: Value) -> Value {
    json!({"id": id, "resource_type": "node", "resource_id": resource, "permission": "execute", "effect": effect, "priority": priority, "conditions": conditions})
}

fn leaf(path: &str, op: &str, value: Value, cs: bool) -> Value {
    json!({"type": "attribute_expression", "value": {"attribute_path": path, "operator": op, "value": value, "case_sensitive": cs}})
}

/// (operator, rule value, case_sensitive, attribute value (None: missing), Kailash's answer).
fn operator_cases() -> Vec<(&'static str, Value, bool, Option<Value>, bool)> {
    let m = None;
    vec![
        // equals: positive, negative, missing, type mismatch, case-insensitive, numbers
        (
            "equals",
            json!("finance"),
            true,
            Some(json!("finance")),
            true,
        ),
        (
            "equals",
            json!("finance"),
            true,
            Some(json!("Finance")),
            false,
        ),
        ("equals", json!("finance"), true, m.clone(), false),
        ("equals", json!("5"), true, Some(json!(5)), false),
        (
            "equals",
            json!("finance"),
            false,
            Some(json!("FINANCE")),
            true,
        ),
        ("equals", json!(5), true, Some(json!(5.0)), true),
        ("equals", json!(5), true, Some(json!(5.5)), false),
        ("equals", json!(true), true, Some(json!(true)), true),
        ("equals", json!(true), true, Some(json!(1)), true),
        ("equals", json!(2.5), true, Some(json!(2.5)), true),
        // not_equals
        ("not_equals", json!("hr"), true, Some(json!("hr")), false),
        (
            "not_equals",
            json!("hr"),
            true,
            Some(json!("finance")),
            true,
        ),
        ("not_equals", json!("hr"), true, m.clone(), true),
        ("not_equals", json!(true), true, Some(json!("true")), true),
        ("not_equals", json!("hr"), false, Some(json!("HR")), false),
        // contains: strings, lists, objects
        (
            "contains",
            json!("ana"),
            true,
            Some(json!("finance.analysis")),
            true,
        ),
        (
            "contains",
            json!("xyz"),
            true,
            Some(json!("finance.analysis")),
            false,
        ),
        ("contains", json!("ana"), true, m.clone(), false),
        ("contains", json!("ana"), true, Some(json!(42)), false),
        (
            "contains",
            json!("ANA"),
            false,
            Some(json!("finance.analysis")),
            true,
        ),
        (
            "contains",
            json!("ANA"),
            true,
            Some(json!("finance.analysis")),
            false,
        ),
        (
            "contains",
            json!("admin"),
            true,
            Some(json!(["admin", "dev"])),
            true,
        ),
        (
            "contains",
            json!("ADMIN"),
            false,
            Some(json!(["admin", "dev"])),
            false,
        ),
        ("contains", json!(3), true, Some(json!([1, 2, 3])), true),
        ("contains", json!("k"), true, Some(json!({"k": 1})), true),
        ("contains", json!("a*b"), true, Some(json!("xa*by")), true),
        ("contains", json!("a*b"), true, Some(json!("xacby")), false),
        // not_contains
        (
            "not_contains",
            json!("ana"),
            true,
            Some(json!("finance.analysis")),
            false,
        ),
        (
            "not_contains",
            json!("xyz"),
            true,
            Some(json!("finance")),
            true,
        ),
        ("not_contains", json!("ana"), true, m.clone(), true),
        ("not_contains", json!("ana"), true, Some(json!(7)), true),
        (
            "not_contains",
            json!("ANA"),
            false,
            Some(json!("analysis")),
            false,
        ),
        // contains_any
        (
            "contains_any",
            json!(["x", "dev"]),
            true,
            Some(json!(["admin", "dev"])),
            true,
        ),
        (
            "contains_any",
            json!(["x", "y"]),
            true,
            Some(json!(["admin", "dev"])),
            false,
        ),
        ("contains_any", json!(["x"]), true, m.clone(), false),
        ("contains_any", json!(["x"]), true, Some(json!(3)), false),
        (
            "contains_any",
            json!(["FIN", "zz"]),
            false,
            Some(json!("finance")),
            true,
        ),
        (
            "contains_any",
            json!(["FIN"]),
            true,
            Some(json!("finance")),
            false,
        ),
        (
            "contains_any",
            json!([2, 9]),
            true,
            Some(json!([1, 2])),
            true,
        ),
        // in
        (
            "in",
            json!(["secret", "top_secret"]),
            true,
            Some(json!("secret")),
            true,
        ),
        (
            "in",
            json!(["secret", "top_secret"]),
            true,
            Some(json!("public")),
            false,
        ),
        ("in", json!(["secret"]), true, m.clone(), false),
        ("in", json!(["1"]), true, Some(json!(1)), false),
        ("in", json!(["SECRET"]), false, Some(json!("Secret")), true),
        ("in", json!(["SECRET"]), true, Some(json!("Secret")), false),
        ("in", json!([1, 2]), true, Some(json!(2.0)), true),
        // not_in
        ("not_in", json!(["a", "b"]), true, Some(json!("a")), false),
        ("not_in", json!(["a", "b"]), true, Some(json!("c")), true),
        ("not_in", json!(["a"]), true, m.clone(), true),
        ("not_in", json!(["a"]), true, Some(json!(["a"])), true),
        ("not_in", json!(["A"]), false, Some(json!("a")), false),
        // greater_than / less_than / greater_or_equal / less_or_equal
        ("greater_than", json!(5), true, Some(json!(8)), true),
        ("greater_than", json!(5), true, Some(json!(5)), false),
        ("greater_than", json!(5), true, Some(json!(5.5)), true),
        ("greater_than", json!(5), true, m.clone(), false),
        ("greater_than", json!(5), true, Some(json!("8")), false),
        ("greater_than", json!("m"), true, Some(json!("z")), true),
        ("greater_than", json!("m"), false, Some(json!("a")), false),
        ("greater_than", json!(2.5), true, Some(json!(3)), true),
        ("less_than", json!(5), true, Some(json!(4.9)), true),
        ("less_than", json!(5), true, Some(json!(5)), false),
        ("less_than", json!(5), true, m.clone(), false),
        ("less_than", json!(5), true, Some(json!([1])), false),
        ("less_than", json!("m"), false, Some(json!("B")), true),
        ("greater_or_equal", json!(5), true, Some(json!(5)), true),
        ("greater_or_equal", json!(5), true, Some(json!(4.99)), false),
        ("greater_or_equal", json!(5), true, m.clone(), false),
        ("greater_or_equal", json!(5), true, Some(json!("5")), false),
        (
            "greater_or_equal",
            json!("b"),
            false,
            Some(json!("b")),
            true,
        ),
        ("less_or_equal", json!(5), true, Some(json!(5)), true),
        ("less_or_equal", json!(5), true, Some(json!(5.01)), false),
        ("less_or_equal", json!(5), true, m.clone(), false),
        ("less_or_equal", json!(5), true, Some(json!(null)), false),
        ("less_or_equal", json!("b"), true, Some(json!("a")), true),
        // matches (Python re.match: anchored at the start)
        (
            "matches",
            json!("emp[0-9]+"),
            true,
            Some(json!("emp123")),
            true,
        ),
        (
            "matches",
            json!("emp[0-9]+"),
            true,
            Some(json!("xemp123")),
            false,
        ),
        ("matches", json!("emp"), true, m.clone(), false),
        ("matches", json!("1"), true, Some(json!(1)), false),
        ("matches", json!("EMP"), false, Some(json!("emp1")), true),
        ("matches", json!("EMP"), true, Some(json!("emp1")), false),
        // hierarchical_match
        (
            "hierarchical_match",
            json!("engineering"),
            true,
            Some(json!("engineering.backend.api")),
            true,
        ),
        (
            "hierarchical_match",
            json!("engineering"),
            true,
            Some(json!("engineering")),
            true,
        ),
        (
            "hierarchical_match",
            json!("engineering"),
            true,
            Some(json!("engineeringx")),
            false,
        ),
        (
            "hierarchical_match",
            json!("engineering"),
            true,
            m.clone(),
            false,
        ),
        (
            "hierarchical_match",
            json!("engineering"),
            true,
            Some(json!(["engineering"])),
            false,
        ),
        (
            "hierarchical_match",
            json!("Engineering"),
            false,
            Some(json!("engineering.api")),
            true,
        ),
        (
            "hierarchical_match",
            json!("Engineering"),
            true,
            Some(json!("engineering.api")),
            false,
        ),
        // security_level_meets / below (case-insensitive always; unknown = public)
        (
            "security_level_meets",
            json!("confidential"),
            true,
            Some(json!("secret")),
            true,
        ),
        (
            "security_level_meets",
            json!("secret"),
            true,
            Some(json!("internal")),
            false,
        ),
        (
            "security_level_meets",
            json!("public"),
            true,
            m.clone(),
            false,
        ),
        (
            "security_level_meets",
            json!("public"),
            true,
            Some(json!(3)),
            false,
        ),
        (
            "security_level_meets",
            json!("secret"),
            true,
            Some(json!("SECRET")),
            true,
        ),
        (
            "security_level_meets",
            json!("public"),
            true,
            Some(json!("bogus")),
            true,
        ),
        (
            "security_level_below",
            json!("secret"),
            true,
            Some(json!("internal")),
            true,
        ),
        (
            "security_level_below",
            json!("secret"),
            true,
            Some(json!("top_secret")),
            false,
        ),
        (
            "security_level_below",
            json!("secret"),
            true,
            m.clone(),
            false,
        ),
        (
            "security_level_below",
            json!("secret"),
            true,
            Some(json!(true)),
            false,
        ),
        (
            "security_level_below",
            json!("SECRET"),
            false,
            Some(json!("Confidential")),
            true,
        ),
        // matches_data_region
        (
            "matches_data_region",
            json!("us_east"),
            true,
            Some(json!("us_west")),
            true,
        ),
        (
            "matches_data_region",
            json!("us_east"),
            true,
            Some(json!("eu_west")),
            false,
        ),
        (
            "matches_data_region",
            json!("us_east"),
            true,
            Some(json!("GLOBAL")),
            true,
        ),
        (
            "matches_data_region",
            json!("us_east"),
            true,
            m.clone(),
            false,
        ),
        (
            "matches_data_region",
            json!("us_east"),
            true,
            Some(json!(1)),
            false,
        ),
        (
            "matches_data_region",
            json!("us_east"),
            true,
            Some(json!("US_west")),
            false,
        ),
        (
            "matches_data_region",
            json!("us_east"),
            false,
            Some(json!("US_west")),
            true,
        ),
        (
            "matches_data_region",
            json!("us"),
            true,
            Some(json!("us")),
            true,
        ),
        // between (inclusive)
        ("between", json!([1, 10]), true, Some(json!(10)), true),
        ("between", json!([1, 10]), true, Some(json!(1)), true),
        ("between", json!([1, 10]), true, Some(json!(10.5)), false),
        ("between", json!([1, 10]), true, Some(json!(0.5)), false),
        ("between", json!([1, 10]), true, m.clone(), false),
        ("between", json!([1, 10]), true, Some(json!("5")), false),
        ("between", json!([1.5, 2.5]), true, Some(json!(2)), true),
        ("between", json!(["a", "c"]), false, Some(json!("b")), true),
    ]
}

#[test]
fn every_operator_matches_kailash_through_cedar() {
    let cases = operator_cases();
    let rules: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (op, value, cs, _, _))| {
            rule(
                &format!("r{i}"),
                &format!("n{i}"),
                "allow",
                0,
                leaf("user.attributes.x", op, value.clone(), *cs),
            )
        })
        .collect();
    let text = json!({ "rules": rules }).to_string();
    let e = engine(&[("ops.rules.json", &text)]);
    let ops: Vec<&str> = cases.iter().map(|c| c.0).collect();
    for (_, name) in Operator::ALL {
        assert!(ops.contains(&name), "no case for `{name}`");
    }
    let mut failures = Vec::new();
    for (i, (op, value, cs, attr, expected)) in cases.iter().enumerate() {
        let attrs = match attr {
            Some(v) => json!({ "x": v }),
            None => json!({}),
        };
        let u = user(json!({"user_id": format!("u{i}"), "attributes": attrs}));
        let got = node(&e, &u, &format!("n{i}"));
        // The reference evaluator (Kailash's code, in Rust) must agree with the table too.
        let reference = eval_condition(
            &AttrCondition {
                path: AttrPath("user.attributes.x".into()),
                operator: Operator::parse(op).unwrap(),
                value: value.clone(),
                case_sensitive: *cs,
            },
            attr.as_ref().filter(|v| !v.is_null()),
        );
        if got != *expected || reference != *expected {
            failures.push(format!("{op} {value} (case_sensitive={cs}) on {attr:?}: cedar {got}, reference {reference}, kailash {expected}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every operator and rule value against a grid of attribute values: Cedar's decision (native
/// slots or derived values) equals the Kailash reference evaluator's.
#[test]
fn cedar_agrees_with_the_reference_on_a_value_grid() {
    let values = [
        json!("finance"),
        json!("Finance.Ops"),
        json!("us_west"),
        json!("secret"),
        json!(""),
        json!("a*b"),
        json!(0),
        json!(5),
        json!(5.5),
        json!(-3),
        json!(true),
        json!(false),
        json!(null),
        json!(["finance", "x"]),
        json!([5, 1]),
        json!({"finance": 1}),
    ];
    let rule_values: Vec<(&str, Value)> = vec![
        ("equals", json!("finance")),
        ("equals", json!(5)),
        ("equals", json!(true)),
        ("not_equals", json!("finance")),
        ("contains", json!("fin")),
        ("contains", json!(5)),
        ("not_contains", json!("finance")),
        ("contains_any", json!(["fin", 5])),
        ("in", json!(["finance", 5, "secret"])),
        ("not_in", json!(["finance", 0])),
        ("greater_than", json!(0)),
        ("less_than", json!(5)),
        ("greater_or_equal", json!(-3)),
        ("less_or_equal", json!(5)),
        ("greater_than", json!("f")),
        ("matches", json!("fin.*")),
        ("hierarchical_match", json!("finance")),
        ("security_level_meets", json!("secret")),
        ("security_level_below", json!("secret")),
        ("matches_data_region", json!("us_east")),
        ("between", json!([0, 5])),
        ("between", json!([-3.5, 0.5])),
    ];
    let mut rules = Vec::new();
    let mut plan = Vec::new();
    for (op, value) in &rule_values {
        for cs in [true, false] {
            let i = plan.len();
            rules.push(rule(
                &format!("g{i}"),
                &format!("g{i}"),
                "allow",
                0,
                leaf("user.attributes.x", op, value.clone(), cs),
            ));
            plan.push((*op, value.clone(), cs));
        }
    }
    let e = engine(&[("grid.rules.json", &json!({ "rules": rules }).to_string())]);
    let mut failures = Vec::new();
    for (vi, v) in values.iter().chain([&Value::Null]).enumerate() {
        let missing = vi == values.len();
        let attrs = if missing {
            json!({})
        } else {
            json!({ "x": v })
        };
        let u = user(json!({"user_id": "grid", "attributes": attrs}));
        for (i, (op, value, cs)) in plan.iter().enumerate() {
            let got = node(&e, &u, &format!("g{i}"));
            let c = AttrCondition {
                path: AttrPath("user.attributes.x".into()),
                operator: Operator::parse(op).unwrap(),
                value: value.clone(),
                case_sensitive: *cs,
            };
            let want = eval_condition(
                &c,
                if missing || v.is_null() {
                    None
                } else {
                    Some(v)
                },
            );
            if got != want {
                failures.push(format!(
                    "{op} {value} cs={cs} on {}: cedar {got}, kailash {want}",
                    if missing {
                        "missing".into()
                    } else {
                        v.to_string()
                    }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

const GUIDE: &str = include_str!("../../../policies/finance.rules.json");

#[test]
fn guide_department_hierarchy_with_children() {
    let e = engine(&[("finance.rules.json", GUIDE)]);
    let analyst = user(
        json!({"user_id": "fin001", "tenant_id": "acme", "email": "finance.analyst@acme.com", "attributes": {"department": "finance.analysis", "clearance": "confidential"}}),
    );
    assert!(node(&e, &analyst, "financial_query"));
    let head = user(json!({"user_id": "cfo", "attributes": {"department": "finance"}}));
    assert!(node(&e, &head, "financial_query"));
    for dept in ["financex", "engineering.finance", "fin"] {
        let other = user(json!({"user_id": "o", "attributes": {"department": dept}}));
        assert!(!node(&e, &other, "financial_query"), "{dept}");
    }
    let none = user(json!({"user_id": "n"}));
    assert!(!node(&e, &none, "financial_query"));
}

#[test]
fn guide_clearance_department_and_time_window() {
    let e = engine(&[("finance.rules.json", GUIDE)]);
    let ok = user(
        json!({"user_id": "a", "attributes": {"department": "finance.ap", "security_clearance": "secret"}}),
    );
    let low = user(
        json!({"user_id": "b", "attributes": {"department": "finance.ap", "security_clearance": "confidential"}}),
    );
    let eng = user(
        json!({"user_id": "c", "attributes": {"department": "engineering", "security_clearance": "top_secret"}}),
    );
    let d = |u: &PreparedUser, now: &str| {
        decide(&e, u, ResourceType::Node, "sensitive_data", "execute", now).allowed
    };
    assert!(d(&ok, "2026-01-05T08:00:00Z"), "start is inclusive");
    assert!(d(&ok, "2026-01-05T18:00:00Z"), "end is inclusive");
    assert!(!d(&ok, "2026-01-05T18:00:01Z"));
    assert!(!d(&ok, "2026-01-05T07:59:59Z"));
    assert!(!d(&low, "2026-01-05T12:00:00Z"));
    assert!(!d(&eng, "2026-01-05T12:00:00Z"));
}

#[test]
fn time_of_day_reads_the_configured_zone_and_wraps_midnight() {
    let rules = json!({"rules": [rule("night", "batch", "allow", 0, json!({"type": "time_of_day", "value": {"start": "22:00", "end": "02:00"}})),
        rule("weekdays", "desk", "allow", 0, json!({"type": "day_of_week", "value": {"allowed_days": ["Monday", "friday"]}}))]});
    let g = generation(&[("t.rules.json", &rules.to_string())]);
    let berlin = PolicyEngine::new(
        g,
        EngineSettings {
            timezone: jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
            ..EngineSettings::default()
        },
    );
    let e = engine(&[("t.rules.json", &rules.to_string())]);
    let u = user(json!({"user_id": "u"}));
    let d = |e: &PolicyEngine, id: &str, now: &str| {
        decide(e, &u, ResourceType::Node, id, "execute", now).allowed
    };
    assert!(d(&e, "batch", "2026-01-05T23:30:00Z"));
    assert!(d(&e, "batch", "2026-01-05T01:59:00Z"));
    assert!(!d(&e, "batch", "2026-01-05T12:00:00Z"));
    // 21:30 UTC is 22:30 in Berlin (winter).
    assert!(!d(&e, "batch", "2026-01-05T21:30:00Z"));
    assert!(d(&berlin, "batch", "2026-01-05T21:30:00Z"));
    assert!(
        d(&e, "desk", "2026-01-05T12:00:00Z"),
        "2026-01-05 is a Monday"
    );
    assert!(!d(&e, "desk", "2026-01-06T12:00:00Z"));
    // Sunday 23:30 UTC is Monday 00:30 in Berlin.
    assert!(!d(&e, "desk", "2026-01-04T23:30:00Z"));
    assert!(d(&berlin, "desk", "2026-01-04T23:30:00Z"));
}

#[test]
fn nested_conditions_of_every_type() {
    let cond = json!({"type": "or", "conditions": [
        {"type": "and", "conditions": [
            {"type": "department_hierarchy", "value": {"department": "finance", "include_children": false}},
            {"type": "security_clearance", "value": {"minimum_clearance": "confidential"}},
            {"type": "not", "conditions": [{"type": "geographic_region", "value": {"allowed_regions": ["cn"]}}]}
        ]},
        {"type": "ip_range", "value": {"cidrs": ["10.0.0.0/8", "2001:db8::/32"]}}
    ]});
    let e = engine(&[(
        "n.rules.json",
        &json!({"rules": [rule("nested", "n", "allow", 0, cond)]}).to_string(),
    )]);
    let d = |attrs: Value, runtime: Value| {
        let u = user(json!({"user_id": "u", "attributes": attrs}));
        e.decide(&AccessRequest {
            user: &u,
            resource_type: ResourceType::Node,
            resource_id: "n",
            permission: "execute",
            now: at("2026-01-05T10:00:00Z"),
            runtime: &runtime,
        })
        .allowed
    };
    assert!(d(
        json!({"department": "finance", "security_clearance": "secret", "region": "us"}),
        Value::Null
    ));
    assert!(
        !d(
            json!({"department": "finance.ap", "security_clearance": "secret"}),
            Value::Null
        ),
        "no children"
    );
    assert!(!d(
        json!({"department": "finance", "security_clearance": "internal"}),
        Value::Null
    ));
    assert!(!d(
        json!({"department": "finance", "security_clearance": "secret", "region": "cn"}),
        Value::Null
    ));
    assert!(d(json!({}), json!({"ip_address": "10.1.2.3"})));
    assert!(d(json!({}), json!({"ip_address": "2001:db8::1"})));
    assert!(!d(json!({}), json!({"ip_address": "192.168.1.1"})));
    assert!(!d(json!({}), json!({"ip_address": "not an address"})));
}

#[test]
fn priority_then_file_order_and_first_holding_rule_decides() {
    let text = json!({"rules": [
        rule("deny-all", "p", "deny", 0, json!({"type": "attribute_expression", "value": {"attribute_path": "user.user_id", "operator": "equals", "value": "u"}})),
        rule("allow-high", "p", "allow", 10, json!({"type": "attribute_expression", "value": {"attribute_path": "user.user_id", "operator": "equals", "value": "u"}})),
        rule("first-deny", "q", "deny", 5, leaf("user.attributes.x", "equals", json!(1), true)),
        rule("second-allow", "q", "allow", 5, leaf("user.attributes.x", "equals", json!(1), true)),
        rule("first-allow", "r", "allow", 0, leaf("user.attributes.x", "equals", json!(1), true)),
        rule("second-deny", "r", "deny", 0, leaf("user.attributes.x", "equals", json!(1), true)),
        rule("unheld-deny", "s", "deny", 9, leaf("user.attributes.x", "equals", json!(2), true)),
        rule("held-allow", "s", "allow", 1, leaf("user.attributes.x", "equals", json!(1), true)),
    ]});
    let e = engine(&[("o.rules.json", &text.to_string())]);
    let u = user(json!({"user_id": "u", "attributes": {"x": 1}}));
    let d = |id: &str| {
        decide(
            &e,
            &u,
            ResourceType::Node,
            id,
            "execute",
            "2026-01-05T10:00:00Z",
        )
    };
    let p = d("p");
    assert!(
        p.allowed,
        "a priority-10 allow beats a priority-0 deny: {p:?}"
    );
    assert_eq!(p.policies, ["allow-high"]);
    assert_eq!(p.reason, "rule `allow-high` granted access");
    let q = d("q");
    assert!(!q.allowed);
    assert_eq!(q.policies, ["first-deny"]);
    assert_eq!(q.reason, "rule `first-deny` denied access");
    assert!(d("r").allowed, "equal priority: file order");
    assert!(
        d("s").allowed,
        "a rule whose condition does not hold does not decide"
    );
    let none = d("elsewhere");
    assert!(!none.allowed);
    assert_eq!(
        (none.reason.as_str(), none.policies.len()),
        ("no rule granted access", 0)
    );
}

#[test]
fn scoped_rules_apply_only_to_their_user_role_or_tenant() {
    let text = json!({"rules": [
        {"id": "by-user", "resource_type": "workflow", "resource_id": "w", "permission": "view", "effect": "allow", "user_id": "alice"},
        {"id": "by-role", "resource_type": "workflow", "resource_id": "w", "permission": "execute", "effect": "allow", "role": "editor"},
        {"id": "by-tenant", "resource_type": "node", "resource_id": "n", "permission": "execute", "effect": "allow", "tenant_id": "acme"},
    ]});
    let e = engine(&[("s.rules.json", &text.to_string())]);
    let alice = user(json!({"user_id": "alice", "tenant_id": "acme", "roles": ["editor"]}));
    let bob = user(json!({"user_id": "bob", "tenant_id": "other", "roles": ["viewer"]}));
    let d = |u: &PreparedUser, p: &str| {
        decide(
            &e,
            u,
            ResourceType::Workflow,
            "w",
            p,
            "2026-01-05T10:00:00Z",
        )
        .allowed
    };
    let n = |u: &PreparedUser| node(&e, u, "n");
    assert!(d(&alice, "view") && d(&alice, "execute") && n(&alice));
    assert!(!d(&bob, "view") && !d(&bob, "execute") && !n(&bob));
    assert!(!d(&alice, "admin"));
}

#[test]
fn permissions_the_host_never_asks_for_are_refused_at_load() {
    let rules = json!({"rules": [
        {"id": "m", "resource_type": "workflow", "resource_id": "w", "permission": "modify", "effect": "allow"},
        {"id": "s", "resource_type": "workflow", "resource_id": "w", "permission": "share", "effect": "allow"},
        {"id": "d", "resource_type": "workflow", "resource_id": "w", "permission": "delete", "effect": "deny"},
        {"id": "o", "resource_type": "node", "resource_id": "n", "permission": "mask_output", "effect": "allow"},
        {"id": "a", "resource_type": "workflow", "resource_id": "w", "permission": "admin", "effect": "allow"},
        {"id": "ok", "resource_type": "workflow", "resource_id": "trellis:api", "permission": "admin", "effect": "allow"},
    ]});
    let native = "permit (principal, action == Trellis::Action::\"workflow:modify\", resource);";
    let files = vec![
        (PathBuf::from("p.rules.json"), rules.to_string()),
        (PathBuf::from("n.cedar"), native.to_owned()),
    ];
    let err = PolicyGeneration::from_sources(Path::new("."), &files).unwrap_err();
    let text = err.detail();
    for id in ["`m`", "`s`", "`d`", "`o`", "`a`"] {
        assert!(
            text.contains(&format!("rule {id}")),
            "{id} not refused:\n{text}"
        );
    }
    assert!(!text.contains("rule `ok`"), "{text}");
    // The native policy fails strict validation: the action is not in the schema.
    assert!(
        text.contains("n.cedar:1: policy `n.cedar:0`: action `workflow:modify` is never asked for"),
        "{text}"
    );
    assert!(text.contains("fails strict validation"), "{text}");
    assert_eq!(err.problems.len(), 7, "{text}");
}

/// Compiled policies are evaluated without their scope (`compile::SliceTexts`): a rule must
/// still only ever grant its own action on its own resource, never another resource, another
/// permission, a workflow with the node's id, or a resource that has no rules at all; and the
/// printed form keeps the scope.
#[test]
fn compiled_rules_grant_only_their_own_action_and_resource() {
    let text = json!({"rules": [
        {"id": "a-exec", "resource_type": "node", "resource_id": "a", "permission": "execute", "effect": "allow"},
        {"id": "b-deny", "resource_type": "node", "resource_id": "b", "permission": "execute", "effect": "deny"},
        {"id": "b-read", "resource_type": "node", "resource_id": "b", "permission": "read_output", "effect": "allow"},
    ], "masking": [
        {"resource_id": "a", "field_path": "ssn", "mask_type": "redact"}
    ]});
    let e = engine(&[("s.rules.json", &text.to_string())]);
    let u = user(json!({"user_id": "u"}));
    let d = |rt: ResourceType, id: &str, p: &str| {
        decide(&e, &u, rt, id, p, "2026-01-05T10:00:00Z").allowed
    };
    assert!(d(ResourceType::Node, "a", "execute"));
    assert!(!d(ResourceType::Node, "a", "read_output"));
    assert!(!d(ResourceType::Node, "a", "skip"));
    assert!(!d(ResourceType::Workflow, "a", "execute"));
    assert!(!d(ResourceType::Node, "b", "execute"));
    assert!(d(ResourceType::Node, "b", "read_output"));
    assert!(!d(ResourceType::Node, "c", "execute"));
    assert!(!d(ResourceType::Node, "c", "read_output"));

    let now = at("2026-01-05T10:00:00Z");
    let row = json!({"ssn": "1", "name": "x"});
    let masked = e.mask(&u, "a", &row, now, &Value::Null).value;
    assert_eq!(masked, json!({"ssn": "[REDACTED]", "name": "x"}));
    assert_eq!(e.mask(&u, "b", &row, now, &Value::Null).value, row);

    let generation = generation(&[("s.rules.json", &text.to_string())]);
    let shown = generation.cedar_text();
    assert!(
        shown.contains(
            "action == Trellis::Action::\"node:execute\",\n  resource == Trellis::Node::\"a\""
        ),
        "{shown}"
    );
}

#[test]
fn expired_rules_never_apply() {
    let text = json!({"rules": [
        {"id": "temp", "resource_type": "node", "resource_id": "t", "permission": "execute", "effect": "allow", "expires_at": "2026-01-05T12:00:00Z"},
        {"id": "temp-deny", "resource_type": "node", "resource_id": "u", "permission": "execute", "effect": "deny", "priority": 5, "expires_at": "2026-01-05T12:00:00Z"},
        {"id": "base", "resource_type": "node", "resource_id": "u", "permission": "execute", "effect": "allow"},
    ]});
    let e = engine(&[("e.rules.json", &text.to_string())]);
    let u = user(json!({"user_id": "u"}));
    let d = |id: &str, now: &str| decide(&e, &u, ResourceType::Node, id, "execute", now).allowed;
    assert!(d("t", "2026-01-05T11:59:59Z"));
    assert!(!d("t", "2026-01-05T12:00:00Z"));
    assert!(
        !d("u", "2026-01-05T11:00:00Z"),
        "the deny decides while it lasts"
    );
    assert!(d("u", "2026-01-05T12:00:01Z"), "then the allow below it");
}

#[test]
fn a_forbid_over_a_missing_attribute_cannot_fail_open() {
    let native = r#"
@id("no-contractors")
forbid (principal, action, resource)
when { !(principal has "str:user.attributes.employment" && principal["str:user.attributes.employment"] == "staff") };
"#;
    let schema = include_str!("../../../policies/schema.cedarschema").replace(
        "user_id: String,",
        "user_id: String, \"str:user.attributes.employment\"?: String,",
    );
    let rules = json!({"rules": [rule("everyone", "n", "allow", 0, json!({"type": "attribute_expression", "value": {"attribute_path": "user.attributes.employment", "operator": "not_equals", "value": "contractor"}}))]});
    let e = engine(&[
        ("schema.cedarschema", &schema),
        ("guard.cedar", native),
        ("r.rules.json", &rules.to_string()),
    ]);
    let staff = user(json!({"user_id": "s", "attributes": {"employment": "staff"}}));
    let missing = user(json!({"user_id": "m"}));
    let wrong_type = user(json!({"user_id": "w", "attributes": {"employment": 3}}));
    assert!(node(&e, &staff, "n"));
    let d = decide(
        &e,
        &missing,
        ResourceType::Node,
        "n",
        "execute",
        "2026-01-05T10:00:00Z",
    );
    assert!(!d.allowed, "{d:?}");
    assert_eq!(
        d.policies,
        ["no-contractors"],
        "the forbid decided, without an error"
    );
    assert!(d.errors.is_empty());
    assert!(!node(&e, &wrong_type, "n"));
}

#[test]
fn an_erroring_forbid_is_a_deny_with_the_error_recorded() {
    // Validated against a schema that says `level` is always there; the user entity lacks it,
    // so Cedar's evaluation errors and skips the forbid. The engine must still deny.
    let schema = include_str!("../../../policies/schema.cedarschema").replace(
        "user_id: String,",
        "user_id: String, \"num:user.attributes.level\": Long,",
    );
    let native = "@id(\"low-level\")\nforbid (principal, action, resource) when { principal[\"num:user.attributes.level\"] < 3 };\n@id(\"all\")\npermit (principal, action, resource);\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), schema).unwrap();
    std::fs::write(dir.path().join("p.cedar"), native).unwrap();
    let log = dir.path().join("audit.jsonl");
    let e = PolicyEngine::load(dir.path(), EngineSettings::default())
        .unwrap()
        .with_audit(AuditLog::open(&log, 64).unwrap());
    let u = user(json!({"user_id": "x"}));
    let d = decide(
        &e,
        &u,
        ResourceType::Node,
        "n",
        "execute",
        "2026-01-05T10:00:00Z",
    );
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.errors.len(), 1, "{d:?}");
    assert!(
        d.reason.starts_with("denied: policy evaluation failed"),
        "{}",
        d.reason
    );
    let ok = user(json!({"user_id": "y", "attributes": {"level": 5}}));
    assert!(
        decide(
            &e,
            &ok,
            ResourceType::Node,
            "n",
            "execute",
            "2026-01-05T10:00:00Z"
        )
        .allowed
    );
    e.audit().unwrap().flush();
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[0]["user_id"], "x");
    assert_eq!(lines[0]["errors"].as_array().unwrap().len(), 1);
    assert_eq!(lines[1]["policies"], json!(["all"]));
    assert_eq!(e.audit().unwrap().dropped(), 0);
}

#[test]
fn native_policy_ids_come_from_annotations_else_file_and_index() {
    let native = "permit (principal, action == Trellis::Action::\"node:skip\", resource == Trellis::Node::\"n\");\n@id(\"named\")\npermit (principal in Trellis::Role::\"ops\", action, resource);\n";
    let e = engine(&[("a.cedar", native)]);
    let ops = user(json!({"user_id": "o", "roles": ["ops"]}));
    let plain = user(json!({"user_id": "p"}));
    let d = decide(
        &e,
        &plain,
        ResourceType::Node,
        "n",
        "skip",
        "2026-01-05T10:00:00Z",
    );
    assert_eq!(d.policies, ["a.cedar:0"]);
    let d = decide(
        &e,
        &ops,
        ResourceType::Node,
        "other",
        "execute",
        "2026-01-05T10:00:00Z",
    );
    assert_eq!(
        (d.allowed, d.policies.clone()),
        (true, vec!["named".to_owned()])
    );
}

#[test]
fn native_forbid_beats_a_holding_allow_rule() {
    let e = engine(&[
        ("finance.rules.json", GUIDE),
        (
            "g.cedar",
            include_str!("../../../policies/guardrails.cedar"),
        ),
    ]);
    let suspended = user(
        json!({"user_id": "s", "roles": ["suspended"], "attributes": {"department": "finance"}}),
    );
    let d = decide(
        &e,
        &suspended,
        ResourceType::Workflow,
        "finance_report",
        "execute",
        "2026-01-05T10:00:00Z",
    );
    assert!(!d.allowed);
    assert_eq!(d.policies, ["suspended-users"]);
}

#[test]
fn a_native_policy_reading_the_time_is_never_served_stale() {
    let morning = r#"@id("mornings")
permit (principal, action == Trellis::Action::"node:execute", resource == Trellis::Node::"n")
when { context.time_of_day < 43200 };
@id("anywhere-mornings")
permit (principal, action, resource) when { context.time_of_day < 3600 };
"#;
    let e = engine(&[("m.cedar", morning)]);
    let u = user(json!({"user_id": "u"}));
    let at = |id: &str, t: &str| decide(&e, &u, ResourceType::Node, id, "execute", t);
    assert!(at("n", "2026-01-05T10:00:00Z").allowed);
    let again = at("n", "2026-01-05T10:00:00Z");
    assert!(again.allowed && again.cached, "the same second: cached");
    let afternoon = at("n", "2026-01-05T13:00:00Z");
    assert!(!afternoon.allowed && !afternoon.cached, "{afternoon:?}");
    // An unbound native policy lands in the fallback slice: the same holds there.
    assert!(at("other", "2026-01-05T00:30:00Z").allowed);
    assert!(!at("other", "2026-01-05T02:00:00Z").allowed);
}

#[test]
fn guide_masking_ssn_for_non_hr_and_salary_for_non_managers() {
    let e = engine(&[("finance.rules.json", GUIDE)]);
    let row = json!({"name": "Jane", "ssn": "123-45-6789", "salary": 85000});
    let m = |attrs: Value| {
        e.mask(
            &user(json!({"user_id": "u", "attributes": attrs})),
            "employee_data",
            &row,
            at("2026-01-05T10:00:00Z"),
            &Value::Null,
        )
    };
    let staff = m(json!({"department": "finance"}));
    assert_eq!(
        staff.value,
        json!({"name": "Jane", "ssn": "[REDACTED]", "salary": "85*00"})
    );
    assert_eq!(staff.applied, ["ssn:redact", "salary:partial"]);
    let hr_manager = m(json!({"department": "hr", "is_manager": true}));
    assert_eq!(hr_manager.value, row);
    let hr = m(json!({"department": "hr"}));
    assert_eq!(
        hr.value,
        json!({"name": "Jane", "ssn": "123-45-6789", "salary": "85*00"})
    );
    let rows = json!([row, {"ssn": "987-65-4321", "salary": 120000}]);
    let out = e.mask(
        &user(json!({"user_id": "u"})),
        "employee_data",
        &rows,
        at("2026-01-05T10:00:00Z"),
        &Value::Null,
    );
    assert_eq!(
        out.value[1],
        json!({"ssn": "[REDACTED]", "salary": "12**00"})
    );
    let other = e.mask(
        &user(json!({"user_id": "u"})),
        "unmasked_node",
        &rows,
        at("2026-01-05T10:00:00Z"),
        &Value::Null,
    );
    assert_eq!(other.value, rows);
}

#[test]
fn decisions_are_cached_per_user_attributes_and_time_window() {
    let e = engine(&[("finance.rules.json", GUIDE)]);
    let a = user(
        json!({"user_id": "a", "attributes": {"department": "finance", "security_clearance": "secret"}}),
    );
    let d1 = decide(
        &e,
        &a,
        ResourceType::Node,
        "sensitive_data",
        "execute",
        "2026-01-05T10:00:00Z",
    );
    let d2 = decide(
        &e,
        &a,
        ResourceType::Node,
        "sensitive_data",
        "execute",
        "2026-01-05T11:00:00Z",
    );
    assert!(
        d1.allowed && d2.allowed && !d1.cached && d2.cached,
        "same window: cached"
    );
    let d3 = decide(
        &e,
        &a,
        ResourceType::Node,
        "sensitive_data",
        "execute",
        "2026-01-05T19:00:00Z",
    );
    assert!(!d3.allowed && !d3.cached, "another window: decided again");
    let changed = user(
        json!({"user_id": "a", "attributes": {"department": "finance", "security_clearance": "internal"}}),
    );
    let d4 = decide(
        &e,
        &changed,
        ResourceType::Node,
        "sensitive_data",
        "execute",
        "2026-01-05T10:00:00Z",
    );
    assert!(
        !d4.allowed && !d4.cached,
        "same id, other attributes: decided again"
    );
}

#[test]
fn explain_names_the_deciding_rule_and_what_held() {
    let text = json!({"rules": [
        rule("deny-interns", "n", "deny", 5, leaf("user.attributes.title", "matches", json!("intern.*"), false)),
        rule("allow-fin", "n", "allow", 0, leaf("user.attributes.department", "hierarchical_match", json!("finance"), true)),
    ]});
    let e = engine(&[("x.rules.json", &text.to_string())]);
    let u = user(
        json!({"user_id": "u", "attributes": {"department": "finance.ap", "title": "Analyst"}}),
    );
    let x = e.explain(&AccessRequest {
        user: &u,
        resource_type: ResourceType::Node,
        resource_id: "n",
        permission: "execute",
        now: at("2026-01-05T10:00:00Z"),
        runtime: &Value::Null,
    });
    assert!(x.decision.allowed);
    assert_eq!(x.deciding.len(), 1);
    assert_eq!(x.deciding[0].id, "allow-fin");
    assert_eq!(x.deciding[0].source, "x.rules.json:1");
    let held: Vec<(String, Option<bool>)> = x
        .considered
        .iter()
        .map(|p| (p.id.clone(), p.held))
        .collect();
    assert_eq!(
        held,
        [
            ("deny-interns".to_owned(), Some(false)),
            ("allow-fin".to_owned(), Some(true))
        ]
    );
    assert_eq!(x.derived.len(), 1);
    assert!(!x.derived[0].value);
}

#[test]
fn a_malformed_file_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("finance.rules.json"), GUIDE).unwrap();
    let e = PolicyEngine::load(dir.path(), EngineSettings::default()).unwrap();
    let first = e.generation().id();
    let fin = user(json!({"user_id": "f", "attributes": {"department": "finance"}}));
    assert!(
        decide(
            &e,
            &fin,
            ResourceType::Workflow,
            "finance_report",
            "execute",
            "2026-01-05T10:00:00Z"
        )
        .allowed
    );
    std::fs::write(
        dir.path().join("broken.rules.json"),
        "{\"rules\": [\n  {\"id\": \"x\",\n   \"resource_type\": \"nod\"}\n]}",
    )
    .unwrap();
    let err = e.reload().unwrap_err();
    assert_eq!(err.problems[0].loc.line, 2, "{err}");
    assert!(err.problems[0].loc.file.ends_with("broken.rules.json"));
    assert_eq!(e.generation().id(), first);
    assert!(e.last_error().is_some());
    assert!(
        decide(
            &e,
            &fin,
            ResourceType::Workflow,
            "finance_report",
            "execute",
            "2026-01-05T10:00:00Z"
        )
        .allowed
    );
    std::fs::remove_file(dir.path().join("broken.rules.json")).unwrap();
    assert!(e.reload().unwrap() > first);
    assert!(e.last_error().is_none());
}

/// 20 reloads while 4 threads decide: no decision fails and none mixes generations.
#[test]
fn reloads_under_load_never_fail_or_mix_generations() {
    let dir = tempfile::tempdir().unwrap();
    // Generation parity decides: even versions allow, odd versions deny, each says which it is.
    let write = |v: usize| {
        let effect = if v.is_multiple_of(2) { "allow" } else { "deny" };
        let text = json!({"rules": [{"id": format!("v{v}"), "resource_type": "node", "resource_id": "n", "permission": "execute", "effect": effect}]});
        let tmp = dir.path().join("p.rules.json.tmp");
        std::fs::write(&tmp, text.to_string()).unwrap();
        std::fs::rename(&tmp, dir.path().join("p.rules.json")).unwrap();
    };
    write(0);
    let e = Arc::new(PolicyEngine::load(dir.path(), EngineSettings::default()).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut generations = std::collections::BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let u = user(json!({"user_id": format!("u{t}-{}", n % 7)}));
                    let d = decide(
                        &e,
                        &u,
                        ResourceType::Node,
                        "n",
                        "execute",
                        "2026-01-05T10:00:00Z",
                    );
                    assert!(d.errors.is_empty(), "{d:?}");
                    assert_eq!(d.policies.len(), 1, "{d:?}");
                    let v: usize = d.policies[0][1..].parse().unwrap();
                    assert_eq!(
                        d.allowed,
                        v.is_multiple_of(2),
                        "decision and deciding rule from different generations: {d:?}"
                    );
                    generations.insert(d.generation);
                    n += 1;
                }
                (n, generations.len())
            })
        })
        .collect();
    let mut ids = vec![e.generation().id()];
    for v in 1..=20 {
        write(v);
        ids.push(e.reload().expect("reload"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (n, _) = w.join().expect("no decision failed");
        total += n;
    }
    assert!(total > 0);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn the_watcher_reloads_on_change_and_keeps_the_old_set_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.rules.json"),
        json!({"rules": [rule("one", "n", "allow", 0, json!(null))]}).to_string(),
    )
    .unwrap();
    let e = Arc::new(PolicyEngine::load(dir.path(), EngineSettings::default()).unwrap());
    // The watcher runs on a tokio runtime.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let _w = e.watch().unwrap();
    let first = e.generation().id();
    let wait = |pred: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pred() {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher did not react"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    std::fs::write(dir.path().join("b.rules.json"), json!({"rules": [{"id": "two", "resource_type": "node", "resource_id": "m", "permission": "execute", "effect": "allow"}]}).to_string()).unwrap();
    wait(&|| e.generation().id() > first);
    let second = e.generation().id();
    std::fs::write(
        dir.path().join("c.cedar"),
        "permit (principal, action, resource",
    )
    .unwrap();
    wait(&|| e.last_error().is_some());
    assert_eq!(e.generation().id(), second);
    assert!(
        e.last_error().unwrap().contains("c.cedar:1"),
        "{}",
        e.last_error().unwrap()
    );
}

/// Decides and masks through an engine auditing into `db`'s table, then reads the rows back.
/// The user ids carry `tag`, so runs sharing a server only read their own rows.
async fn audit_roundtrip(db: crate::pool::Pool, tag: &str) {
    let audit = AuditLog::open_database(&db, 1024).await.unwrap();
    let e = Arc::new(engine(&[("finance.rules.json", GUIDE)]).with_audit(audit));
    let e2 = e.clone();
    let (fin_id, eng_id) = (format!("fin-{tag}"), format!("eng-{tag}"));
    let (f, g) = (fin_id.clone(), eng_id.clone());
    tokio::task::spawn_blocking(move || {
        let fin = user(json!({"user_id": f, "attributes": {"department": "finance"}}));
        let eng = user(json!({"user_id": g, "attributes": {"department": "engineering"}}));
        for _ in 0..3 {
            decide(
                &e2,
                &fin,
                ResourceType::Workflow,
                "finance_report",
                "execute",
                "2026-01-05T10:00:00Z",
            );
        }
        decide(
            &e2,
            &eng,
            ResourceType::Workflow,
            "finance_report",
            "execute",
            "2026-01-05T10:00:00Z",
        );
        e2.mask(
            &fin,
            "employee_data",
            &json!({"ssn": "1", "salary": 5}),
            at("2026-01-05T10:00:00Z"),
            &Value::Null,
        );
        e2.audit().unwrap().flush();
    })
    .await
    .unwrap();
    let lease = db.acquire().await.unwrap();
    let mut params = serde_json::Map::new();
    params.insert("fin".into(), json!(fin_id));
    params.insert("eng".into(), json!(eng_id));
    let out = lease
        .execute(
            "SELECT user_id, action, decision, policies, generation, cached, masks FROM policy_audit \
             WHERE user_id IN (:fin, :eng) ORDER BY id",
            &crate::sql::Params::Named(params),
            crate::sql::Fetch::All,
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, String, String, i64, String)> = out
        .rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            assert!(r["generation"].as_i64().unwrap() > 0, "{r:?}");
            (
                s("user_id"),
                s("action"),
                s("decision"),
                s("policies"),
                r["cached"].as_i64().unwrap(),
                s("masks"),
            )
        })
        .collect();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(
        rows[0],
        (
            fin_id.clone(),
            "workflow:execute".into(),
            "allow".into(),
            "[\"finance-workflow-access\"]".into(),
            0,
            "[]".into()
        )
    );
    assert_eq!(
        rows[1].4, 1,
        "the second identical decision came from the cache"
    );
    assert_eq!(
        (rows[3].0.as_str(), rows[3].2.as_str(), rows[3].3.as_str()),
        (eng_id.as_str(), "deny", "[]")
    );
    assert_eq!(
        (rows[4].1.as_str(), rows[4].5.as_str()),
        ("mask", "[\"ssn:redact\",\"salary:partial\"]")
    );
    assert_eq!(e.audit().unwrap().dropped(), 0);
    assert_eq!(e.audit().unwrap().written(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_masks_are_audited_in_a_sqlite_table() {
    use crate::config::database::{DatabaseConfig, DatabaseTarget};
    let tmp = tempfile::tempdir().unwrap();
    let config = DatabaseConfig::new(
        "audit",
        DatabaseTarget::Sqlite {
            path: Some(tmp.path().join("audit.db")),
        },
    );
    let db = crate::database::open(&config).await.unwrap();
    audit_roundtrip(db, "sqlite").await;
}

/// The server database in `var` (exported by `scripts/services`), or `None` after saying so;
/// under `CI=true` a missing URL fails the test instead.
async fn server_db(var: &str) -> Option<crate::pool::Pool> {
    let url = match std::env::var(var) {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("`{var}` is not set and CI=true: run `eval \"$(scripts/services)\"` first")
        }
        _ => {
            eprintln!("skipped: `{var}` is not set (run `eval \"$(scripts/services)\"` first)");
            return None;
        }
    };
    let target = crate::config::database::parse_database_url(&url).unwrap();
    let config = crate::config::database::DatabaseConfig::new("audit", target);
    Some(crate::database::open(&config).await.unwrap())
}

/// A tag no other run uses, so that concurrent runs on one server read only their own rows.
fn run_tag(dialect: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{dialect}-{}-{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_masks_are_audited_in_a_postgres_table() {
    if let Some(db) = server_db("TRELLIS_TEST_PG_URL").await {
        audit_roundtrip(db, &run_tag("pg")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_masks_are_audited_in_a_mariadb_table() {
    if let Some(db) = server_db("TRELLIS_TEST_MYSQL_URL").await {
        audit_roundtrip(db, &run_tag("mysql")).await;
    }
}

#[test]
fn a_rule_scoped_to_a_workflow_names_only_that_workflows_node() {
    let rules = json!({
        "rules": [
            {"id": "etl-load", "resource_type": "node", "resource_id": "load", "workflow": "etl",
             "permission": "execute", "effect": "allow"},
            {"id": "load-anywhere-for-ops", "resource_type": "node", "resource_id": "load",
             "permission": "execute", "effect": "allow", "role": "ops"},
            {"id": "no-load-in-adhoc", "resource_type": "node", "resource_id": "load",
             "workflow": "adhoc", "permission": "execute", "effect": "deny", "priority": 10}
        ],
        "masking": [
            {"resource_id": "load", "workflow": "etl", "field_path": "ssn", "mask_type": "redact"}
        ]
    })
    .to_string();
    let e = engine(&[("scope.rules.json", &rules)]);
    let ask = |u: &PreparedUser, runtime: Value| {
        e.decide(&AccessRequest {
            user: u,
            resource_type: ResourceType::Node,
            resource_id: "load",
            permission: "execute",
            now: at("2026-01-05T10:00:00Z"),
            runtime: &runtime,
        })
    };
    let staff = user(json!({"user_id": "s"}));
    let ops = user(json!({"user_id": "o", "roles": ["ops"]}));
    let etl = ask(&staff, json!({"workflow": "etl", "run_id": "1"}));
    assert!(etl.allowed, "{etl:?}");
    assert!(!ask(&staff, json!({"workflow": "reports", "run_id": "2"})).allowed);
    assert!(
        !ask(&staff, Value::Null).allowed,
        "no workflow: no scoped grant"
    );
    assert!(ask(&ops, json!({"workflow": "reports"})).allowed);
    assert!(
        !ask(&ops, json!({"workflow": "adhoc"})).allowed,
        "a scoped deny outranks the unscoped allow in its workflow only"
    );
    // Run ids are not read by any rule, so they do not split the cache; workflows do.
    let again = ask(&staff, json!({"workflow": "etl", "run_id": "3"}));
    assert!(again.allowed && again.cached, "{again:?}");

    let row = json!({"ssn": "123-45-6789"});
    let mask = |workflow: &str| {
        e.mask(
            &staff,
            "load",
            &row,
            at("2026-01-05T10:00:00Z"),
            &json!({"workflow": workflow}),
        )
        .value
    };
    assert_eq!(mask("etl"), json!({"ssn": "[REDACTED]"}));
    assert_eq!(mask("reports"), row);

    let refs = e.generation().node_refs().to_vec();
    assert_eq!(refs.len(), 4);
    assert_eq!(refs[0].workflow.as_deref(), Some("etl"));
    assert_eq!(refs[1].workflow, None);
    assert_eq!(refs[3].by, "masking[0]");
}

#[test]
fn a_workflow_scope_on_a_workflow_rule_or_an_empty_one_is_refused() {
    let rules = json!({
        "rules": [
            {"id": "w", "resource_type": "workflow", "resource_id": "etl", "workflow": "etl",
             "permission": "execute", "effect": "allow"},
            {"id": "e", "resource_type": "node", "resource_id": "n", "workflow": "",
             "permission": "execute", "effect": "allow"}
        ],
        "masking": [{"resource_id": "n", "workflow": "", "field_path": "x", "mask_type": "redact"}]
    })
    .to_string();
    let files = vec![(PathBuf::from("bad.rules.json"), rules)];
    let err = PolicyGeneration::from_sources(Path::new("."), &files).unwrap_err();
    let text = err.detail();
    assert_eq!(err.problems.len(), 3, "{text}");
    assert!(text.contains("`workflow` scopes a node rule"), "{text}");
    assert!(text.contains("`workflow` is empty"), "{text}");
}

#[test]
fn for_workflow_sets_runtime_workflow_and_refuses_a_conflict() {
    assert_eq!(
        for_workflow(Value::Null, Some("a")).unwrap(),
        json!({"workflow": "a"})
    );
    assert_eq!(
        for_workflow(json!({"ip": "1"}), Some("a")).unwrap(),
        json!({"ip": "1", "workflow": "a"})
    );
    assert_eq!(
        for_workflow(json!({"workflow": "a"}), Some("a")).unwrap(),
        json!({"workflow": "a"})
    );
    assert!(for_workflow(json!({"workflow": "b"}), Some("a")).is_err());
    assert!(for_workflow(json!([1]), Some("a")).is_err());
    assert_eq!(for_workflow(json!([1]), None).unwrap(), json!([1]));
}
