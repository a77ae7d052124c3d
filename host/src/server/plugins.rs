//! `GET /v1/plugins`: every file in the plugins directory with its status (name, version, kind,
//! interface version, capabilities, loaded|failed, sha256, loaded_at, last error).

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::App;
use crate::plugins::PluginStatus;

/// The body of `GET /v1/plugins`.
#[derive(Debug, Serialize)]
pub struct PluginList {
    /// The watched directory.
    pub dir: String,
    /// Changes to the set of plugins in service since start.
    pub generation: u64,
    /// One entry per `*.wasm` file, sorted by file name.
    pub plugins: Vec<PluginStatus>,
}

/// Lists the plugins.
pub async fn list(State(app): State<App>) -> Json<PluginList> {
    let registry = app.plugins().registry();
    Json(PluginList {
        dir: app.shown_path(registry.dir()),
        generation: *registry.changes().borrow(),
        plugins: registry
            .list()
            .into_iter()
            .map(|mut p| {
                p.error = p.error.map(|e| app.shown_text(&e));
                p
            })
            .collect(),
    })
}
