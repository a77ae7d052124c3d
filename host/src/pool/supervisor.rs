//! The pool's supervisor: one task per pool that keeps the pool at its size and its connections
//! healthy, without ever making a caller wait on it.
//!
//! Each tick (and whenever something wakes it) it: reclaims leases held past `lease_timeout`;
//! closes idle connections that are too old (`max_lifetime`, with jitter), unhealthy (score below
//! `health_threshold`) or idle too long (`idle_timeout`, while above `min_connections`); pings
//! idle connections not proven within `health_check_interval`, and every idle connection at once
//! after any connection broke; and opens connections (in the background, with backoff after
//! failures) up to `min_connections` or the pre-warm target. Actors that died are replaced by the
//! same refill. It also fails statements queued by `Pool::execute` once they have waited
//! `acquire_timeout`, waking at the oldest one's deadline.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::lease;
use super::stats::CloseReason;
use super::{Shared, Slot, ping};

/// Starts the supervisor of `shared`; it ends when the pool is closed or dropped.
pub(crate) fn spawn(shared: Weak<Shared>) {
    let Some(strong) = shared.upgrade() else {
        return;
    };
    let wake = strong.wake_supervisor.clone();
    let armed = strong.queue_armed.clone();
    let tick = tick_of(&strong);
    drop(strong);
    tokio::spawn(async move {
        let mut sweep = true;
        let mut next_sweep = Instant::now();
        loop {
            let next_expiry = {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                if sweep || Instant::now() >= next_sweep {
                    run_once(&shared);
                    next_sweep = Instant::now() + tick;
                }
                shared.expire_queued(Instant::now())
            };
            let until = next_expiry.map_or(next_sweep, |at| at.min(next_sweep));
            // A statement queued into an empty queue only (re)arms the expiry timer.
            sweep = tokio::select! {
                () = wake.notified() => true,
                () = armed.notified() => false,
                () = tokio::time::sleep_until(until.into()) => false,
            };
        }
    });
}

/// Opens one connection in a background task. The caller has counted it in `opening`.
pub(crate) fn open_in_background(shared: Arc<Shared>) {
    tokio::spawn(async move { shared.open_one().await });
}

fn tick_of(shared: &Shared) -> Duration {
    let c = &shared.config;
    [
        Duration::from_secs(1),
        c.health_check_interval / 2,
        c.lease_timeout / 4,
        c.idle_timeout / 2,
    ]
    .into_iter()
    .min()
    .unwrap_or(Duration::from_secs(1))
    .max(Duration::from_millis(10))
}

fn run_once(shared: &Arc<Shared>) {
    let now = Instant::now();
    reclaim_expired(shared, now);

    let config = &shared.config;
    let mut to_close: Vec<(Slot, CloseReason)> = Vec::new();
    let mut to_check: Vec<Slot> = Vec::new();
    let spawn_opens;
    {
        let mut state = shared.lock_state();
        let suspect = state.suspect_since;
        let mut closable_idle = state.open.saturating_sub(config.min_connections);
        let mut keep = std::collections::VecDeque::with_capacity(state.idle.len());
        while let Some(slot) = state.idle.pop_front() {
            if !slot.health.is_alive() {
                continue;
            }
            let reason = if let Some(reason) = slot.worn_out(now, config.health_threshold) {
                Some(reason)
            } else if closable_idle > 0
                && now.duration_since(slot.idle_since) >= config.idle_timeout
            {
                closable_idle -= 1;
                Some(CloseReason::Idle)
            } else {
                None
            };
            if let Some(reason) = reason {
                to_close.push((slot, reason));
                continue;
            }
            let last_ok = slot.last_ok();
            let due = now.duration_since(last_ok) >= config.health_check_interval
                || suspect.is_some_and(|since| last_ok < since);
            if due {
                to_check.push(slot);
            } else {
                keep.push_back(slot);
            }
        }
        state.idle = keep;

        // Refill: to `min_connections`, or to the pre-warm target once.
        let desired = config
            .min_connections
            .max(state.warm_target)
            .min(config.max_connections);
        state.warm_target = 0;
        let have = state.open + state.opening;
        let backing_off = state
            .last_connect_error
            .as_ref()
            .is_some_and(|(at, _)| now.duration_since(*at) < Duration::from_millis(250));
        spawn_opens = if have < desired && !backing_off {
            let n = desired - have;
            state.opening += n;
            n
        } else {
            0
        };
    }
    for (slot, reason) in to_close {
        tracing::debug!(pool = %config.name, connection = slot.id(), reason = reason.as_str(), "closing connection");
        shared.counters.closed(reason);
        drop(slot);
    }
    for slot in to_check {
        let shared = shared.clone();
        tokio::spawn(async move {
            if ping(&slot).await {
                shared.checkin(slot);
            }
            // A failed check ends the actor; dropping the slot finishes it.
        });
    }
    for _ in 0..spawn_opens {
        open_in_background(shared.clone());
    }
    shared.pump();
}

/// Takes back every lease held past its deadline; returns how many.
pub(crate) fn reclaim_expired(shared: &Shared, now: Instant) -> usize {
    let expired: Vec<Arc<lease::LeaseCell>> = match shared.leases.lock() {
        Ok(leases) => leases
            .values()
            .filter(|c| c.deadline <= now)
            .cloned()
            .collect(),
        Err(_) => return 0,
    };
    let mut reclaimed = 0;
    for cell in expired {
        let slot = cell.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        shared.unregister_lease(cell.id);
        if let Some(mut slot) = slot {
            reclaimed += 1;
            shared.remember_reclaimed(cell.id);
            shared.counters.reclaimed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pool = %shared.config.name,
                lease = cell.id,
                connection = slot.id(),
                timeout = ?shared.config.lease_timeout,
                "lease held past the lease timeout: reclaimed"
            );
            // Whatever the holder did, undo it before anyone else gets the connection.
            slot.session_dirty = true;
            lease::release(shared, slot);
        }
    }
    reclaimed
}
