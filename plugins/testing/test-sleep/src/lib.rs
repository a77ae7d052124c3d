//! Test-only node plugin `sleep`: `transform` waits inside WASI host calls, where the epoch
//! deadline cannot reach it. The record says how and how long (`{"how": …, "seconds": 4}`):
//! - `sleep`: `std::thread::sleep` (a duration subscription, then `poll`);
//! - `poll_instant`: `wasi:io/poll` on a subscription to an instant `seconds` from now;
//! - `poll_many`: `poll` over four long subscriptions at once, four times;
//! - `steps`: short sleeps (50 ms) one after another, forever;
//! - anything else: no wait (the record comes back).
//!
//! The host's call deadline must stop every one of them.

use std::time::Duration;

use trellis_sdk::{Info, Node, Value};
use wasi::clocks::monotonic_clock;
use wasi::io::poll;

struct Sleep;

impl Node for Sleep {
    fn info() -> Info {
        Info::new("sleep", env!("CARGO_PKG_VERSION"))
    }

    fn transform(record: Value) -> Result<Value, String> {
        let seconds = record.get("seconds").and_then(Value::as_f64).unwrap_or(4.0);
        let nanos = (seconds * 1e9) as u64;
        match record.get("how").and_then(Value::as_str) {
            Some("sleep") => std::thread::sleep(Duration::from_nanos(nanos)),
            Some("poll_instant") => {
                let at = monotonic_clock::now() + nanos;
                let p = monotonic_clock::subscribe_instant(at);
                poll::poll(&[&p]);
            }
            Some("steps") => loop {
                std::thread::sleep(Duration::from_millis(50));
            },
            Some("poll_many") => {
                let all: Vec<_> = (1..=4)
                    .map(|i| monotonic_clock::subscribe_duration(nanos * i))
                    .collect();
                let refs: Vec<&poll::Pollable> = all.iter().collect();
                // Wait for each in turn: the longest is 4 × `seconds`.
                for _ in 0..all.len() {
                    poll::poll(&refs);
                }
            }
            _ => {}
        }
        Ok(record)
    }
}

trellis_sdk::export_node!(Sleep);
