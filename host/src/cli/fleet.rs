//! `trellis fleet status --control DATABASE`: every host following the control plane, with the
//! generation it has staged and serves and its last error, and the published generations.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::fleet::schema;
use crate::fleet::status::{FleetStatus, status};

/// Show what the fleet serves.
#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// The `fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every host's generations and last error, and the published generations.
    #[command(after_help = "Examples:
  $ trellis fleet status --control postgres://admin@db.internal/control
  $ trellis fleet status --control control --json

A host is live while it writes its heartbeat (every `[control] heartbeat_interval`, 1s by
default); one silent for three intervals (and at least 5s) is shown as not live.")]
    Status {
        /// The control database: a PostgreSQL URL, or a database name from trellis.toml.
        #[arg(long, value_name = "DATABASE")]
        control: String,
        /// Print the status as JSON (as `GET /v1/fleet` answers).
        #[arg(long)]
        json: bool,
        /// Configuration file [default: ./trellis.toml when it exists, else the embedded default]
        #[arg(long, short = 'c', value_name = "FILE", env = "TRELLIS_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let FleetCommand::Status {
        control,
        json,
        config,
    } = args.command;
    let config = Config::discover(config.as_deref())?;
    let control = super::publish::control_database(&control, &config)?;
    let pool = schema::open(&control, "trellis fleet").await?;
    let read = status(&pool).await;
    pool.close().await;
    let read = read?;
    if json {
        println!("{}", serde_json::to_string_pretty(&read)?);
    } else {
        print!("{}", render(&read));
    }
    Ok(())
}

/// The status as a table.
fn render(s: &FleetStatus) -> String {
    let show = |g: Option<i64>| g.map_or_else(|| "-".to_owned(), |g| g.to_string());
    let mut out = format!(
        "active generation: {}   latest published: {}\n",
        show(s.active),
        show(s.latest)
    );
    if s.hosts.is_empty() {
        out.push_str("no host follows this control plane\n");
        return out;
    }
    let rows: Vec<[String; 7]> = s
        .hosts
        .iter()
        .map(|h| {
            [
                h.id.clone(),
                h.address.clone(),
                if h.live { "live" } else { "silent" }.to_owned(),
                show(h.staged),
                show(h.active),
                h.version.clone(),
                h.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "HOST",
        "ADDRESS",
        "STATE",
        "STAGED",
        "ACTIVE",
        "VERSION",
        "LAST ERROR",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 6 {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    out.push_str(&line(header));
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}
