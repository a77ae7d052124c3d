//! `trellis query`: run one SQL statement through the AsyncSQLDatabaseNode and print its JSON.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};

use crate::pool::{Pool, PoolConfig};
use crate::sql::{Fetch, Params, SqlNode, SqlNodeConfig};

/// Run one SQL statement and print the node's JSON output on stdout.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  $ trellis query \"SELECT 1 AS one\"                         the `main` database of the config
  $ trellis query --db warehouse \"SELECT * FROM users WHERE id = :id\" --param id=42 --fetch one
  $ trellis query --url postgres://app@127.0.0.1:5432/test \"SELECT :tags::text[] AS t\" --param 'tags=[\"a\",\"b\"]'")]
pub struct QueryArgs {
    /// The SQL, with `:name` placeholders.
    pub sql: String,

    /// A configured database (from `trellis.toml`, or `main` of the embedded default).
    #[arg(long, conflicts_with = "url", default_value = "main")]
    pub db: String,

    /// A database URL instead of a configured name (`postgres://`, `mysql://`, `sqlite://`).
    #[arg(long)]
    pub url: Option<String>,

    /// Configuration file [default: ./trellis.toml when it exists]
    #[arg(long, short = 'c', value_name = "FILE", env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,

    /// A parameter `NAME=VALUE`; VALUE is JSON when it parses as JSON, a string otherwise.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    pub params: Vec<String>,

    /// How many rows to return.
    #[arg(long, value_enum, default_value_t = FetchArg::All)]
    pub fetch: FetchArg,

    /// Rows to return with `--fetch many`.
    #[arg(long, default_value_t = 100)]
    pub fetch_size: usize,

    /// Time limit for the statement, e.g. `5s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

/// `--fetch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FetchArg {
    /// The first row, or null.
    One,
    /// Every row.
    All,
    /// The first `--fetch-size` rows.
    Many,
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let database =
        super::database_arg::resolve(&args.db, args.url.as_deref(), args.config.as_deref(), "cli")?;
    let mut pool_config = PoolConfig::from_database(&database)?;
    pool_config.min_connections = 1;
    pool_config.max_connections = 1;
    let pool = Pool::new(pool_config);
    let mut params = Map::new();
    for param in &args.params {
        let (name, value) = param
            .split_once('=')
            .with_context(|| format!("`--param {param}`: write `NAME=VALUE`"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        params.insert(name.to_owned(), value);
    }
    let mut node_config = SqlNodeConfig::new(&args.sql);
    if !params.is_empty() {
        node_config.params = Params::Named(params);
    }
    node_config.fetch = match args.fetch {
        FetchArg::One => Fetch::One,
        FetchArg::All => Fetch::All,
        FetchArg::Many => Fetch::Many(args.fetch_size.max(1)),
    };
    node_config.timeout = args.timeout;
    let result = SqlNode::new(pool.clone(), node_config).run().await;
    pool.close().await;
    let output = result?;
    print_stdout(&serde_json::to_string_pretty(&output)?)
}

/// Writes `text` and a newline to stdout; a closed pipe (`| head`) is not an error.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
