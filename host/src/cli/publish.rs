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
use crate::fleet::publish::{activate, activate_if, publish};
use crate::fleet::schema;
use crate::fleet::status::wait_staged;

/// Publish a bundle of policies, plugins and workflows to the fleet's control database.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  $ trellis publish ./release --to postgres://admin@db.internal/control
  $ trellis publish ./release --to control          # `[databases.control]` in trellis.toml
  $ trellis publish --to control --activate 12      # roll the fleet back to generation 12
  $ trellis publish ./release --to control --wait   # activate once every live host has staged it

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

    /// Activate the new generation only once every live host has staged it, so the fleet
    /// switches together; until then it is published but not active. Without it, each host
    /// switches as soon as it has staged the generation.
    #[arg(long, conflicts_with = "activate")]
    pub wait: bool,

    /// How long `--wait` waits for the hosts to stage the generation.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,

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
        let pool = schema::open(&control, "trellis publish").await?;
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
    let pool = schema::open(&control, "trellis publish").await?;
    let by = format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "trellis".into()),
        crate::VERSION
    );
    let done = publish_and_wait(&pool, &bundle, &by, args.wait.then_some(args.timeout)).await;
    pool.close().await;
    done
}

/// Publishes `bundle`; with `wait`, activates it once every live host has staged it.
async fn publish_and_wait(
    pool: &crate::pool::Pool,
    bundle: &Bundle,
    by: &str,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let published = publish(pool, bundle, by, wait.is_none()).await?;
    let files = format!(
        "{} files: {} uploaded, {} unchanged",
        bundle.files.len(),
        published.uploaded,
        published.reused
    );
    let n = published.generation;
    let Some(timeout) = wait else {
        println!("published generation {n} ({files}); it is active");
        return Ok(());
    };
    println!("published generation {n} ({files}); waiting for the hosts to stage it");
    match wait_staged(pool, n, timeout).await? {
        Ok(hosts) => {
            activate_if(pool, n, published.active_before).await?;
            println!(
                "generation {n} is active: staged by {} live host(s)",
                hosts.len()
            );
            Ok(())
        }
        Err(missing) => {
            let lines: Vec<String> = missing.iter().map(|m| format!("  {m}")).collect();
            bail!(
                "generation {n} was published but NOT activated:\n{}\n\
                 the fleet keeps serving its active generation; fix the hosts or the bundle, \
                 then `trellis publish --to ... --activate {n}` or publish again",
                lines.join("\n")
            )
        }
    }
}
