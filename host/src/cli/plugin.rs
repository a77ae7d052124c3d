//! `trellis plugin list|new|build`: see what the plugins directory holds, start a plugin crate,
//! build one into the plugins directory. Python plugins are `plugin_python`'s.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::diagnostic::Hinted;
use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

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
    /// Create a plugin crate (or a Python project) that builds as it is.
    #[command(after_help = "Examples:
  $ trellis plugin new word-count                 creates ./word-count (a node plugin)
  $ trellis plugin new ssn-mask --masking
  $ trellis plugin new enrich --lang python       a Python project, built with componentize-py
  $ trellis plugin new word-count --sdk ../trellis/sdk   uses a Trellis checkout's SDK")]
    New(NewArgs),
    /// Build a plugin crate for wasm32-wasip2 (or a Python project with componentize-py) and
    /// copy the `.wasm` into the plugins directory.
    #[command(after_help = "Examples:
  $ trellis plugin build word-count
  $ trellis plugin build . --config trellis.toml

A directory with an `app.py` and no Cargo.toml is a Python project: it is built with
componentize-py, installed the first time into ~/.cache/trellis/ unless the pinned version is
on PATH.")]
    Build(BuildArgs),
    /// Run one plugin file on records from a file or stdin, as `serve` would, and print the
    /// results as JSON lines.
    #[command(after_help = "Examples:
  $ trellis plugin call plugins/sum_by_key.wasm --records rows.jsonl --config field=salary
  $ echo '\"alice@example.com\"' | trellis plugin call plugins/email_mask.wasm --params '{\"keep\": 2}'

  $ trellis plugin call enrich.wasm --records rows.jsonl --db main --user '{\"user_id\": \"u1\", \"attributes\": {\"department\": \"finance\"}}'

The `[plugins]` limits come from ./trellis.toml (or $TRELLIS_CONFIG) when there is one. With
`--db`, the plugin's statements reach those databases, each decided by the configured policies
for `--user` (workflow and node `trellis:plugin-call` in the decision's context).
A record the plugin refuses, or a value it fails to mask (then shown redacted), is named on
stderr and the command exits with 1.")]
    Call(super::plugin_call::CallArgs),
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
    /// The language to write the plugin in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// The trellis-sdk crate to depend on [default: the SDK built into this binary, written into
    /// the new crate's `trellis-sdk/`]
    #[arg(long, value_name = "DIR")]
    sdk: Option<PathBuf>,
}

