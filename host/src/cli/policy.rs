//! `trellis policy`: check, compile, decide, mask and explain with a policy directory.

use crate::diagnostic::Hinted;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;

use crate::plugins::{
    EngineOptions, LimitsConfig, PluginEngine, PluginRegistry, RegistryMasker, ReloadOutcome,
};
use crate::policy::{
    AccessRequest, EngineSettings, PolicyEngine, PolicyGeneration, PreparedUser, ResourceType,
    UserContext, for_workflow,
};
use crate::workflow::{AnyName, WorkflowSet};

/// Check, compile and try out policies.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  $ trellis policy check policies
  $ trellis policy compile policies/finance.rules.json
  $ echo '{\"user\": {\"user_id\": \"u1\", \"attributes\": {\"department\": \"finance.ap\"}}, \"resource_type\": \"workflow\", \"resource_id\": \"finance_report\", \"permission\": \"execute\"}' | trellis policy decide --policies policies")]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory; print every problem with file:line and exit 1 if any.
    /// With `--workflows`, also warn where rules name a node id that several workflows share.
    Check {
        /// The policy directory.
        dir: PathBuf,
        /// A workflows directory to check the rules' node ids against.
        #[arg(long, value_name = "DIR")]
        workflows: Option<PathBuf>,
    },
    /// Print the Cedar policies a `*.rules.json` file compiles to.
    Compile {
        /// The rules file.
        file: PathBuf,
        /// Also print the generated Cedar schema.
        #[arg(long)]
        schema: bool,
    },
    /// Decide JSON-lines requests from stdin; print one JSON line per request.
    Decide(DecideArgs),
    /// Mask a JSON object or array from stdin as the masking rules say for a user.
    Mask {
        /// The policy directory.
        #[arg(long)]
        policies: PathBuf,
        /// The node whose output this is.
        #[arg(long)]
        resource: String,
        /// The workflow the node is in (for masking rules scoped with `"workflow"`).
        #[arg(long)]
        workflow: Option<String>,
        /// A JSON file with the user (`{"user_id", "roles", "attributes", …}`).
        #[arg(long)]
        user: PathBuf,
        /// The time to decide for (RFC 3339) [default: now].
        #[arg(long)]
        now: Option<String>,
        /// The zone time conditions are read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// The request's runtime context, a JSON object, for mask conditions on `runtime.…`
        /// (e.g. `{"ip_address": "10.0.0.7"}`) [default: none].
        #[arg(long, value_name = "JSON")]
        runtime: Option<String>,
        /// A plugins directory, for `plugin:<name>` masks [default: none: such masks redact].
        #[arg(long, value_name = "DIR")]
        plugins: Option<PathBuf>,
    },
    /// Like `decide`, and print why: the deciding policies with their source, and every rule
    /// considered with whether its condition held.
    Explain(DecideArgs),
}

#[derive(Debug, Args)]
struct DecideArgs {
    /// The policy directory.
    #[arg(long)]
    policies: PathBuf,
    /// The zone `time_of_day` and `day_of_week` are read in (IANA name).
    #[arg(long, default_value = "UTC")]
    timezone: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideRequest {
    user: UserContext,
    resource_type: String,
    resource_id: String,
    /// For a node: the workflow it is a node of (sets `runtime.workflow`).
    workflow: Option<String>,
    permission: String,
    now: Option<String>,
    #[serde(default)]
    runtime: Value,
}

/// Runs `trellis policy …`.
pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Check { dir, workflows } => {
            let generation = PolicyGeneration::load(&dir)?;
            if let Some(workflows) = workflows {
                let set = WorkflowSet::load(workflows, Arc::new(AnyName)).current();
                for (file, error) in &set.errors {
                    eprintln!("warning: {}: not checked: {error}", file.display());
                }
                for w in crate::workflow::scope::check(&set, &generation) {
                    eprintln!("warning: {w}");
                }
            }
            println!(
                "{}: ok, {} policies",
                dir.display(),
                generation.policy_count()
            );
            Ok(())
        }
        PolicyCommand::Compile { file, schema } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            let dir = file.parent().unwrap_or(Path::new("."));
            let generation = PolicyGeneration::from_sources(dir, &[(file.clone(), text)])?;
            print!("{}", generation.cedar_text());
            if schema {
                print!("\n{}", generation.schema_text());
            }
            Ok(())
        }
        PolicyCommand::Decide(args) => decide(args, false),
        PolicyCommand::Explain(args) => decide(args, true),
        PolicyCommand::Mask {
            policies,
            resource,
            workflow,
            user,
            now,
            timezone,
            runtime,
            plugins,
        } => {
            let runtime = match runtime.as_deref() {
                None => Value::Null,
                Some(text) => match serde_json::from_str::<Value>(text) {
                    Ok(value @ Value::Object(_)) => value,
                    Ok(_) => bail!(
                        "--runtime must be a JSON object like `{{\"ip_address\": \"10.0.0.7\"}}`"
                    ),
                    Err(e) => bail!("--runtime is not JSON: {e}"),
                },
            };
            let runtime = for_workflow(runtime, workflow.as_deref())
                .map_err(|e| anyhow::anyhow!("--workflow: {e}"))?;
            let mut settings = settings(&timezone)?;
            if let Some(dir) = plugins {
                settings.masker = settings
                    .masker
                    .with_external(Arc::new(RegistryMasker::new(plugin_registry(&dir)?)));
            }
            let engine = PolicyEngine::load(&policies, settings)?;
            let text = std::fs::read_to_string(&user)
                .with_context(|| format!("cannot read `{}`", user.display()))?;
            let user: UserContext = serde_json::from_str(&text).with_context(|| {
                format!(
                    "`{}` is not a user like `{{\"user_id\": \"u1\", \"attributes\": {{}}}}`",
                    user.display()
                )
            })?;
            let now = parse_now(now.as_deref())?;
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
            let data: Value = serde_json::from_str(&input).context("stdin is not JSON")?;
            let out = engine.mask(&PreparedUser::new(user), &resource, &data, now, &runtime);
            for e in &out.errors {
                eprintln!("warning: {e}");
            }
            println!("{}", out.value);
            Ok(())
        }
    }
}

