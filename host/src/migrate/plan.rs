//! The order migrations run in: topological by dependencies, ties broken by id, so the plan is
//! the same on every machine. A missing dependency or a cycle is an error naming it.

use std::collections::{BTreeMap, BTreeSet};

use super::source::MigrationSet;

/// Every known migration in the order it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    order: Vec<String>,
    deps: BTreeMap<String, Vec<String>>,
}

/// Why no order exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum PlanError {
    /// A migration depends on an id nobody has.
    #[error("migration `{id}` depends on `{missing}`, which does not exist")]
    #[diagnostic(help(
        "check the `dependencies` in `{id}/migration.toml`; `trellis migrate status` lists the known ids"
    ))]
    MissingDependency {
        /// The migration.
        id: String,
        /// The id it names.
        missing: String,
    },
    /// The dependencies form a cycle.
    #[error(
        "migrations depend on each other in a cycle: {}",
        cycle.iter().map(|id| format!("`{id}`")).collect::<Vec<_>>().join(" → ")
    )]
    #[diagnostic(help("remove one of these dependencies"))]
    Cycle {
        /// The ids around the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
}

impl Plan {
    /// Orders `set`.
    pub fn new(set: &MigrationSet) -> Result<Plan, PlanError> {
        let deps: BTreeMap<String, Vec<String>> = set
            .iter()
            .map(|m| {
                let mut d = m.dependencies();
                d.sort();
                d.dedup();
                (m.id().to_owned(), d)
            })
            .collect();
        for (id, ds) in &deps {
            if let Some(missing) = ds.iter().find(|d| !deps.contains_key(*d)) {
                return Err(PlanError::MissingDependency {
                    id: id.clone(),
                    missing: missing.clone(),
                });
            }
        }
        // Kahn's algorithm, always taking the smallest ready id.
        let mut waiting: BTreeMap<&str, usize> =
            deps.iter().map(|(id, d)| (id.as_str(), d.len())).collect();
        let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, ds) in &deps {
            for d in ds {
                dependents.entry(d.as_str()).or_default().push(id.as_str());
            }
        }
        let mut ready: BTreeSet<&str> = waiting
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(id, _)| *id)
            .collect();
        let mut order = Vec::with_capacity(deps.len());
        while let Some(id) = ready.pop_first() {
            order.push(id.to_owned());
            for next in dependents.get(id).into_iter().flatten() {
                let n = waiting.get_mut(next).expect("every dependent is known");
                *n -= 1;
                if *n == 0 {
                    ready.insert(next);
                }
            }
        }
        if order.len() < deps.len() {
            let placed: BTreeSet<&str> = order.iter().map(String::as_str).collect();
            return Err(PlanError::Cycle {
                cycle: find_cycle(&deps, &placed),
            });
        }
        Ok(Plan { order, deps })
    }

    /// Every id, in apply order.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// `id` and everything it depends on, directly or not.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![id.to_owned()];
        while let Some(next) = stack.pop() {
            if seen.insert(next.clone()) {
                stack.extend(self.deps.get(&next).into_iter().flatten().cloned());
            }
        }
        seen
    }

    /// Everything that depends on `id`, directly or not (without `id`).
    pub fn descendants(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        // Apply order puts every dependent after its dependencies: one pass suffices.
        for other in &self.order {
            if self
                .deps
                .get(other)
                .is_some_and(|ds| ds.iter().any(|d| d == id || seen.contains(d)))
            {
                seen.insert(other.clone());
            }
        }
        seen
    }

    /// Whether `id` is known.
    pub fn contains(&self, id: &str) -> bool {
        self.deps.contains_key(id)
    }
}

/// A cycle among the ids not `placed` (every one of them is on or behind a cycle).
fn find_cycle(deps: &BTreeMap<String, Vec<String>>, placed: &BTreeSet<&str>) -> Vec<String> {
    let start = deps
        .keys()
        .find(|id| !placed.contains(id.as_str()))
        .expect("a cycle leaves ids unplaced");
    // Follow unplaced dependencies until an id repeats; an unplaced id always has one.
    let mut path: Vec<&str> = vec![start];
    loop {
        let last = *path.last().expect("path is never empty");
        let next = deps[last]
            .iter()
            .find(|d| !placed.contains(d.as_str()))
            .expect("an unplaced id waits on an unplaced dependency");
        if let Some(pos) = path.iter().position(|p| *p == next.as_str()) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|s| (*s).to_owned()).collect();
            // `a → c`: `a` depends on `c`. Start at the smallest id, so the report is stable.
            let min = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, id)| id.as_str())
                .map(|(i, _)| i)
                .unwrap_or(0);
            cycle.rotate_left(min);
            cycle.push(cycle[0].clone());
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::migrate::source::{Migration, Step, StepFuture};

    struct M(&'static str, Vec<&'static str>);

    impl Migration for M {
        fn id(&self) -> &str {
            self.0
        }
        fn description(&self) -> &str {
            ""
        }
        fn dependencies(&self) -> Vec<String> {
            self.1.iter().map(|s| (*s).to_owned()).collect()
        }
        fn up<'a>(&'a self, _db: &'a Step<'a>) -> StepFuture<'a> {
            Box::pin(async { Ok(()) })
        }
    }

    fn set(items: &[(&'static str, &[&'static str])]) -> MigrationSet {
        let mut s = MigrationSet::new();
        for (id, deps) in items {
            s.register(Arc::new(M(id, deps.to_vec()))).unwrap();
        }
        s
    }

    #[test]
    fn orders_by_dependencies_then_id() {
        let plan = Plan::new(&set(&[
            ("c", &["a"]),
            ("a", &["b"]),
            ("b", &[]),
            ("d", &[]),
        ]))
        .unwrap();
        assert_eq!(plan.order(), ["b", "a", "c", "d"]);
        assert_eq!(
            plan.ancestors("c").into_iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            plan.descendants("b").into_iter().collect::<Vec<_>>(),
            ["a", "c"]
        );
    }

    #[test]
    fn names_a_missing_dependency() {
        let err = Plan::new(&set(&[("a", &["zz"])])).unwrap_err();
        assert_eq!(
            err,
            PlanError::MissingDependency {
                id: "a".into(),
                missing: "zz".into()
            }
        );
        assert!(err.to_string().contains("`a` depends on `zz`"));
    }

    #[test]
    fn names_the_cycle() {
        let err = Plan::new(&set(&[
            ("a", &["c"]),
            ("b", &["a"]),
            ("c", &["b"]),
            ("x", &[]),
            ("y", &["a"]),
        ]))
        .unwrap_err();
        let PlanError::Cycle { cycle } = &err else {
            panic!("{err}")
        };
        assert_eq!(cycle, &["a", "c", "b", "a"]);
        assert!(err.to_string().contains("`a` → `c` → `b` → `a`"), "{err}");
    }
}
