//! A circuit breaker for one pool: after repeated connection failures callers fail at once
//! instead of waiting, and after a cool-down (doubling from 1 s up to 30 s) one trial is let
//! through; when it succeeds the circuit closes again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Consecutive connection failures that open a circuit.
const FAILURES_TO_OPEN: u32 = 3;
const FIRST_COOL_DOWN: Duration = Duration::from_secs(1);
const MAX_COOL_DOWN: Duration = Duration::from_secs(30);

/// One pool's circuit.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    cool_down: Duration,
    trial_running: bool,
}

/// Leave to try the database once; say how it went with [`Attempt::finish`]. Dropped without
/// a word (the caller was cancelled), it counts for nothing, and a trial's slot is freed.
#[derive(Debug)]
pub(crate) struct Attempt {
    breaker: Arc<Breaker>,
    trial: bool,
    finished: bool,
}

impl Breaker {
    /// Leave to try, or the time left before a trial is allowed while the circuit is open.
    pub(crate) fn enter(self: &Arc<Self>) -> Result<Attempt, Duration> {
        let mut s = self.lock();
        let trial = match s.open_until {
            Some(until) if Instant::now() < until || s.trial_running => {
                return Err(until.saturating_duration_since(Instant::now()));
            }
            Some(_) => {
                s.trial_running = true;
                true
            }
            None => false,
        };
        Ok(Attempt {
            breaker: self.clone(),
            trial,
            finished: false,
        })
    }

    /// Whether the circuit is closed and no connection failure is outstanding.
    pub(crate) fn is_healthy(&self) -> bool {
        let s = self.lock();
        s.open_until.is_none() && s.failures == 0
    }

    /// Whether callers are being turned away now.
    pub(crate) fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How an attempt went, as far as the database's reachability goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The database answered (with rows, or with an error of the statement's own).
    Reached,
    /// The database could not be reached.
    Unreachable,
    /// Nothing learnt (the pool was busy, the config was bad).
    Inconclusive,
}

impl Attempt {
    /// Whether this is the one trial let through an open circuit.
    pub(crate) fn is_trial(&self) -> bool {
        self.trial
    }

    /// Records the outcome. Returns the new cool-down when this failure opened (or kept open)
    /// the circuit.
    pub(crate) fn finish(mut self, outcome: Outcome) -> Option<Duration> {
        self.finished = true;
        let mut s = self.breaker.lock();
        s.trial_running &= !self.trial;
        match outcome {
            Outcome::Reached => {
                *s = State::default();
                return None;
            }
            Outcome::Inconclusive => return None,
            Outcome::Unreachable => {}
        }
        s.failures += 1;
        if s.failures < FAILURES_TO_OPEN && s.open_until.is_none() {
            return None;
        }
        s.cool_down = if s.cool_down.is_zero() {
            FIRST_COOL_DOWN
        } else {
            (s.cool_down * 2).min(MAX_COOL_DOWN)
        };
        s.open_until = Some(Instant::now() + s.cool_down);
        Some(s.cool_down)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished && self.trial {
            self.breaker.lock().trial_running = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_three_failures_lets_one_trial_through_and_closes_on_success() {
        let b = Arc::new(Breaker::default());
        for _ in 0..2 {
            assert_eq!(b.enter().unwrap().finish(Outcome::Unreachable), None);
        }
        assert_eq!(
            b.enter().unwrap().finish(Outcome::Unreachable),
            Some(FIRST_COOL_DOWN)
        );
        assert!(b.is_open());
        assert!(b.enter().is_err(), "open: callers fail at once");
        // Pretend the cool-down has passed.
        b.lock().open_until = Some(Instant::now());
        let trial = b.enter().unwrap();
        assert!(trial.is_trial());
        assert!(b.enter().is_err(), "only one trial at a time");
        assert_eq!(
            trial.finish(Outcome::Unreachable),
            Some(FIRST_COOL_DOWN * 2),
            "doubles"
        );
        b.lock().open_until = Some(Instant::now());
        b.enter().unwrap().finish(Outcome::Reached);
        assert!(b.is_healthy());
        assert!(b.enter().is_ok());
    }

    #[test]
    fn a_dropped_trial_frees_its_slot() {
        let b = Arc::new(Breaker::default());
        for _ in 0..3 {
            b.enter().unwrap().finish(Outcome::Unreachable);
        }
        b.lock().open_until = Some(Instant::now());
        drop(b.enter().unwrap());
        assert!(!b.lock().trial_running);
        assert!(b.enter().unwrap().is_trial());
    }
}
