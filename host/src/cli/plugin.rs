//! `trellis plugin list|new|build`: see what the plugins directory holds, start a plugin crate,
//! build one into the plugins directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::diagnostic::Hinted;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::plugins::{LoadStatus, PluginEngine, PluginRegistry, engine_options};

/// Manage WebAssembly plugins.
#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load every plugin in the plugins directory and show its status.
    #[command(after_help = "Examples:
  $ trellis plugin list
  $ trellis plugin list --json
  $ trellis plugin list --config trellis.toml")]
    List(ListArgs),
    /// Create a plugin crate that builds as it is.
    #[command(after_help = "Examples:
  $ trellis plugin new word-count                 creates ./word-count (a node plugin)
  $ trellis plugin new ssn-mask --masking
  $ trellis plugin new word-count --sdk ../trellis/sdk")]
    New(NewArgs),
    /// Build a plugin crate for wasm32-wasip2 and copy the `.wasm` into the plugins directory.
    #[command(after_help = "Examples:
  $ trellis plugin build word-count
  $ trellis plugin build . --config trellis.toml")]
    Build(BuildArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Configuration file [default: ./trellis.toml when it exists, else the embedded default]
    #[arg(long, short = 'c', value_name = "FILE", env = "TRELLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON (the same shape as `GET /v1/plugins`) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct NewArgs {
    /// The plugin's name (also the crate's and the directory's).
    name: String,
    /// Where to create it [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Make a masking plugin instead of a node plugin.
    #[arg(long)]
    masking: bool,
    /// The trellis-sdk crate to depend on [default: the `sdk/` of the Trellis checkout this
    /// command runs in, found by walking up from the current directory]
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The plugin crate's directory.
    dir: PathBuf,
    /// Configuration file (its `paths.plugins` is where the `.wasm` goes)
    #[arg(long, short = 'c', value_name = "FILE", env = "TRELLIS_CONFIG")]
    config: Option<PathBuf>,
}

/// Runs `trellis plugin …`.
pub async fn run(args: PluginArgs) -> anyhow::Result<()> {
    match args.command {
        PluginCommand::List(args) => list(args).await,
        PluginCommand::New(args) => new(args),
        PluginCommand::Build(args) => build(args),
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let config = Config::discover(args.config.as_deref())?;
    let engine = PluginEngine::new(engine_options(&config))?;
    let registry = PluginRegistry::new(
        engine,
        config.paths.plugins.clone(),
        config.plugins.limits.clone(),
    );
    let registry = tokio::task::spawn_blocking(move || {
        registry.load_dir();
        registry
    })
    .await
    .context("loading the plugins failed")?;
    let rows = registry.list();
    registry.shutdown();
    if args.json {
        let body = serde_json::json!({
            "dir": config.paths.plugins.display().to_string(),
            "plugins": rows,
        });
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!(
            "no plugins in `{}`\n  help: build one with `trellis plugin new NAME` and `trellis plugin build NAME`",
            config.paths.plugins.display()
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<16} {:<10} {:<8} {:<7} {:<12} ERROR",
        "FILE", "NAME", "VERSION", "KIND", "STATUS", "SHA256"
    );
    for row in &rows {
        let dash = || "-".to_owned();
        println!(
            "{:<24} {:<16} {:<10} {:<8} {:<7} {:<12} {}",
            row.file,
            row.name.clone().unwrap_or_else(dash),
            row.version.clone().unwrap_or_else(dash),
            row.kind.map_or_else(dash, |k| k.to_string()),
            match row.status {
                LoadStatus::Loaded => "loaded",
                LoadStatus::Failed => "failed",
            },
            row.sha256.get(..12).unwrap_or("-"),
            row.error.clone().unwrap_or_else(dash),
        );
    }
    Ok(())
}

fn new(args: NewArgs) -> anyhow::Result<()> {
    let name = &args.name;
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(Hinted::new(
            format!("`{name}` is not a valid plugin name"),
            "use lower-case letters, digits and `-`, starting with a letter, e.g. `word-count`"
        ));
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        bail!(Hinted::new(
            format!("`{}` already exists", dir.display()),
            "pick another name, or `--dir` for another place"
        ));
    }
    let sdk = match args.sdk {
        Some(sdk) => sdk,
        None => find_sdk().ok_or_else(|| {
            Hinted::new(
                "cannot find the trellis-sdk crate above the current directory",
                "pass `--sdk PATH/TO/trellis/sdk`",
            )
        })?,
    };
    let sdk = std::fs::canonicalize(&sdk)
        .with_context(|| format!("cannot find the sdk at `{}`", sdk.display()))?;
    if !sdk.join("wit/plugin.wit").is_file() {
        bail!(Hinted::new(
            format!(
                "`{}` is not the trellis-sdk crate (no `wit/plugin.wit`)",
                sdk.display()
            ),
            "pass `--sdk PATH/TO/trellis/sdk`"
        ));
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    let sdk_path = sdk.display().to_string().replace('\\', "/");
    std::fs::write(dir.join("Cargo.toml"), cargo_toml(name, &sdk_path))?;
    let source = if args.masking {
        masking_source(name)
    } else {
        node_source(name)
    };
    std::fs::write(dir.join("src/lib.rs"), source)?;
    std::fs::write(dir.join(".gitignore"), "/target/\n")?;
    println!(
        "created {} plugin `{name}` in {}",
        if args.masking { "masking" } else { "node" },
        dir.display()
    );
    eprintln!("next: trellis plugin build {}", dir.display());
    Ok(())
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let config = Config::discover(args.config.as_deref())?;
    let manifest = args.dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(Hinted::new(
            format!("`{}` has no Cargo.toml", args.dir.display()),
            "give the plugin crate's directory, e.g. `trellis plugin build word-count`"
        ));
    }
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest)
        .status()
        .map_err(|e| {
            anyhow::Error::new(e).context(Hinted::new(
                "cannot run `cargo`",
                "install Rust with rustup, then `rustup target add wasm32-wasip2`",
            ))
        })?;
    if !status.success() {
        bail!(Hinted::new(
            format!(
                "`cargo build --release --target wasm32-wasip2` failed in `{}` ({status})",
                args.dir.display()
            ),
            "if the target is missing, run `rustup target add wasm32-wasip2`"
        ));
    }
    let target_dir = target_dir(&manifest)?;
    let package = package_name(&manifest)?;
    let file = format!("{}.wasm", package.replace('-', "_"));
    let built = target_dir.join("wasm32-wasip2/release").join(&file);
    if !built.is_file() {
        bail!(Hinted::new(
            format!("the build did not produce `{}`", built.display()),
            "the crate needs `[lib] crate-type = [\"cdylib\"]`"
        ));
    }
    let dest_dir = &config.paths.plugins;
    std::fs::create_dir_all(dest_dir)
        .with_context(|| format!("cannot create `{}`", dest_dir.display()))?;
    // Write beside, then rename: a watching host never sees a half-written file.
    let tmp = dest_dir.join(format!(".{file}.tmp"));
    let dest = dest_dir.join(&file);
    std::fs::copy(&built, &tmp).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write `{}`", dest.display()))?;
    println!("{}", dest.display());
    Ok(())
}

