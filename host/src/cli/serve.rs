//! `trellis serve`: load the configuration, open the databases, and serve HTTP until stopped.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::Config;

/// Serve the HTTP API until SIGINT or SIGTERM; in-flight requests finish first.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  $ trellis serve                              ./trellis.toml if present, else the embedded default
  $ trellis serve --config trellis.toml --watch
  $ trellis serve --listen 127.0.0.1:0         pick a free port; the address is printed on stdout
  $ trellis serve --control postgres://db.internal/control
                                               follow a fleet's control plane (`trellis publish`)")]
pub struct ServeArgs {
    /// Configuration file [default: ./trellis.toml when it exists, else the embedded default]
    #[arg(long, short = 'c', value_name = "FILE", env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,

    /// Reload plugins, policies and workflows when their files change.
    #[arg(long)]
    pub watch: bool,

    /// Address to listen on, overriding `server.listen` [default: 127.0.0.1:8700]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Follow a fleet's control plane instead of the directories: serve the generation
    /// `trellis publish` made active there. A PostgreSQL URL or a database name from
    /// trellis.toml, reached directly (not through a transaction-mode pooler) [default:
    /// `[control] database`]
    #[arg(long, value_name = "DATABASE", conflicts_with = "watch")]
    pub control: Option<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let stop = crate::shutdown::install().context("cannot install the SIGINT/SIGTERM handlers")?;
    let mut config = Config::discover(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    tracing::info!(config = %config.source, "configuration loaded");
    let listen = config.server.listen;
    let control = match args.control.as_ref().or(config.control.database.as_ref()) {
        Some(to) if args.watch => {
            anyhow::bail!("`--watch` serves the directories; a host following `{to}` cannot")
        }
        Some(to) => Some(super::publish::control_database(to, &config)?),
        None => None,
    };
    let app = crate::server::App::start(config, args.watch, control).await?;
    // Bound only now: until start-up has finished (databases open, migrations applied,
    // policies, plugins and workflows read), a client is refused at once instead of queueing.
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            app.shutdown().await;
            return Err(e).with_context(|| format!("cannot listen on `{listen}`"));
        }
    };
    let addr = listener.local_addr()?;
    if let Some(follower) = app.follower() {
        follower.serving_at(addr.to_string());
    }
    // The one line on stdout: scripts and tests read the bound address from it.
    println!("trellis listening on http://{addr}");
    crate::server::serve(app, listener, stop).await?;
    Ok(())
}
