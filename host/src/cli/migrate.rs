//! `trellis migrate`: init, status, plan, apply, rollback, new and resolve, against `--db NAME`
//! or `--url URL`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::migrate::{MigrationSet, Progress, RollbackTarget, Runner, StatusState, new_migration};
use crate::pool::{Pool, PoolConfig};

use super::query::print_stdout;

/// Create, inspect, apply and roll back database migrations.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  $ trellis migrate new create_user_profiles
  $ trellis migrate apply --dry-run                   print the plan and its SQL, change nothing
  $ trellis migrate apply --url postgres://app@127.0.0.1:5432/app
  $ trellis migrate rollback --to 001_create_user_profiles")]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: MigrateCommand,

    /// The migrations directory (one subdirectory per migration).
    #[arg(long, global = true, default_value = "migrations", value_name = "DIR")]
    pub dir: PathBuf,

    /// A configured database (from `trellis.toml`, or `main` of the embedded default).
    #[arg(long, global = true, conflicts_with = "url", default_value = "main")]
    pub db: String,

    /// A database URL instead of a configured name (`postgres://`, `mysql://`, `sqlite://`).
    #[arg(long, global = true)]
    pub url: Option<String>,

    /// Configuration file [default: ./trellis.toml when it exists]
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "FILE",
        env = "TRELLIS_CONFIG"
    )]
    pub config: Option<PathBuf>,
}

/// The `trellis migrate` subcommands.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Create the `trellis_migrations` table (idempotent).
    Init,
    /// List every migration and whether it is applied.
    Status,
    /// Print the migrations `apply` would run, in order.
    Plan {
        /// Only this migration and what it depends on.
        #[arg(long, value_name = "ID")]
        to: Option<String>,
    },
    /// Apply pending migrations, each once, under the database lock.
    Apply {
        /// Only this migration and what it depends on.
        #[arg(long, value_name = "ID")]
        to: Option<String>,
        /// Print the plan and its SQL; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Roll back what depends on a migration, newest first.
    Rollback {
        /// Roll back every migration that depends on ID; ID stays applied.
        #[arg(long, value_name = "ID", required_unless_present = "all")]
        to: Option<String>,
        /// Roll back every applied migration.
        #[arg(long, conflicts_with = "to")]
        all: bool,
    },
    /// Create the next migration directory with templates.
    New {
        /// What it does, in words (`add user settings` → `004_add_user_settings`).
        name: String,
        /// A migration this one needs first (repeatable).
        #[arg(long = "depends-on", value_name = "ID")]
        depends_on: Vec<String>,
    },
    /// Clear a dirty marker after repairing the database by hand.
    Resolve {
        /// The dirty migration.
        id: String,
        /// The repair completed the migration: record it as applied (default: not applied, so
        /// the next `apply` runs it again).
        #[arg(long)]
        applied: bool,
    },
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    if let MigrateCommand::New { name, depends_on } = &args.command {
        let path = new_migration(&args.dir, name, depends_on)?;
        return print_stdout(&format!("created {}", path.display()));
    }
    let set = MigrationSet::from_dir(&args.dir)?;
    let pool = open_pool(&args)?;
    let runner = Runner::new(pool.clone(), set);
    let result = command(&runner, &args.command).await;
    pool.close().await;
    result
}

