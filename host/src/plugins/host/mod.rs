//! What a plugin call's store holds, and the host functions a plugin imports: one file per
//! imported interface (`log`, `config`, and `database`, which only 0.2.0 components import).

pub(crate) mod clock;
mod config;
pub(crate) mod database;
mod log;
pub(crate) mod output;

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::MemoryLimiter;
use output::CapturedOutput;

/// The read-only config a call sees through the `config` import: the node's config object.
pub type CallConfig = serde_json::Map<String, serde_json::Value>;

/// The data of one call's `Store`: created for the call, dropped after it.
pub(crate) struct CallState {
    /// `name@version` (or the file name while loading), for log fields and errors.
    pub(crate) label: Arc<str>,
    pub(crate) config: Arc<CallConfig>,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
    /// How many more log lines this call may write.
    pub(crate) log_budget: u32,
    /// When the call's time is up: no wait a plugin starts (a clock subscription, a statement)
    /// lasts past it.
    pub(crate) deadline: tokio::time::Instant,
    /// What the call may do with the host's databases (`None`: every statement is denied).
    pub(crate) database: Option<database::DatabaseGrant>,
    /// The call's monotonic clock (WASI's, so a `subscribe-instant` can be measured against it).
    clock: clock::CallClock,
    wasi: WasiCtx,
    table: ResourceTable,
}

/// The most log lines one call may write; the rest are counted and dropped.
pub(crate) const LOG_LINES_PER_CALL: u32 = 1_000;
/// The longest log message kept, in bytes.
pub(crate) const LOG_MESSAGE_CAP: usize = 4 * 1024;

impl CallState {
    /// A locked-down WASI: no preopened directory, no environment, no arguments, no network;
    /// stdin empty; stdout and stderr captured. Clocks and random stay (Rust's std needs them).
    pub(crate) fn new(
        label: Arc<str>,
        config: Arc<CallConfig>,
        memory_bytes: usize,
        call_timeout: std::time::Duration,
    ) -> Self {
        let stdout = CapturedOutput::default();
        let stderr = CapturedOutput::default();
        let clock = clock::CallClock::start();
        let wasi = WasiCtx::builder()
            .monotonic_clock(clock)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        CallState {
            label,
            config,
            limiter: MemoryLimiter::new(memory_bytes),
            stdout,
            stderr,
            log_budget: LOG_LINES_PER_CALL,
            deadline: tokio::time::Instant::now() + call_timeout,
            database: None,
            clock,
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// Logs what the plugin wrote to stdout and stderr during the call, if anything.
    pub(crate) fn log_output(&self) {
        for (stream, captured) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (text, dropped) = captured.text();
            if text.is_empty() {
                continue;
            }
            tracing::info!(plugin = %self.label, stream, dropped_bytes = dropped, output = %text.trim_end(), "plugin output");
        }
    }
}

/// The `types` interface has only types; the generated trait is empty.
impl crate::plugins::bindings::v1::trellis::plugin::types::Host for CallState {}
impl crate::plugins::bindings::v2::trellis::plugin::types::Host for CallState {}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
