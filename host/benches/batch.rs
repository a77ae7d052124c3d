//! The plugin batch transform against the runtime's own `echo` ceiling (issue 21), counted both
//! ways: records per second in alternating rounds of one run, and (with
//! `scripts/bench-instructions`) instructions per batch, which hardly move with the machine.
//!
//! Each call is the production path: a fresh instance of the plugin, a batch of 1,000 records of
//! about 100 bytes (the same batch as the `plugins` bench), the host's lowering of the records,
//! lifting and JSON check of the results. `row` is the example `row-transform` (parse, rename
//! one field, join two into `full_name`, write out); `echo` returns each record's text unchanged
//! (what the runtime itself costs per record).
//!
//! ```console
//! $ scripts/build-plugins
//! $ cargo bench -p trellis-host --bench batch -- --seconds 3 --rounds 6
//! ```
//!
//! `--only row|echo` runs one side, for a profiler. Counted in instructions per batch (one call
//! of the host's `transform` per batch; `TRELLIS_BENCH_VALGRIND=1` gives the engine two slots
//! only, of wasmtime's default reservation, which valgrind can map: the plugins' code is counted
//! as `serve` runs it, with no explicit bounds checks):
//!
//! ```console
//! $ B=$(cargo bench -p trellis-host --bench batch --no-run 2>&1 | grep -o 'target/[^)]*')
//! $ TRELLIS_BENCH_VALGRIND=1 scripts/bench-instructions --per 'Plugin::transform$' --short 1 --long 3 -- $B --only row
//! $ TRELLIS_BENCH_VALGRIND=1 scripts/bench-instructions --per 'Plugin::transform$' --short 1 --long 3 -- $B --only echo
//! ```

#[path = "support/batch.rs"]
mod support;

use std::time::Instant;

use support::{echo_file, empty_config, engine_options, load, records, row_config, row_file};

/// The allocator the `trellis` binary ships with.
#[global_allocator]
static GLOBAL: trellis_host::Allocator = trellis_host::Allocator;

const RECORDS: usize = 1_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (mut seconds, mut rounds, mut only) = (3.0, 6, None::<String>);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--only" => only = Some(it.next().expect("--only row|echo")),
            _ => {} // cargo bench passes `--bench`
        }
    }
    let valgrind = std::env::var_os("TRELLIS_BENCH_VALGRIND").is_some();
    let (_rows, row) = load(&row_file(), engine_options(valgrind));
    let (_echoes, echo) = load(&echo_file(), engine_options(valgrind));
    let batch = records(RECORDS);
    let (row_config, empty) = (row_config(), empty_config());

    // Records per second of one side for `seconds`, fresh instance per batch.
    let side = |name: &str| -> f64 {
        let (plugin, config) = match name {
            "row" => (&row, &row_config),
            _ => (&echo, &empty),
        };
        let start = Instant::now();
        let mut batches = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            let out = plugin.transform(&batch, config.clone()).expect("transform");
            assert_eq!(out.len(), RECORDS);
            assert!(out.iter().all(Result::is_ok), "every record transforms");
            batches += 1;
        }
        (batches * RECORDS as u64) as f64 / start.elapsed().as_secs_f64()
    };

    if let Some(name) = only {
        let rate = side(&name);
        println!("{name}: {rate:.0} records/s");
        return;
    }
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let row_rate = side("row");
        let echo_rate = side("echo");
        let ratio = row_rate / echo_rate;
        println!(
            "round {round}: row-transform {row_rate:.0} records/s, echo {echo_rate:.0} records/s: {ratio:.3}×"
        );
        ratios.push(ratio);
    }
    println!(
        "median row-transform / echo: {:.3}× (goal ≥ 0.5×)",
        median(&mut ratios)
    );
}