/// `sdk/` of the Trellis checkout above the current directory.
fn find_sdk() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|dir| dir.join("sdk"))
        .find(|sdk| sdk.join("wit/plugin.wit").is_file())
}

fn cargo_metadata(manifest: &Path) -> anyhow::Result<serde_json::Value> {
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .context("cannot run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed for `{}`: {}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn target_dir(manifest: &Path) -> anyhow::Result<PathBuf> {
    let metadata = cargo_metadata(manifest)?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` gave no target directory")
}

fn package_name(manifest: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(manifest)?;
    let doc: toml::Table = toml::from_str(&text)
        .with_context(|| format!("`{}` is not valid TOML", manifest.display()))?;
    doc.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("`{}` has no `[package] name`", manifest.display()))
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
trellis-sdk = {{ path = "{sdk}" }}

# A plugin is its own workspace, so it builds wherever it is created.
[workspace]

[profile.release]
opt-level = 3
lto = true
strip = true
codegen-units = 1
"#
    )
}

fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

fn node_source(name: &str) -> String {
    let ty = type_name(name);
    format!(
        r#"//! Trellis node plugin `{name}`: transforms each record of a batch.
//!
//! Build it with `trellis plugin build .`; the host loads the `.wasm` from its plugins directory.

use trellis_sdk::{{Info, Node, Value, json}};

struct {ty};

impl Node for {ty} {{
    fn info() -> Info {{
        Info::new("{name}", env!("CARGO_PKG_VERSION"))
    }}

    /// Adds `"seen_by": "{name}"` to each record. Replace with your own logic; an `Err` fails
    /// only this record.
    fn transform(mut record: Value) -> Result<Value, String> {{
        if !record.is_object() {{
            return Err("a record must be a JSON object".into());
        }}
        record["seen_by"] = json!("{name}");
        Ok(record)
    }}
}}

trellis_sdk::export_node!({ty});
"#
    )
}

fn masking_source(name: &str) -> String {
    let ty = type_name(name);
    format!(
        r#"//! Trellis masking plugin `{name}`: masks field values.
//!
//! Build it with `trellis plugin build .`; the host loads the `.wasm` from its plugins directory.
//! Any `Err` makes the host redact the value: masking fails closed.

use trellis_sdk::{{Info, Masker, Value}};

struct {ty};

impl Masker for {ty} {{
    fn info() -> Info {{
        Info::new("{name}", env!("CARGO_PKG_VERSION"))
    }}

    /// Keeps the last 4 characters of a string longer than 4 and stars the rest (all of a
    /// shorter one).
    fn mask(field_path: &str, value: Value, _params: &Value) -> Result<Value, String> {{
        let text = value.as_str().ok_or_else(|| format!("`{{field_path}}` is not a string"))?;
        let chars: Vec<char> = text.chars().collect();
        let starred = if chars.len() > 4 {{ chars.len() - 4 }} else {{ chars.len() }};
        let masked: String = chars
            .iter()
            .enumerate()
            .map(|(i, c)| if i < starred {{ '*' }} else {{ *c }})
            .collect();
        Ok(Value::String(masked))
    }}
}}

trellis_sdk::export_masker!({ty});
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_from_plugin_names() {
        assert_eq!(type_name("word-count"), "WordCount");
        assert_eq!(type_name("x"), "X");
    }
}
