//! `trellis plugin call`: runs one plugin file from the command line as `serve` runs it (the
//! `[plugins]` limits of the discovered `trellis.toml`, its config or params checked against the
//! schema it declares, a masking plugin failing closed), in the way of `extism call`. With
//! `--db NAME --user JSON`, a node plugin's statements reach that configured database, each
//! decided by the configured policies for that user, as in a served run.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::database::Databases;
use crate::diagnostic::Hinted;
use crate::plugins::{
    DatabaseGate, MaskInput, Plugin, PluginEngine, PluginKind, PluginRegistry, REDACTED,
    ReloadOutcome, engine_options,
};
use crate::policy::{EngineSettings, PolicyEngine, PreparedUser, UserContext};
use crate::workflow::{DatabaseCaller, PluginDatabase, decided_by};

#[derive(Debug, Args)]
pub(super) struct CallArgs {
    /// The plugin's `.wasm` file.
    file: PathBuf,
    /// The records, one JSON value per line (`-`: standard input); a masking plugin masks
    /// each value.
    #[arg(long, value_name = "FILE", default_value = "-")]
    records: PathBuf,
    /// A node plugin's config key, as `KEY=VALUE` (repeatable); VALUE is read as JSON when it
    /// is JSON, else as a string.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// A masking plugin's params (a masking rule's `params`), as a JSON object.
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
    /// The field path a masking plugin is told each value sits at.
    #[arg(long, value_name = "PATH", default_value = "value")]
    field: String,
    /// A database of trellis.toml the plugin's statements may reach (repeatable); each
    /// statement is decided by the configured policies for `--user`. Without it, every
    /// statement is denied.
    #[arg(long = "db", value_name = "NAME", requires = "user")]
    databases: Vec<String>,
    /// The user the call is for, as `serve` would see them: a JSON object like
    /// `{"user_id": "u1", "roles": ["analyst"], "attributes": {"department": "finance"}}`.
    #[arg(long, value_name = "JSON")]
    user: Option<String>,
}

/// Runs the call; prints each result as a line of JSON. A record the plugin refuses (or a value
/// it fails to mask, which is then redacted) is named on stderr, and the command fails.
pub(super) async fn run(args: CallArgs) -> anyhow::Result<()> {
    let config = Config::discover(None)?;
    let records = read_records(&args.records)?;
    let records_len = records.len();
    let (registry, plugin) = load(&config, &args.file).await?;
    let outcome = match plugin.kind() {
        PluginKind::Node => match database_gate(&config, &plugin, &args).await {
            Ok(gate) => transform(&plugin, &args.config, records, gate).await,
            Err(e) => Err(e),
        },
        PluginKind::Masking => mask(&plugin, args.params.as_deref(), &args.field, records).await,
    };
    // The engine's epoch ticker (which ends a call at its deadline) stops only now.
    registry.shutdown();
    let total = records_len;
    let (results, failed) = outcome?;
    for line in &results {
        println!("{line}");
    }
    if failed > 0 {
        bail!("{failed} of {total} records failed (see above)");
    }
    Ok(())
}

/// Loads `file` alone, with the configured engine and limits.
async fn load(config: &Config, file: &Path) -> anyhow::Result<(PluginRegistry, Arc<Plugin>)> {
    let file =
        std::fs::canonicalize(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let engine = PluginEngine::new(engine_options(config))?;
    let registry = PluginRegistry::new(engine, dir, config.plugins.limits.clone());
    let (registry, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = registry.load_file(&file);
        (registry, outcome)
    })
    .await
    .context("loading the plugin failed")?;
    match outcome {
        ReloadOutcome::Loaded(plugin) => Ok((registry, plugin)),
        other => {
            registry.shutdown();
            match other {
                ReloadOutcome::Failed(error) => Err(error.into()),
                _ => bail!("the plugin file did not load"),
            }
        }
    }
}

/// One JSON value per non-empty line.
fn read_records(path: &Path) -> anyhow::Result<Vec<Value>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut records = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read `{}`", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| {
            Hinted::new(
                format!("line {} of the records is not JSON: {e}", number + 1),
                "give one JSON value per line (JSON Lines)",
            )
        })?;
        records.push(record);
    }
    Ok(records)
}

/// `KEY=VALUE` pairs as a config object.
fn config_of(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut config = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!(Hinted::new(
                format!("`--config {pair}` is not KEY=VALUE"),
                "e.g. `--config field=salary` or `--config limit=10`"
            ));
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        config.insert(key.to_owned(), value);
    }
    Ok(config)
}

/// Refuses settings the plugin's declared schema does not take.
fn check(plugin: &Plugin, what: &str, settings: &Map<String, Value>) -> anyhow::Result<()> {
    let problems = plugin.config_problems(settings, &[]);
    if !problems.is_empty() {
        bail!(Hinted::new(
            format!("{what} for `{}`: {}", plugin.label(), problems.join("; ")),
            "`trellis plugin list --json` shows each plugin's `config_schema`"
        ));
    }
    Ok(())
}

