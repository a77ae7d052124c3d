//! Policy engine benchmarks with 10,000 compiled rules (2,000 nodes × 5 rules, mixed operators,
//! priorities, a time window and a regex per node): decision latency (p50/p99, cache miss and
//! hit), reload time, and built-in masking per field.
//!
//! `cargo bench -p trellis-host --bench policy`; figures go in BENCHMARKS.md.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use trellis_host::Secret;
use trellis_host::{
    AccessRequest, EngineSettings, Masker, PolicyEngine, PolicyGeneration, PreparedUser,
    ResourceType, UserContext,
};
use trellis_host::{FieldPath, MaskType};

const NODES: usize = 2_000;

fn leaf(path: &str, op: &str, value: Value) -> Value {
    json!({"type": "attribute_expression", "value": {"attribute_path": path, "operator": op, "value": value}})
}

/// 10,000 rules: per node a high-priority deny, a time-windowed allow, a hierarchical allow, a
/// clearance allow and a regex allow.
fn rules_file() -> String {
    let mut rules = Vec::with_capacity(NODES * 5);
    for n in 0..NODES {
        let node = format!("node{n}");
        let r = |id: &str, effect: &str, priority: i64, c: Value| json!({"id": format!("{node}-{id}"), "resource_type": "node", "resource_id": node, "permission": "execute", "effect": effect, "priority": priority, "conditions": c});
        rules.push(r(
            "deny-contractors",
            "deny",
            10,
            leaf("user.attributes.employment", "equals", json!("contractor")),
        ));
        rules.push(r(
            "office-hours",
            "allow",
            5,
            json!({"type": "and", "conditions": [
            {"type": "time_of_day", "value": {"start": "08:00", "end": "18:00"}},
            leaf("user.attributes.team_size", "greater_than", json!(n % 10))]}),
        ));
        rules.push(r("department", "allow", 0, json!({"type": "department_hierarchy", "value": {"department": format!("dept{}", n % 50), "include_children": true}})));
        rules.push(r(
            "clearance",
            "allow",
            0,
            leaf(
                "user.attributes.security_clearance",
                "in",
                json!(["secret", "top_secret"]),
            ),
        ));
        rules.push(r(
            "email",
            "allow",
            0,
            leaf("user.email", "matches", json!(format!("ops{}@", n % 7))),
        ));
    }
    json!({"rules": rules}).to_string()
}

fn user(i: usize) -> PreparedUser {
    let context: UserContext = serde_json::from_value(json!({
        "user_id": format!("user{i}"),
        "tenant_id": "acme",
        "email": format!("ops{}@acme.com", i % 7),
        "roles": ["analyst"],
        "attributes": {"department": format!("dept{}.team{}", i % 50, i % 3), "security_clearance": "confidential", "employment": "staff", "team_size": i % 12}
    }))
    .unwrap();
    PreparedUser::new(context)
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{name}: p50 {:?}, p99 {:?} ({} samples)",
        at(0.50),
        at(0.99),
        samples.len()
    );
}

fn setup() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = rules_file();
    std::fs::write(dir.path().join("bench.rules.json"), &text).unwrap();
    (dir, text)
}