async fn command(runner: &Runner, command: &MigrateCommand) -> anyhow::Result<()> {
    match command {
        MigrateCommand::Init => {
            runner.init().await?;
            print_stdout("trellis_migrations is ready")
        }
        MigrateCommand::Status => {
            let status = runner.status().await?;
            let mut out = String::new();
            if !status.initialized {
                out.push_str("not initialized: run `trellis migrate init` (apply does it too)\n");
            }
            if status.entries.is_empty() {
                out.push_str("no migrations\n");
            }
            for e in &status.entries {
                let when = e
                    .history
                    .as_ref()
                    .filter(|_| matches!(e.state, StatusState::Applied | StatusState::Drifted))
                    .and_then(|h| h.applied_at.clone())
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{:<8} {:<40} {}{}\n",
                    e.state.as_str(),
                    e.id,
                    e.description,
                    if when.is_empty() {
                        String::new()
                    } else {
                        format!(" (applied {when})")
                    }
                ));
                if let Some(error) = e
                    .history
                    .as_ref()
                    .filter(|h| !h.is_applied())
                    .and_then(|h| h.error.as_ref())
                {
                    out.push_str(&format!("         last error: {error}\n"));
                }
            }
            print_stdout(out.trim_end())
        }
        MigrateCommand::Plan { to } => print_plan(runner, to.as_deref(), false).await,
        MigrateCommand::Apply { to, dry_run: true } => {
            print_plan(runner, to.as_deref(), true).await
        }
        MigrateCommand::Apply { to, dry_run: false } => {
            let mut bar = Bar::new("applying");
            let done = runner.apply(to.as_deref(), &mut bar).await;
            bar.clear();
            let done = done?;
            let mut out = String::new();
            for (id, took) in &done.ran {
                out.push_str(&format!("applied  {id} ({})\n", ms(*took)));
            }
            for id in &done.skipped {
                out.push_str(&format!("skipped  {id} (applied by another runner)\n"));
            }
            if done.ran.is_empty() && done.skipped.is_empty() {
                out.push_str("nothing to apply\n");
            }
            print_stdout(out.trim_end())
        }
        MigrateCommand::Rollback { to, all } => {
            let target = match (to, all) {
                (Some(id), false) => RollbackTarget::To(id.clone()),
                (None, true) => RollbackTarget::All,
                _ => bail!("give `--to ID` or `--all`"),
            };
            let mut bar = Bar::new("rolling back");
            let done = runner.rollback(target, &mut bar).await;
            bar.clear();
            let done = done?;
            let mut out = String::new();
            for (id, took) in &done.ran {
                out.push_str(&format!("rolled back {id} ({})\n", ms(*took)));
            }
            if done.ran.is_empty() {
                out.push_str("nothing to roll back\n");
            }
            print_stdout(out.trim_end())
        }
        MigrateCommand::Resolve { id, applied } => {
            runner.resolve(id, *applied).await?;
            print_stdout(&format!(
                "resolved {id}: recorded as {}",
                if *applied {
                    "applied"
                } else {
                    "not applied (the next apply runs it again)"
                }
            ))
        }
        MigrateCommand::New { .. } => unreachable!("handled before connecting"),
    }
}

async fn print_plan(runner: &Runner, to: Option<&str>, with_sql: bool) -> anyhow::Result<()> {
    let pending = runner.plan(to).await?;
    let mut out = String::new();
    if pending.is_empty() {
        out.push_str("nothing to apply\n");
    }
    for (i, m) in pending.iter().enumerate() {
        out.push_str(&format!("{}. {}  {}\n", i + 1, m.id(), m.description()));
        if with_sql {
            match m.sql(true) {
                Some(sql) => {
                    for line in sql.trim_end().lines() {
                        out.push_str(&format!("   {line}\n"));
                    }
                }
                None => out.push_str("   (Rust code)\n"),
            }
        }
    }
    if with_sql {
        out.push_str("dry run: nothing was changed\n");
    }
    print_stdout(out.trim_end())
}

fn open_pool(args: &MigrateArgs) -> anyhow::Result<Pool> {
    let database = super::database_arg::resolve(
        &args.db,
        args.url.as_deref(),
        args.config.as_deref(),
        "migrate",
    )?;
    let mut pool_config = PoolConfig::from_database(&database)?;
    pool_config.min_connections = 1;
    pool_config.max_connections = 2;
    // One lease holds the lock and runs every step: it must outlive the longest run.
    pool_config.lease_timeout = Duration::from_secs(24 * 60 * 60);
    Ok(Pool::new(pool_config))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The progress bar on stderr: redrawn in place on a terminal, one line per step otherwise.
struct Bar {
    verb: &'static str,
    total: usize,
    done: usize,
    tty: bool,
    started: Instant,
}

impl Bar {
    fn new(verb: &'static str) -> Bar {
        Bar {
            verb,
            total: 0,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    fn draw(&self, id: &str) {
        const WIDTH: usize = 30;
        let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(0);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(
                err,
                "\r\x1b[2K[{}{}] {}/{} {} {id} ({:.1?})",
                "#".repeat(filled),
                "-".repeat(WIDTH - filled),
                self.done,
                self.total,
                self.verb,
                self.started.elapsed()
            );
        } else {
            let _ = writeln!(err, "[{}/{}] {} {id}", self.done + 1, self.total, self.verb);
        }
        let _ = err.flush();
    }

    fn clear(&self) {
        if self.tty && self.total > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Progress for Bar {
    fn start(&mut self, total: usize) {
        self.total = total;
    }

    fn begin(&mut self, id: &str) {
        self.draw(id);
    }

    fn finish(&mut self, id: &str, _elapsed: Option<Duration>) {
        self.done += 1;
        if self.tty {
            self.draw(id);
        }
    }
}
