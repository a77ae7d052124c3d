//! The loaded `workflows/` directory: every workflow by name, swapped atomically as one
//! generation on reload. A file that fails to load keeps its last good version in service and its
//! error is listed until it is fixed; a deleted file's workflow goes away. In watch mode the
//! directory is reloaded when its files change, and also when the plugins change (a workflow
//! naming a plugin that was missing becomes valid once the plugin is loaded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::watch::{DirWatcher, Reads};

use super::spec::{Known, Workflow};

/// One generation of the directory.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Counts reloads that changed something, from 1.
    pub generation: u64,
    /// Workflows by name.
    pub workflows: BTreeMap<String, Arc<Workflow>>,
    /// The file each workflow came from.
    pub files: BTreeMap<PathBuf, String>,
    /// Files that failed to load, with the error (their last good version, if any, is served).
    pub errors: BTreeMap<PathBuf, super::spec::SpecError>,
    /// When this generation was made.
    pub loaded_at: Option<SystemTime>,
}

/// The workflows directory.
pub struct WorkflowSet {
    dir: PathBuf,
    known: Arc<dyn Known + Send + Sync>,
    current: ArcSwap<Loaded>,
    reloading: Mutex<()>,
    /// The generation in force, sent on every reload that changed something.
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for WorkflowSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowSet")
            .field("dir", &self.dir)
            .field("generation", &self.current.load().generation)
            .finish()
    }
}

impl WorkflowSet {
    /// Loads `dir` (a missing directory is an empty set); `known` checks plugin and database
    /// names.
    pub fn load(dir: impl Into<PathBuf>, known: Arc<dyn Known + Send + Sync>) -> WorkflowSet {
        let set = WorkflowSet {
            dir: dir.into(),
            known,
            current: ArcSwap::from_pointee(Loaded::default()),
            reloading: Mutex::new(()),
            changes: watch::channel(0).0,
        };
        set.reload();
        set
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Sees each generation swapped in by a reload.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The workflow called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Workflow>> {
        self.current.load().workflows.get(name).cloned()
    }

    /// Loads every workflow file of `dir`, checked against `known`, without putting them in
    /// service (a control-plane generation being staged). Files that fail are in `errors`.
    pub fn prepare(dir: &Path, known: Arc<dyn Known + Send + Sync>) -> Arc<Loaded> {
        WorkflowSet::load(dir, known).current()
    }

    /// Puts `loaded` (from [`WorkflowSet::prepare`]) in service.
    pub fn install(&self, loaded: Arc<Loaded>) {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.current.store(loaded);
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Re-reads every `*.toml` file; swaps in a new generation if anything changed. Returns the
    /// generation in force afterwards.
    pub fn reload(&self) -> u64 {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = self.current.load_full();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_workflow_file(p))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the workflows directory; keeping the workflows loaded");
                return previous.generation;
            }
        };
        files.sort();
        let mut next = Loaded::default();
        for path in files {
            let result = Workflow::load(&path, self.known.as_ref()).and_then(|w| {
                match next.workflows.get(&w.name) {
                    Some(other) => Err(super::spec::SpecError {
                        location: path.display().to_string(),
                        message: format!(
                            "workflow `{}` is already defined in `{}`",
                            w.name,
                            other
                                .source
                                .as_deref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                        hint: Some("workflow names are unique; set `name` in one of them".into()),
                        snippet: None,
                    }),
                    None => Ok(w),
                }
            });
            match result {
                Ok(workflow) => {
                    next.files.insert(path, workflow.name.clone());
                    next.workflows
                        .insert(workflow.name.clone(), Arc::new(workflow));
                }
                Err(e) => {
                    // Keep serving the last good version of this file's workflow.
                    if let Some(name) = previous.files.get(&path)
                        && let Some(old) = previous.workflows.get(name)
                        && !next.workflows.contains_key(name)
                    {
                        next.files.insert(path.clone(), name.clone());
                        next.workflows.insert(name.clone(), old.clone());
                    }
                    tracing::error!(file = %path.display(), "workflow not loaded: {e}");
                    next.errors.insert(path, e);
                }
            }
        }
        let changed = previous.generation == 0
            || next.errors != previous.errors
            || next.files != previous.files
            || next.workflows.len() != previous.workflows.len()
            || next.workflows.iter().any(|(name, w)| {
                previous
                    .workflows
                    .get(name)
                    .is_none_or(|old| !same_definition(old, w))
            });
        if !changed {
            return previous.generation;
        }
        next.generation = previous.generation + 1;
        next.loaded_at = Some(SystemTime::now());
        // Unchanged workflows keep their Arc, so in-flight runs and new ones share them.
        for (name, w) in next.workflows.iter_mut() {
            if let Some(old) = previous.workflows.get(name)
                && same_definition(old, w)
            {
                *w = old.clone();
            }
        }
        let generation = next.generation;
        tracing::info!(
            dir = %self.dir.display(),
            generation,
            workflows = next.workflows.len(),
            errors = next.errors.len(),
            "workflows loaded"
        );
        self.current.store(Arc::new(next));
        self.changes.send_replace(generation);
        generation
    }
}

fn same_definition(a: &Workflow, b: &Workflow) -> bool {
    a.name == b.name
        && a.description == b.description
        && a.inputs == b.inputs
        && a.nodes == b.nodes
        && a.connections == b.connections
        && a.node_timeout == b.node_timeout
}

fn is_workflow_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

/// Reloads a [`WorkflowSet`] when its directory (once its changed files are stable; see
/// [`crate::watch`]) or the plugins change.
pub struct WorkflowWatcher {
    inner: DirWatcher,
}

impl WorkflowWatcher {
    /// Starts watching `set`'s directory (created if missing) and `plugin_changes`.
    pub fn start(
        set: Arc<WorkflowSet>,
        plugin_changes: watch::Receiver<u64>,
    ) -> Result<WorkflowWatcher, notify::Error> {
        let dir = set.dir().to_owned();
        let inner = DirWatcher::start(
            &dir,
            is_workflow_file,
            Reads::WholeDirectory,
            crate::watch::DEFAULT_SETTLE,
            Some(plugin_changes),
            move |_| {
                set.reload();
            },
        )?;
        tracing::info!(dir = %dir.display(), "watching workflows");
        Ok(WorkflowWatcher { inner })
    }

    /// Stops watching (waiting for a reload in progress).
    pub async fn stop(self) {
        self.inner.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::AnyName;

    #[test]
    fn a_broken_file_keeps_its_last_good_version() {
        let dir = std::env::temp_dir().join(format!("trellis-wfset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("report.toml");
        std::fs::write(
            &file,
            "[[nodes]]\nid = \"a\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 1\" }\n",
        )
        .unwrap();
        let set = WorkflowSet::load(&dir, Arc::new(AnyName));
        assert_eq!(set.current().generation, 1);
        let first = set.get("report").unwrap();
        // Unchanged: same generation, same Arc.
        assert_eq!(set.reload(), 1);
        assert!(Arc::ptr_eq(&first, &set.get("report").unwrap()));
        std::fs::write(&file, "[[nodes]]\nid = \"a\"\ntype = \"Bogus\"\n").unwrap();
        assert_eq!(set.reload(), 2);
        let now = set.current();
        assert!(Arc::ptr_eq(&first, &now.workflows["report"]));
        assert!(
            now.errors[&file]
                .to_string()
                .contains("unknown node type `Bogus`"),
            "{:?}",
            now.errors
        );
        std::fs::remove_file(&file).unwrap();
        assert_eq!(set.reload(), 3);
        assert!(set.get("report").is_none());
        assert!(set.current().errors.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