fn decisions(c: &mut Criterion) {
    let (dir, _) = setup();
    let started = Instant::now();
    let generation = PolicyGeneration::load(dir.path()).unwrap();
    println!(
        "load of {} policies: {:?}",
        generation.policy_count(),
        started.elapsed()
    );
    // A cache too small to hit: every decision below is evaluated by Cedar.
    let uncached = PolicyEngine::new(
        generation,
        EngineSettings {
            cache_capacity: 0,
            ..EngineSettings::default()
        },
    );
    let cached = PolicyEngine::load(dir.path(), EngineSettings::default()).unwrap();
    let users: Vec<PreparedUser> = (0..64).map(user).collect();
    let now: jiff::Timestamp = "2026-01-05T10:00:00Z".parse().unwrap();
    let runtime = Value::Null;
    let nodes: Vec<String> = (0..NODES).map(|n| format!("node{n}")).collect();
    let req = |u: usize, n: usize| AccessRequest {
        user: &users[u % users.len()],
        resource_type: ResourceType::Node,
        resource_id: &nodes[n % NODES],
        permission: "execute",
        now,
        runtime: &runtime,
    };

    // Warm the user entity cache, then sample single decisions.
    for i in 0..users.len() {
        uncached.decide(&req(i, i));
    }
    let mut samples = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let r = req(i % 8, i.wrapping_mul(7919));
        let t = Instant::now();
        black_box(uncached.decide(&r));
        samples.push(t.elapsed());
    }
    percentiles("decision (cache miss, user entities cached)", samples);

    let mut samples = Vec::with_capacity(20_000);
    for i in 0..20_000 {
        let fresh = user(10_000 + i);
        let r = AccessRequest {
            user: &fresh,
            ..req(0, i)
        };
        let t = Instant::now();
        black_box(uncached.decide(&r));
        samples.push(t.elapsed());
    }
    percentiles("decision (new user: entities built)", samples);

    let r = req(1, 42);
    cached.decide(&r);
    let mut samples = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let t = Instant::now();
        black_box(cached.decide(&r));
        samples.push(t.elapsed());
    }
    percentiles("decision (cache hit)", samples);

    let mut i = 0usize;
    c.bench_function("decide/cache_miss", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            black_box(uncached.decide(&req(i % 8, i)))
        })
    });
    c.bench_function("decide/cache_hit", |b| {
        b.iter(|| black_box(cached.decide(&r)))
    });
}

fn reload(c: &mut Criterion) {
    let (dir, _) = setup();
    let engine = PolicyEngine::load(dir.path(), EngineSettings::default()).unwrap();
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        engine.reload().unwrap();
        samples.push(t.elapsed());
    }
    percentiles(
        "reload (10,000 rules: parse, compile, validate, slice, swap)",
        samples,
    );
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    group.bench_function("10k_rules", |b| b.iter(|| engine.reload().unwrap()));
    group.finish();
    let _ = Path::new(".");
}

fn masking(c: &mut Criterion) {
    let masker = Masker::new(Some(Secret::new("bench-key")));
    let value = json!("123-45-6789");
    let mut group = c.benchmark_group("mask");
    for (name, mask) in [
        ("redact", MaskType::Redact),
        ("partial", MaskType::Partial),
        ("hash", MaskType::Hash { unkeyed: false }),
        ("hash_unkeyed", MaskType::Hash { unkeyed: true }),
        ("replace", MaskType::Replace(None)),
        ("null", MaskType::Null),
        ("last4", MaskType::Last4),
        ("first4", MaskType::First4),
        ("hmac", MaskType::Hmac),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(masker.apply(&mask, "ssn", black_box(&value)).unwrap()))
        });
    }
    let email = json!("john.doe@acme.com");
    group.bench_function("email", |b| {
        b.iter(|| {
            black_box(
                masker
                    .apply(&MaskType::Email, "e", black_box(&email))
                    .unwrap(),
            )
        })
    });
    let date = json!("1990-04-12");
    group.bench_function("date_year", |b| {
        b.iter(|| {
            black_box(
                masker
                    .apply(&MaskType::DateYear, "d", black_box(&date))
                    .unwrap(),
            )
        })
    });
    let row = json!({"name": "Jane", "ssn": "123-45-6789", "salary": 85000, "items": [{"ssn": "1"}, {"ssn": "2"}]});
    let path = FieldPath::parse("ssn").unwrap();
    group.bench_function("field_in_row", |b| {
        b.iter(|| black_box(masker.mask_field(black_box(&row), &path, &MaskType::Partial)))
    });
    group.finish();
}

criterion_group!(benches, decisions, reload, masking);
criterion_main!(benches);
