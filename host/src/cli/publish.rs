//! `trellis publish DIR --to DATABASE`: checks a bundle (`policies/`, `plugins/`, `workflows/`)
//! exactly as a host would load it, then writes it to the fleet's control database as a new,
//! active generation in one transaction; or, with `--activate N`, makes an earlier generation
//! active again.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::config::Config;
use crate::config::database::{DatabaseConfig, parse_database_url};
use crate::fleet::bundle::{Bundle, check};
use crate::fleet::publish::{activate, publish};
use crate::fleet::schema;

/// Publish a bundle of policies, plugins and workflows to the fleet's control database.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  $ trellis publish ./release --to postgres://admin@db.internal/control
  $ trellis publish ./release --to control          # `[databases.control]` in trellis.toml
  $ trellis publish --to control --activate 12      # roll the fleet back to generation 12

Nothing is written unless every file loads: the rules compile, the .cedar files validate, every
plugin loads, and every workflow checks against the plugins and the databases of trellis.toml.")]
pub struct PublishArgs {
    /// The bundle: a directory with `policies/`, `plugins/` and `workflows/`, as a served one.
    #[arg(required_unless_present = "activate")]
    pub dir: Option<PathBuf>,

    /// The control database: a PostgreSQL URL, or a database name from trellis.toml. It must be
    /// reached directly, not through a transaction-mode pooler.
    #[arg(long, value_name = "DATABASE")]
    pub to: String,

    /// Make generation N, published earlier, the active one instead of publishing.
    #[arg(long, value_name = "N", conflicts_with = "dir")]
    pub activate: Option<i64>,

    /// Configuration file [default: ./trellis.toml when it exists, else the embedded default]
    #[arg(long, short = 'c', value_name = "FILE", env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The control database named by `--to`: a URL, or a configured database's name.
pub(crate) fn control_database(to: &str, config: &Config) -> anyhow::Result<DatabaseConfig> {
    if to.contains("://") {
        let target = parse_database_url(to).map_err(|e| anyhow::anyhow!("invalid `--to`: {e}"))?;
        return Ok(DatabaseConfig::new("control", target));
    }
    match config.database(to) {
        Some(found) => Ok(found.clone()),
        None => bail!(
            "no database named `{to}` in {}; give a URL, or one of: {}",
            config.source,
            config
                .databases
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let config = Config::discover(args.config.as_deref())?;
    let control = control_database(&args.to, &config)?;
    if let Some(generation) = args.activate {
        let pool = schema::open(&control).await?;
        let done = activate(&pool, generation).await;
        pool.close().await;
        done?;
        println!("generation {generation} is active");
        return Ok(());
    }
    let dir = args.dir.expect("clap requires DIR without --activate");
    if !dir.is_dir() {
        bail!("`{}` is not a directory", dir.display());
    }
    let bundle = Bundle::read(&dir)?;
    check(&dir, &config).await?;
    let pool = schema::open(&control).await?;
    let by = format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "trellis".into()),
        crate::VERSION
    );
    let done = publish(&pool, &bundle, &by).await;
    pool.close().await;
    let published = done?;
    println!(
        "published generation {} ({} files: {} uploaded, {} unchanged); it is active",
        published.generation,
        bundle.files.len(),
        published.uploaded,
        published.reused
    );
    Ok(())
}
