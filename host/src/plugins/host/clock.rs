//! `wasi:clocks/monotonic-clock`'s waits, bounded by the call's deadline.
//!
//! The epoch deadline stops a plugin that computes too long, but not one blocked in a host call:
//! a `std::thread::sleep` in a plugin is WASI's `subscribe-duration` then `poll`, which the
//! synchronous bindings wait out on the calling thread, epoch or not. Every wait a plugin can
//! start is a clock subscription (it has no sockets, files or stdin to wait on), so these two
//! functions are replaced: a subscription that would end after the call's deadline stops the
//! call at once with [`WaitPastDeadline`] (reported like the epoch interrupt, as a deadline
//! error: the call could only have been stopped there), and any other ends when asked.

use std::time::Duration;

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::HostMonotonicClock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::CallState;

/// The WASI version the host links (`wasmtime-wasi` 48); guests' 0.2.x imports resolve to it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces `subscribe-duration` and `subscribe-instant` in `linker` (after WASI was added).
pub(crate) fn add_to_linker(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: wasmtime::StoreContextMut<'_, CallState>, (nanos,): (u64,)| {
            let state = store.data_mut();
            let wait = Duration::from_nanos(nanos);
            state.bounded_sleep(wait).map(|p| (p,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: wasmtime::StoreContextMut<'_, CallState>, (when,): (u64,)| {
            let state = store.data_mut();
            // The guest's instant is on the call's monotonic clock (see `CallClock`).
            let now = state.clock.now();
            let wait = Duration::from_nanos(when.saturating_sub(now));
            state.bounded_sleep(wait).map(|p| (p,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl CallState {
    /// A pollable ready after `wait`; an error that stops the call when that is past its
    /// deadline.
    fn bounded_sleep(&mut self, wait: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let now = tokio::time::Instant::now();
        let until = match now.checked_add(wait) {
            Some(at) if at <= self.deadline => at,
            _ => return Err(WaitPastDeadline.into()),
        };
        let sleep = self.table.push(Sleep(until))?;
        subscribe(&mut self.table, sleep)
    }
}

/// A plugin asked to wait past its call's deadline; the call is stopped.
#[derive(Debug)]
pub(crate) struct WaitPastDeadline;

impl std::fmt::Display for WaitPastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the plugin asked to wait past its deadline")
    }
}

impl std::error::Error for WaitPastDeadline {}

/// The monotonic clock a call's WASI sees: nanoseconds since the call's store was made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallClock(std::time::Instant);

impl CallClock {
    pub(crate) fn start() -> CallClock {
        CallClock(std::time::Instant::now())
    }
}

impl HostMonotonicClock for CallClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Ready at an instant.
struct Sleep(tokio::time::Instant);

#[async_trait::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await;
    }
}
