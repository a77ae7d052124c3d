//! `trellis run WORKFLOW`: runs one workflow in this process, as the given user, through the same
//! access-controlled runtime as `POST /v1/workflows/{name}/run`, and prints the report as JSON.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::policy::{PreparedUser, UserContext};
use crate::workflow::{AccessError, new_run_id};

/// Run one workflow as a user and print its results (masked as that user would see them).
#[derive(Debug, Args)]
#[command(after_help = r#"Examples:
  $ trellis run finance_report --user '{"user_id": "fin001", "attributes": {"department": "finance.analysis"}}'
  $ trellis run finance_report --user @analyst.json --inputs '{"start_date": "2024-03-01"}'"#)]
pub struct RunArgs {
    /// The workflow's name (see `GET /v1/workflows`, or the files in `workflows/`).
    pub workflow: String,

    /// The user, as JSON (`{"user_id", "tenant_id", "roles", "attributes"}`) or `@FILE`.
    #[arg(long, value_name = "JSON|@FILE")]
    pub user: String,

    /// The inputs, as a JSON object or `@FILE`.
    #[arg(long, value_name = "JSON|@FILE", default_value = "{}")]
    pub inputs: String,

    /// Configuration file [default: ./trellis.toml when it exists, else the embedded default]
    #[arg(long, short = 'c', value_name = "FILE", env = "TRELLIS_CONFIG")]
    pub config: Option<PathBuf>,
}

fn json_arg(text: &str, flag: &str) -> anyhow::Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{path}` given to {flag}"))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("{flag} is not valid JSON"))
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let user: UserContext = serde_json::from_value(json_arg(&args.user, "--user")?).context(
        "--user must be {\"user_id\", \"tenant_id\", \"email\", \"roles\", \"attributes\"}",
    )?;
    let inputs: Map<String, Value> = match json_arg(&args.inputs, "--inputs")? {
        Value::Object(map) => map,
        _ => bail!("--inputs must be a JSON object"),
    };
    let config = Config::discover(args.config.as_deref())?;
    let app = crate::server::App::start(config, false, None).await?;
    let loaded = app.workflows().current();
    let failed = loaded.errors.iter().find(|(file, _)| {
        file.file_stem()
            .is_some_and(|s| s == args.workflow.as_str())
    });
    let result = match app.workflows().get(&args.workflow) {
        // Its file did not load: say why, with the line at fault.
        None if let Some((_, error)) = failed => Err(anyhow::Error::new(error.clone())),
        None => Err(anyhow::anyhow!(
            "unknown workflow `{}`; loaded: {}",
            args.workflow,
            app.workflows()
                .current()
                .workflows
                .keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(workflow) => app
            .runtime()
            .run_in(
                &app.generations().current().pinned(),
                &workflow,
                &PreparedUser::new(user),
                &inputs,
                new_run_id(),
                None,
            )
            .await
            .map_err(|e| match e {
                AccessError::Denied(d) => anyhow::anyhow!(
                    "access denied: `{}` on {} `{}`: {}",
                    d.permission,
                    d.resource_type,
                    d.resource_id,
                    d.reason
                ),
                other => anyhow::Error::new(other),
            }),
    };
    app.shutdown().await;
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
