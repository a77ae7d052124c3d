//! The `--db NAME` / `--url URL` pair shared by `query`, `migrate` and `vector`: which database
//! a command talks to.

use std::path::Path;

use anyhow::bail;

use crate::config::Config;
use crate::config::database::{DatabaseConfig, parse_database_url};

/// The database named `db` in the configuration (`config`, else `./trellis.toml`, else the
/// embedded default), or the one at `url` when given (called `url_name` in errors and pools).
pub fn resolve(
    db: &str,
    url: Option<&str>,
    config: Option<&Path>,
    url_name: &str,
) -> anyhow::Result<DatabaseConfig> {
    if let Some(url) = url {
        let target =
            parse_database_url(url).map_err(|e| anyhow::anyhow!("invalid `--url`: {e}"))?;
        return Ok(DatabaseConfig::new(url_name, target));
    }
    let config = Config::discover(config)?;
    match config.database(db) {
        Some(found) => Ok(found.clone()),
        None => {
            let known: Vec<&str> = config.databases.keys().map(String::as_str).collect();
            bail!(
                "no database named `{db}` in {}; configured: {}",
                config.source,
                known.join(", ")
            );
        }
    }
}
