//! Workflow directory load time: 1,000 workflow files (each the shape of the shipped example:
//! inputs, two SQL nodes, a plugin node, a vector node and connections) read, parsed and checked
//! (node configs included) into one generation. The goal is under 1 s.
//!
//! `cargo bench -p trellis-host --bench workflows`; figures go in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_host::{AnyName, WorkflowSet};

const FILES: usize = 1_000;
const ROUNDS: usize = 7;

fn workflow(i: usize) -> String {
    format!(
        r#"description = "Workflow {i}: expenses by department, per-employee totals, similar expenses"

[inputs.start_date]
type = "string"
default = "2024-01-01"

[inputs.like]
type = "array"
default = [0.4, 0.9, 0.1, 0.0]

[[nodes]]
id = "by_department_{i}"
type = "AsyncSQLDatabaseNode"
config = {{ query = "SELECT department, SUM(amount) AS total FROM expenses WHERE date >= :start_date GROUP BY department", params = {{ start_date = "$inputs.start_date" }} }}

[[nodes]]
id = "per_employee"
type = "AsyncSQLDatabaseNode"
config = {{ query = "SELECT e.name, e.department, SUM(x.amount) AS expenses FROM employees e JOIN expenses x ON x.employee_id = e.id WHERE x.date >= :start_date GROUP BY e.id", params = {{ start_date = "$inputs.start_date" }}, fetch_mode = "all", max_retries = 2 }}

[[nodes]]
id = "grouped"
type = "plugin:sum-by-key"
config = {{ key = "department", field = "expenses" }}

[[nodes]]
id = "similar"
type = "AsyncPostgreSQLVectorNode"
config = {{ operation = "search", table_name = "transaction_embeddings", vector = "$inputs.like", limit = 3 }}

[[connections]]
from = "per_employee.result.data"
to = "grouped.records"
"#
    )
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for i in 0..FILES {
        std::fs::write(dir.path().join(format!("w{i:04}.toml")), workflow(i)).expect("write");
    }
    let mut times: Vec<Duration> = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let set = WorkflowSet::load(dir.path(), Arc::new(AnyName));
        let took = started.elapsed();
        let loaded = set.current();
        assert_eq!(
            loaded.workflows.len(),
            FILES,
            "{:?}",
            loaded.errors.values().next()
        );
        times.push(took);
    }
    times.sort();
    // The floor in the same run: only reading the files and parsing them as TOML.
    let mut floor: Vec<Duration> = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for entry in std::fs::read_dir(dir.path()).expect("read the directory") {
            let text = std::fs::read_to_string(entry.expect("an entry").path()).expect("read");
            let value: toml::Value = toml::from_str(&text).expect("TOML");
            std::hint::black_box(value);
        }
        floor.push(started.elapsed());
    }
    floor.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "read + TOML parse only: median {:.1} ms; load / that = {:.2}x",
        ms(floor[ROUNDS / 2]),
        ms(times[ROUNDS / 2]) / ms(floor[ROUNDS / 2])
    );
    println!(
        "workflow load: {FILES} files, {ROUNDS} rounds: median {:.1} ms, min {:.1} ms, max {:.1} ms ({:.1} µs per file)",
        ms(times[ROUNDS / 2]),
        ms(times[0]),
        ms(times[ROUNDS - 1]),
        ms(times[ROUNDS / 2]) * 1e3 / FILES as f64
    );
}
