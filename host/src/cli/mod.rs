//! The `trellis` command line: one module per subcommand, each with a `run` function.

mod database_arg;
mod fleet;
mod migrate;
mod plugin;
mod plugin_call;
mod plugin_python;
mod policy;
mod publish;
mod query;
pub mod report;
mod run;
mod serve;
mod vector;

use clap::{Parser, Subcommand, ValueEnum};

/// Trellis runs policy-guarded data workflows: SQL and WebAssembly nodes, checked by Cedar.
#[derive(Debug, Parser)]
#[command(name = "trellis", version = crate::VERSION, propagate_version = true)]
#[command(after_help = "Examples:
  $ trellis serve --watch                      serve ./trellis.toml (or the embedded default)
  $ trellis serve --config trellis.toml --listen 127.0.0.1:0
  $ RUST_LOG=trellis_host=debug trellis --log-format json serve
  $ trellis plugin list

Exit codes:
  0   success
  1   a runtime failure: a database that does not answer, a port in use, a run that failed
  2   bad command-line arguments
  78  a configuration error: trellis.toml, a policy, a workflow or another file the command
      read is invalid (fix the file; the message says where)")]
pub struct Cli {
    /// How log lines on stderr look: `pretty` for people, `json` for collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "TRELLIS_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal unless `NO_COLOR` is set).
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API until SIGINT or SIGTERM.
    Serve(serve::ServeArgs),
    /// Run one workflow as a user and print its (masked) results.
    Run(run::RunArgs),
    /// Run one SQL statement and print its JSON output.
    Query(query::QueryArgs),
    /// Manage WebAssembly plugins: list, new, build.
    Plugin(plugin::PluginArgs),
    /// Check, compile and try out policies: `check`, `compile`, `decide`, `mask`, `explain`.
    Policy(policy::PolicyArgs),
    /// Create, inspect, apply and roll back database migrations.
    Migrate(migrate::MigrateArgs),
    /// Load vectors from a JSONL file into a vector table, or search one.
    Vector(vector::VectorArgs),
    /// Publish policies, plugins and workflows to the fleet's control database, or activate an
    /// earlier generation.
    Publish(publish::PublishArgs),
    /// Show every host following the fleet's control plane: `status`.
    Fleet(fleet::FleetArgs),
}

/// The exit code for a failure: `EXIT_CONFIG` (78) when a file the user wrote is invalid, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    use crate::server::StartError;
    let config = err.chain().any(|cause| {
        cause.is::<crate::config::ConfigError>()
            || cause.is::<crate::policy::LoadError>()
            || cause.is::<crate::workflow::SpecError>()
            || cause.is::<crate::auth::AuthSetupError>()
            || matches!(
                cause.downcast_ref::<crate::fleet::FleetError>(),
                Some(crate::fleet::FleetError::Invalid(_))
            )
            || matches!(
                cause.downcast_ref::<StartError>(),
                Some(StartError::Policy(_) | StartError::PolicyFiles(_) | StartError::Auth(_))
            )
            || matches!(
                cause.downcast_ref::<crate::database::DatabaseError>(),
                Some(
                    crate::database::DatabaseError::Config { .. }
                        | crate::database::DatabaseError::PerTenant { .. }
                        | crate::database::DatabaseError::Tenants { .. }
                )
            )
    });
    if config { EXIT_CONFIG } else { 1 }
}

/// The exit code of a configuration error (`EX_CONFIG` of sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Query(args) => query::run(args).await,
        Command::Plugin(args) => plugin::run(args).await,
        Command::Policy(args) => policy::run(args),
        Command::Migrate(args) => migrate::run(args).await,
        Command::Vector(args) => vector::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Fleet(args) => fleet::run(args).await,
    }
}
