//! Per-plugin limits (memory cap, CPU deadline per call) and the store limiter that enforces the
//! memory cap.
//!
//! The deadline is enforced with wasmtime's epoch interruption: the engine's ticker advances the
//! epoch every `tick`, and each call's store traps once `deadline / tick` (rounded up) ticks have
//! passed, so a call stops between `deadline - tick` and `deadline + tick` after it started.

use std::collections::BTreeMap;
use std::time::Duration;

/// The default memory cap of one plugin instance.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 * 1024 * 1024;
/// The default CPU deadline of one plugin call (instantiation included).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// What one plugin instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// How long one call (instantiation and the export, waits for the database included) may
    /// run.
    pub call_timeout: Duration,
    /// The most rows one statement through the `database` import may return.
    pub max_rows: usize,
    /// The most statements one call may run through the `database` import.
    pub max_statements: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_LIMIT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_rows: super::host::database::DEFAULT_MAX_ROWS,
            max_statements: super::host::database::DEFAULT_MAX_STATEMENTS,
        }
    }
}

/// Limits for every plugin, with overrides by plugin name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    /// What a plugin without an override gets.
    pub default: Limits,
    /// Overrides by plugin name (the name the plugin describes itself with).
    pub by_name: BTreeMap<String, Limits>,
}

impl LimitsConfig {
    /// The limits for the plugin called `name`.
    pub fn for_plugin(&self, name: &str) -> Limits {
        self.by_name.get(name).copied().unwrap_or(self.default)
    }
}

/// The memory cap of one store: growing past it traps with [`MemoryLimitHit`].
pub(crate) struct MemoryLimiter {
    limit: usize,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: usize) -> Self {
        MemoryLimiter { limit }
    }
}

/// The error a store raises when a plugin grows its memory past its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (asked for {desired} bytes)")]
pub(crate) struct MemoryLimitHit {
    pub(crate) limit: usize,
    pub(crate) desired: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            // Trap rather than fail the grow: a guest allocator that gets `-1` from `memory.grow`
            // aborts with an anonymous `unreachable`; this way the error says what happened.
            return Err(wasmtime::Error::new(MemoryLimitHit {
                limit: self.limit,
                desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

/// How many epoch ticks make `timeout`, at least one.
pub(crate) fn deadline_ticks(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    let ticks = timeout.as_nanos().div_ceil(tick);
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_ticks_round_up_and_never_zero() {
        let tick = Duration::from_millis(10);
        assert_eq!(deadline_ticks(Duration::from_secs(1), tick), 100);
        assert_eq!(deadline_ticks(Duration::from_millis(15), tick), 2);
        assert_eq!(deadline_ticks(Duration::ZERO, tick), 1);
    }

    #[test]
    fn overrides_by_name() {
        let mut config = LimitsConfig::default();
        let small = Limits {
            memory_bytes: 1 << 20,
            call_timeout: Duration::from_millis(5),
            ..Limits::default()
        };
        config.by_name.insert("tiny".into(), small);
        assert_eq!(config.for_plugin("tiny"), small);
        assert_eq!(config.for_plugin("other"), Limits::default());
    }
}
