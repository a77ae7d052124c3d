//! `trellis vector ingest|search`: load a JSONL file of vectors into a vector table, and search it.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::pool::{Pool, PoolConfig};
use crate::vector::{Filter, Metric, NewVector, TableName, VectorNode, VectorStore};

/// Load vectors into a table, or search one.
#[derive(Debug, Args)]
pub struct VectorArgs {
    #[command(subcommand)]
    pub command: VectorCommand,
}

/// The `vector` subcommands.
#[derive(Debug, Subcommand)]
pub enum VectorCommand {
    /// Insert every line of a JSONL file (`{"vector": [...], "metadata": {...}, "id": 7}`).
    Ingest(IngestArgs),
    /// Print the nearest rows to a vector, as the node's JSON output.
    Search(SearchArgs),
}

/// Where the table lives.
#[derive(Debug, Args)]
pub struct Target {
    /// A configured database (from `trellis.toml`, or `main` of the embedded default).
    #[arg(long, conflicts_with = "url", default_value = "main")]
    pub db: String,

    /// A database URL instead of a configured name (`postgres://`, `sqlite://`).
    #[arg(long)]
    pub url: Option<String>,

    /// Configuration file [default: ./trellis.toml when it exists]
    #[arg(long, short = 'c', value_name = "FILE", env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,

    /// The vector table.
    #[arg(long)]
    pub table: String,
}

/// `trellis vector ingest`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  $ trellis vector ingest --db vectors --table docs embeddings.jsonl
  $ trellis vector ingest --url postgres://postgres@127.0.0.1:5433/test --table docs --batch-size 2000 docs.jsonl