/// What a new plugin is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lang {
    /// A Rust crate on the trellis-sdk crate.
    Rust,
    /// A Python project, built with componentize-py.
    Python,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The plugin's directory: a Rust crate, or a Python project (`app.py`).
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
        PluginCommand::Call(args) => super::plugin_call::run(args).await,
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
    if args.lang == Lang::Python {
        if args.sdk.is_some() {
            bail!(Hinted::new(
                "`--sdk` is for Rust plugins",
                "a Python project gets its helper module and WIT from this binary; leave `--sdk` out"
            ));
        }
        return super::plugin_python::new(name, &dir, args.masking);
    }
    let sdk_path = match &args.sdk {
        Some(sdk) => checkout_sdk(sdk)?,
        None => {
            write_sdk(&dir.join(EMBEDDED_SDK_DIR))?;
            EMBEDDED_SDK_DIR.to_owned()
        }
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    let ty = type_name(name);
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{Type}}", &ty)
            .replace("{{sdk}}", &sdk_path)
    };
    std::fs::write(dir.join("Cargo.toml"), fill(templates::PLUGIN_MANIFEST))?;
    let source = if args.masking {
        templates::MASKING_SOURCE
    } else {
        templates::NODE_SOURCE
    };
    std::fs::write(dir.join("src/lib.rs"), fill(source))?;
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
    if super::plugin_python::is_project(&args.dir) {
        return super::plugin_python::build(&args.dir, &config.paths.plugins);
    }
    let manifest = args.dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(Hinted::new(
            format!("`{}` has no Cargo.toml (nor app.py)", args.dir.display()),
            "give the plugin's directory: a Rust crate, or a Python project, e.g. `trellis plugin build word-count`"
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

/// The project templates and the SDK, built into the binary, so `plugin new` works anywhere.
mod templates {
    /// A plugin crate's `Cargo.toml`.
    pub const PLUGIN_MANIFEST: &str = include_str!("../../templates/plugin/Cargo.toml.tmpl");
    /// A node plugin's `src/lib.rs`.
    pub const NODE_SOURCE: &str = include_str!("../../templates/plugin/node/lib.rs.tmpl");
    /// A masking plugin's `src/lib.rs`.
    pub const MASKING_SOURCE: &str = include_str!("../../templates/plugin/masking/lib.rs.tmpl");
    /// The SDK's `Cargo.toml`, standalone.
    pub const SDK_MANIFEST: &str = include_str!("../../templates/sdk/Cargo.toml.tmpl");
    /// The SDK's sources and WIT, as in the checkout's `sdk/`.
    pub const SDK_FILES: &[(&str, &str)] = &[
        ("src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
        ("src/config.rs", include_str!("../../../sdk/src/config.rs")),
        ("src/decode.rs", include_str!("../../../sdk/src/decode.rs")),
        (
            "src/imports.rs",
            include_str!("../../../sdk/src/imports.rs"),
        ),
        ("src/record.rs", include_str!("../../../sdk/src/record.rs")),
        ("src/state.rs", include_str!("../../../sdk/src/state.rs")),
        (
            "src/testing.rs",
            include_str!("../../../sdk/src/testing.rs"),
        ),
        ("src/typed.rs", include_str!("../../../sdk/src/typed.rs")),
        (
            "wit/plugin.wit",
            include_str!("../../../sdk/wit/plugin.wit"),
        ),
    ];
}

/// Where a new plugin crate gets the built-in SDK (relative to the crate).
const EMBEDDED_SDK_DIR: &str = "trellis-sdk";

/// Writes the built-in SDK into `dir`.
fn write_sdk(dir: &Path) -> anyhow::Result<()> {
    let manifest = templates::SDK_MANIFEST.replace("{{version}}", crate::VERSION);
    let files = [("Cargo.toml", manifest.as_str())]
        .into_iter()
        .chain(templates::SDK_FILES.iter().copied());
    write_files(dir, files)
}

/// Writes each `(relative path, text)` under `dir`, creating directories as needed.
pub(super) fn write_files<T: AsRef<str>>(
    dir: &Path,
    files: impl IntoIterator<Item = (&'static str, T)>,
) -> anyhow::Result<()> {
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        std::fs::write(&path, text.as_ref())
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    Ok(())
}

/// A checkout's `sdk/` given with `--sdk`, as the path a plugin's `Cargo.toml` names.
fn checkout_sdk(sdk: &Path) -> anyhow::Result<String> {
    let sdk = std::fs::canonicalize(sdk)
        .with_context(|| format!("cannot find the sdk at `{}`", sdk.display()))?;
    if !sdk.join("wit/plugin.wit").is_file() {
        bail!(Hinted::new(
            format!(
                "`{}` is not the trellis-sdk crate (no `wit/plugin.wit`)",
                sdk.display()
            ),
            "pass the `sdk/` directory of a Trellis checkout, or leave `--sdk` out to use the built-in SDK"
        ));
    }
    Ok(sdk.display().to_string().replace('\\', "/"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in SDK's manifest asks for what the checkout's `sdk/Cargo.toml` does.
    #[test]
    fn the_built_in_sdk_has_every_source_file_of_the_checkout() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/src");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let path = format!("src/{name}");
            assert!(
                templates::SDK_FILES.iter().any(|(p, _)| *p == path),
                "`sdk/{path}` is not in SDK_FILES: `plugin new` would write an SDK without it"
            );
        }
    }

    #[test]
    fn the_built_in_sdk_has_the_checkouts_dependencies() {
        let checkout = include_str!("../../../sdk/Cargo.toml");
        let wit_bindgen = checkout
            .lines()
            .find(|l| l.starts_with("wit-bindgen"))
            .expect("the sdk depends on wit-bindgen");
        assert!(
            templates::SDK_MANIFEST.contains(wit_bindgen),
            "{wit_bindgen}"
        );
        assert!(checkout.contains(r#"features = ["raw_value"]"#));
        assert!(templates::SDK_MANIFEST.contains(r#"features = ["raw_value"]"#));
    }

    #[test]
    fn type_names_from_plugin_names() {
        assert_eq!(type_name("word-count"), "WordCount");
        assert_eq!(type_name("x"), "X");
    }
}