/// The databases of `--db`, opened, behind the configured policies for `--user`: what a served
/// run gives a plugin node (`None` without `--db`: every statement denied).
async fn database_gate(
    config: &Config,
    plugin: &Plugin,
    args: &CallArgs,
) -> anyhow::Result<Option<Arc<dyn DatabaseGate>>> {
    if args.databases.is_empty() {
        return Ok(None);
    }
    let user: UserContext = match args.user.as_deref().map(serde_json::from_str) {
        Some(Ok(user)) => user,
        _ => bail!(Hinted::new(
            "`--user` must be a JSON object with at least `user_id`",
            r#"e.g. --user '{"user_id": "u1", "attributes": {"department": "finance"}}'"#
        )),
    };
    let mut databases = Databases::default();
    for name in &args.databases {
        let Some(db) = config.database(name) else {
            bail!(Hinted::new(
                format!("no database `{name}` in the configuration"),
                "`--db` names a `[databases.NAME]` of trellis.toml"
            ));
        };
        let pool = crate::database::open(db)
            .await
            .with_context(|| format!("cannot open database `{name}`"))?;
        databases = databases.with_pool(name.clone(), pool);
    }
    let timezone = jiff::tz::TimeZone::get(&config.policy.timezone)
        .with_context(|| format!("unknown time zone `{}`", config.policy.timezone))?;
    let settings = EngineSettings {
        timezone,
        ..EngineSettings::default()
    };
    let dir = config.paths.policies.clone();
    let engine = tokio::task::spawn_blocking(move || PolicyEngine::load(&dir, settings))
        .await
        .context("loading the policies failed")??;
    let engine = Arc::new(engine);
    let tenant: Arc<str> = Arc::from(user.tenant_id.as_str());
    let policy = decided_by(
        engine.clone(),
        engine.generation(),
        PreparedUser::new(user),
        serde_json::json!({"workflow": CALL_WORKFLOW}),
        jiff::Timestamp::now(),
    );
    Ok(Some(Arc::new(PluginDatabase::new(
        databases,
        tenant,
        Some(policy),
        DatabaseCaller {
            plugin: plugin.name().to_owned(),
            plugin_version: plugin.version().to_owned(),
            node: CALL_NODE.to_owned(),
            workflow: CALL_WORKFLOW.to_owned(),
        },
    ))))
}

/// The workflow and node a call's database decisions name (no workflow file can have them).
const CALL_WORKFLOW: &str = "trellis:plugin-call";
const CALL_NODE: &str = "trellis:plugin-call";

/// A node plugin's batch transform; returns the output lines and how many records failed.
async fn transform(
    plugin: &Arc<Plugin>,
    pairs: &[String],
    records: Vec<Value>,
    database: Option<Arc<dyn DatabaseGate>>,
) -> anyhow::Result<(Vec<String>, usize)> {
    let config = config_of(pairs)?;
    check(plugin, "config", &config)?;
    let texts = records.iter().map(Value::to_string).collect();
    let results = plugin
        .clone()
        .transform_for(texts, Arc::new(config), database)
        .await?;
    let mut failed = 0;
    let mut lines = Vec::with_capacity(results.len());
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok(text) => lines.push(text),
            Err(message) => {
                failed += 1;
                eprintln!("record {}: {message}", index + 1);
            }
        }
    }
    Ok((lines, failed))
}

/// A masking plugin over each value; a value it fails to mask is redacted, as `serve` does.
async fn mask(
    plugin: &Arc<Plugin>,
    params: Option<&str>,
    field: &str,
    values: Vec<Value>,
) -> anyhow::Result<(Vec<String>, usize)> {
    let params = match params {
        None => Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            _ => bail!(Hinted::new(
                "`--params` must be a JSON object",
                "e.g. `--params '{\"keep\": 2}'`"
            )),
        },
    };
    check(plugin, "params", &params)?;
    let params = Value::Object(params);
    let inputs: Vec<MaskInput> = values
        .into_iter()
        .map(|value| MaskInput {
            field_path: field.to_owned(),
            value,
            params: params.clone(),
        })
        .collect();
    // `Plugin::mask` checks that there is one result per value.
    let callee = plugin.clone();
    let results = tokio::task::spawn_blocking(move || callee.mask(&inputs))
        .await
        .context("the plugin call's thread failed")??;
    let mut failed = 0;
    let lines = results
        .into_iter()
        .enumerate()
        .map(|(index, result)| match result {
            Ok(value) => value.to_string(),
            Err(message) => {
                failed += 1;
                eprintln!("value {}: {message} (redacted)", index + 1);
                Value::String(REDACTED.to_owned()).to_string()
            }
        })
        .collect();
    Ok((lines, failed))
}