Each line: {\"vector\": [0.1, 0.2, ...], \"metadata\": {\"type\": \"article\"}} (`id` optional).
The table is created with the first vector's dimension when it does not exist.")]
pub struct IngestArgs {
    #[command(flatten)]
    pub target: Target,

    /// The JSONL file.
    pub file: PathBuf,

    /// Rows per insert statement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
}

/// `trellis vector search`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  $ trellis vector search --db vectors --table docs --vector '[0.1, 0.2, 0.3]'
  $ trellis vector search --table docs --vector '[0.1, 0.2, 0.3]' --filter '{\"type\": \"article\"}' --limit 5 --ef-search 100")]
pub struct SearchArgs {
    #[command(flatten)]
    pub target: Target,

    /// The query vector, a JSON array of numbers.
    #[arg(long)]
    pub vector: String,

    /// `cosine`, `l2` or `ip`.
    #[arg(long, default_value = "cosine")]
    pub metric: String,

    /// How many hits.
    #[arg(long, default_value_t = 10)]
    pub limit: u32,

    /// A metadata filter, as JSON (`{"type": "article", "year": {"$gte": 2020}}`).
    #[arg(long)]
    pub filter: Option<String>,

    /// HNSW candidate list size (1..=1000).
    #[arg(long)]
    pub ef_search: Option<u32>,

    /// IVFFlat lists to probe.
    #[arg(long)]
    pub probes: Option<u32>,
}

pub async fn run(args: VectorArgs) -> anyhow::Result<()> {
    match args.command {
        VectorCommand::Ingest(a) => ingest(a).await,
        VectorCommand::Search(a) => search(a).await,
    }
}

fn open(target: &Target) -> anyhow::Result<(VectorStore, TableName)> {
    let table = TableName::parse(&target.table)?;
    let database = super::database_arg::resolve(
        &target.db,
        target.url.as_deref(),
        target.config.as_deref(),
        "cli",
    )?;
    let mut pool_config = PoolConfig::from_database(&database)?;
    pool_config.min_connections = 1;
    pool_config.max_connections = 1;
    Ok((VectorStore::new(Pool::new(pool_config)), table))
}

/// One line of the file.
fn parse_line(line: &str, n: usize) -> anyhow::Result<NewVector> {
    let value: Value =
        serde_json::from_str(line).with_context(|| format!("line {n}: not valid JSON"))?;
    let vector = value
        .get("vector")
        .and_then(Value::as_array)
        .with_context(|| format!("line {n}: missing `vector` (an array of numbers)"))?
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as f32)
                .with_context(|| format!("line {n}: `vector` has `{x}` at position {i}"))
        })
        .collect::<anyhow::Result<Vec<f32>>>()?;
    let id = match value.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .with_context(|| format!("line {n}: `id` must be an integer"))?,
        ),
    };
    Ok(NewVector {
        id,
        vector,
        metadata: value.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A progress line on stderr: redrawn in place on a terminal, every 10% otherwise.
struct Progress {
    total: u64,
    started: Instant,
    tty: bool,
    last_decile: u64,
}

impl Progress {
    fn show(&mut self, done_bytes: u64, rows: u64, finished: bool) {
        let pct = (done_bytes * 100)
            .checked_div(self.total)
            .unwrap_or(100)
            .min(100);
        let rate = rows as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let width = 30;
        let filled = (pct as usize * width) / 100;
        let bar = format!(
            "[{}{}] {pct:>3}% {rows} rows, {rate:.0} rows/s",
            "#".repeat(filled),
            "-".repeat(width - filled)
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{bar}");
            if finished {
                let _ = writeln!(err);
            }
        } else if finished || pct / 10 > self.last_decile {
            self.last_decile = pct / 10;
            let _ = writeln!(err, "{bar}");
        }
    }
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open `{}`", args.file.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let (store, table) = open(&args.target)?;
    let result = ingest_into(
        &store,
        &table,
        file,
        total,
        args.batch_size as usize,
        &args.file,
    )
    .await;
    store.pool().close().await;
    let rows = result?;
    crate::cli::query::print_stdout(
        &json!({"table": table.to_string(), "inserted": rows}).to_string(),
    )
}

async fn ingest_into(
    store: &VectorStore,
    table: &TableName,
    file: std::fs::File,
    total: u64,
    batch_size: usize,
    path: &std::path::Path,
) -> anyhow::Result<u64> {
    let mut progress = Progress {
        total,
        started: Instant::now(),
        tty: std::io::stderr().is_terminal(),
        last_decile: 0,
    };
    let reader = BufReader::new(file);
    let mut batch: Vec<NewVector> = Vec::with_capacity(batch_size);
    let mut first_line = 0;
    let mut bytes = 0u64;
    let mut rows = 0u64;
    let mut ready = false;
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("cannot read `{}`", path.display()))?;
        bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_line(&line, n).with_context(|| format!("in `{}`", path.display()))?;
        if !ready {
            if store.dimension(table).await.is_err() {
                store.create_table(table, row.vector.len() as u32).await?;
            }
            ready = true;
        }
        if batch.is_empty() {
            first_line = n;
        }
        batch.push(row);
        if batch.len() == batch_size {
            rows += flush(store, table, &mut batch, first_line, path).await?;
            progress.show(bytes, rows, false);
        }
    }
    rows += flush(store, table, &mut batch, first_line, path).await?;
    progress.show(bytes, rows, true);
    Ok(rows)
}

async fn flush(
    store: &VectorStore,
    table: &TableName,
    batch: &mut Vec<NewVector>,
    first_line: usize,
    path: &std::path::Path,
) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let inserted = store.insert(table, batch).await.with_context(|| {
        format!(
            "inserting lines {first_line}..{} of `{}` (row N of the batch is line {first_line} + N)",
            first_line + batch.len() - 1,
            path.display()
        )
    })?;
    batch.clear();
    Ok(inserted.len() as u64)
}

async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let vector: Value = serde_json::from_str(&args.vector)
        .context("`--vector` must be a JSON array of numbers, e.g. '[0.1, 0.2]'")?;
    let filter = match &args.filter {
        Some(text) => {
            let value: Value = serde_json::from_str(text).unwrap_or(Value::String(text.clone()));
            Filter::from_json(&value)?;
            value
        }
        None => Value::Null,
    };
    Metric::parse(&args.metric)?;
    let mut config = json!({
        "operation": "search", "table_name": args.target.table, "vector": vector,
        "distance_metric": args.metric, "limit": args.limit, "metadata_filter": filter,
    });
    if let Some(ef) = args.ef_search {
        config["ef_search"] = ef.into();
    }
    if let Some(p) = args.probes {
        config["probes"] = p.into();
    }
    let node = VectorNode::from_json(&config)?;
    let (store, _) = open(&args.target)?;
    let result = node.run(&store).await;
    store.pool().close().await;
    crate::cli::query::print_stdout(&serde_json::to_string_pretty(&result?)?)
}