fn engine(dir: &Path, timezone: &str) -> anyhow::Result<PolicyEngine> {
    Ok(PolicyEngine::load(dir, settings(timezone)?)?)
}

fn settings(timezone: &str) -> anyhow::Result<EngineSettings> {
    let tz = jiff::tz::TimeZone::get(timezone).map_err(|e| {
        anyhow::Error::new(e).context(Hinted::new(
            format!("unknown time zone `{timezone}`"),
            "use an IANA name like `UTC` or `Europe/Berlin`",
        ))
    })?;
    Ok(EngineSettings {
        timezone: tz,
        ..EngineSettings::default()
    })
}

/// The plugins in `dir`, loaded once (no watching); a file that fails to load is a warning.
fn plugin_registry(dir: &Path) -> anyhow::Result<Arc<PluginRegistry>> {
    if !dir.is_dir() {
        bail!(Hinted::new(
            format!("--plugins `{}` is not a directory", dir.display()),
            "pass the directory `trellis serve` loads plugins from (`paths.plugins` in \
             trellis.toml, `plugins` by default)"
        ));
    }
    let engine = PluginEngine::new(EngineOptions::default())?;
    let registry = PluginRegistry::new(engine, dir, LimitsConfig::default());
    for (path, outcome) in registry.load_dir() {
        if let ReloadOutcome::Failed(error) = outcome {
            eprintln!("warning: {}: {error}", path.display());
        }
    }
    Ok(Arc::new(registry))
}

fn parse_now(now: Option<&str>) -> anyhow::Result<jiff::Timestamp> {
    match now {
        None => Ok(jiff::Timestamp::now()),
        Some(s) => s.parse().with_context(|| {
            format!("`now` `{s}` is not an RFC 3339 time like `2026-01-05T09:30:00Z`")
        }),
    }
}

fn decide(args: DecideArgs, explain: bool) -> anyhow::Result<()> {
    let engine = engine(&args.policies, &args.timezone)?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request: DecideRequest = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {}: not a request", n + 1))?;
        let Some(rt) = ResourceType::parse(&request.resource_type) else {
            bail!(Hinted::new(
                format!(
                    "stdin line {}: unknown resource_type `{}`",
                    n + 1,
                    request.resource_type
                ),
                "use `node` or `workflow`"
            ));
        };
        let now =
            parse_now(request.now.as_deref()).with_context(|| format!("stdin line {}", n + 1))?;
        let runtime = for_workflow(request.runtime, request.workflow.as_deref())
            .map_err(|e| anyhow::anyhow!("stdin line {}: {e}", n + 1))?;
        let user = PreparedUser::new(request.user);
        let req = AccessRequest {
            user: &user,
            resource_type: rt,
            resource_id: &request.resource_id,
            permission: &request.permission,
            now,
            runtime: &runtime,
        };
        if explain {
            let e = engine.explain(&req);
            writeln!(
                out,
                "decision: {} ({})",
                if e.decision.allowed { "allow" } else { "deny" },
                e.decision.reason
            )?;
            for p in &e.deciding {
                writeln!(out, "deciding: {} ({}) at {}", p.id, p.kind, p.source)?;
            }
            for p in &e.considered {
                let held = match p.held {
                    Some(true) => "held",
                    Some(false) => "did not hold",
                    None => "could not be evaluated",
                };
                writeln!(
                    out,
                    "considered: {} ({}) at {}: {held}",
                    p.id, p.kind, p.source
                )?;
            }
            for d in &e.derived {
                writeln!(out, "derived: {} = {} ({})", d.name, d.value, d.condition)?;
            }
            for err in &e.decision.errors {
                writeln!(out, "error: {err}")?;
            }
        } else {
            let d = engine.decide(&req);
            writeln!(
                out,
                "{}",
                serde_json::json!({"allowed": d.allowed, "reason": d.reason, "policies": d.policies})
            )?;
        }
        out.flush()?;
    }
    Ok(())
}
