//! Per-workload peak concurrency, for pre-warming: when a burst of a known workload starts, the
//! pool opens connections up to the 90th percentile of that workload's past peaks.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How many past peaks are remembered per workload.
const HISTORY: usize = 50;

#[derive(Debug, Default)]
pub(crate) struct Workloads {
    /// By workload name, hashed with foldhash's fast hash rather than SipHash: it is taken twice
    /// per statement of a served run, and the names come from the configuration (workflow
    /// names), not from callers, so there is no flooding to resist.
    inner: Mutex<HashMap<String, Workload, foldhash::fast::RandomState>>,
}

#[derive(Debug, Default)]
struct Workload {
    current: usize,
    peak: usize,
    peaks: VecDeque<usize>,
    /// The 90th percentile of `peaks`, kept as they change (read at every burst's start).
    p90: Option<usize>,
}

impl Workload {
    fn compute_p90(&self) -> Option<usize> {
        if self.peaks.is_empty() {
            return None;
        }
        let mut sorted: Vec<usize> = self.peaks.iter().copied().collect();
        sorted.sort_unstable();
        let rank = (sorted.len() * 9).div_ceil(10).max(1);
        Some(sorted[rank - 1])
    }
}

impl Workloads {
    /// A lease for `name` starts; at the start of a burst, returns the pre-warm target.
    pub(crate) fn begin(&self, name: &str) -> Option<usize> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // The name is copied only the first time it is seen.
        if !map.contains_key(name) {
            map.insert(name.to_owned(), Workload::default());
        }
        let w = map.get_mut(name).expect("inserted above");
        let starting = w.current == 0;
        w.current += 1;
        w.peak = w.peak.max(w.current);
        if starting { w.p90 } else { None }
    }

    /// A lease for `name` ended; when none is left, the burst's peak joins the history.
    pub(crate) fn end(&self, name: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = map.get_mut(name) {
            w.current = w.current.saturating_sub(1);
            if w.current == 0 && w.peak > 0 {
                if w.peaks.len() == HISTORY {
                    w.peaks.pop_front();
                }
                w.peaks.push_back(w.peak);
                w.peak = 0;
                w.p90 = w.compute_p90();
            }
        }
    }

    /// The pre-warm target for `name`: the 90th percentile of its past peaks.
    pub(crate) fn target(&self, name: &str) -> Option<usize> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name).and_then(|w| w.p90)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p90_of_burst_peaks() {
        let w = Workloads::default();
        assert_eq!(w.begin("report"), None);
        // Ten bursts: peaks 1..=10.
        w.end("report");
        for peak in 2..=10 {
            for _ in 0..peak {
                w.begin("report");
            }
            for _ in 0..peak {
                w.end("report");
            }
        }
        assert_eq!(w.target("report"), Some(9));
        assert_eq!(w.begin("report"), Some(9));
        assert_eq!(
            w.begin("report"),
            None,
            "only the start of a burst pre-warms"
        );
        assert_eq!(w.target("other"), None);
    }
}
