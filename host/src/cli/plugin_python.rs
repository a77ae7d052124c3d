//! Plugins written in Python: `trellis plugin new --lang python` writes a project (`app.py`, the
//! helper module `trellis.py`, the WIT, `pyproject.toml`), and `trellis plugin build` turns one
//! into a component with componentize-py.
//!
//! componentize-py is pinned ([`COMPONENTIZE_PY_VERSION`]): its output embeds a CPython and WASI
//! imports of its own version, so a different release may build components the host cannot load.
//! The build uses the one on `PATH` when it is that version, else a virtual environment of its
//! own under the user's cache directory, created with `python3 -m venv` and `pip` the first time
//! (`scripts/build-plugins` shares it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::diagnostic::Hinted;

/// The componentize-py release plugins are built with (`scripts/build-plugins` pins the same).
pub(super) const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The world a project is built for when its `pyproject.toml` names none.
const DEFAULT_WORLD: &str = "trellis:plugin/plugin@0.2.0";

/// The templates and the files a new project gets, built into the binary.
mod templates {
    /// A node plugin's `app.py`.
    pub const NODE_APP: &str = include_str!("../../templates/python/node_app.py.tmpl");
    /// A masking plugin's `app.py`.
    pub const MASKING_APP: &str = include_str!("../../templates/python/masking_app.py.tmpl");
    /// `pyproject.toml`: the project's name and WIT world.
    pub const PYPROJECT: &str = include_str!("../../templates/python/pyproject.toml.tmpl");
    /// The project's `README.md`.
    pub const README: &str = include_str!("../../templates/python/README.md.tmpl");
    /// `.gitignore`.
    pub const GITIGNORE: &str = include_str!("../../templates/python/gitignore");
    /// The helper module, as in the checkout's `sdk/python/`.
    pub const HELPER: &str = include_str!("../../../sdk/python/trellis.py");
    /// The WIT, as in the checkout's `sdk/wit/`.
    pub const WIT: &str = include_str!("../../../sdk/wit/plugin.wit");
}

/// Whether `dir` holds a Python plugin project: an `app.py` and no `Cargo.toml`.
pub(super) fn is_project(dir: &Path) -> bool {
    dir.join("app.py").is_file() && !dir.join("Cargo.toml").exists()
}

/// Writes a new Python project for plugin `name` into `dir` (which does not exist yet).
pub(super) fn new(name: &str, dir: &Path, masking: bool) -> anyhow::Result<()> {
    let kind = if masking { "masking" } else { "node" };
    let file = wasm_file_name(name);
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{kind}}", kind)
            .replace("{{file}}", &file)
            .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION)
    };
    let app = if masking {
        templates::MASKING_APP
    } else {
        templates::NODE_APP
    };
    let files = [
        ("app.py", fill(app)),
        ("trellis.py", templates::HELPER.to_owned()),
        ("wit/plugin.wit", templates::WIT.to_owned()),
        ("pyproject.toml", fill(templates::PYPROJECT)),
        ("README.md", fill(templates::README)),
        (".gitignore", templates::GITIGNORE.to_owned()),
    ];
    super::plugin::write_files(dir, files)?;
    println!(
        "created {kind} plugin `{name}` (Python) in {}",
        dir.display()
    );
    eprintln!("next: trellis plugin build {}", dir.display());
    Ok(())
}

/// Builds the Python project in `dir` with componentize-py and copies the component into
/// `plugins_dir`, printing where it went.
pub(super) fn build(dir: &Path, plugins_dir: &Path) -> anyhow::Result<()> {
    let project = Project::read(dir)?;
    if !dir.join("wit").is_dir() {
        bail!(Hinted::new(
            format!("`{}` has no `wit/` directory", dir.display()),
            "a Python plugin needs the plugin interface in `wit/plugin.wit`; \
             `trellis plugin new --lang python NAME` writes one to copy"
        ));
    }
    let tool = componentize_py()?;
    let file = wasm_file_name(&project.name);
    let out_dir = dir.join("build");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create `{}`", out_dir.display()))?;
    let built = out_dir.join(&file);
    let started = Instant::now();
    eprintln!(
        "building `{}` with componentize-py {COMPONENTIZE_PY_VERSION} for {}",
        dir.display(),
        project.world
    );
    let status = Command::new(&tool)
        .args(["--quiet", "-d", "wit", "-w", &project.world])
        .args(["componentize", "app", "-o"])
        .arg(Path::new("build").join(&file))
        .current_dir(dir)
        // componentize-py is written in Rust: a backtrace of it after a Python error only
        // hides the Python traceback the author needs.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("cannot run `{}`", tool.display()))?;
    if !status.success() {
        bail!(Hinted::new(
            format!(
                "componentize-py could not build `{}` ({status})",
                dir.display()
            ),
            "the Python error is above. `app.py` must define the classes `Meta`, `Transform` and \
             `Mask`, import every module at the top of a file, and `[tool.trellis] world` in \
             `pyproject.toml` must name a world of `wit/`"
        ));
    }
    if !built.is_file() {
        bail!("componentize-py did not write `{}`", built.display());
    }
    let size = std::fs::metadata(&built).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "built `{}` ({:.1} MB) in {:.1} s",
        built.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(plugins_dir)
        .with_context(|| format!("cannot create `{}`", plugins_dir.display()))?;
    // Write beside, then rename: a watching host never sees a half-written file.
    let tmp = plugins_dir.join(format!(".{file}.tmp"));
    let dest = plugins_dir.join(&file);
    std::fs::copy(&built, &tmp).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write `{}`", dest.display()))?;
    println!("{}", dest.display());
    Ok(())
}

/// The plugin file's name for plugin `name`: `word-count` → `word_count.wasm`, as for Rust.
fn wasm_file_name(name: &str) -> String {
    format!("{}.wasm", name.replace('-', "_"))
}

/// What `pyproject.toml` says about the build.
#[derive(Debug, PartialEq, Eq)]
struct Project {
    /// `[project] name`, else the directory's name: the `.wasm` file is named after it.
    name: String,
    /// `[tool.trellis] world`, else [`DEFAULT_WORLD`].
    world: String,
}

impl Project {
    fn read(dir: &Path) -> anyhow::Result<Project> {
        let path = dir.join("pyproject.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read `{}`", path.display()));
            }
        };
        let dir_name = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot find `{}`", dir.display()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".to_owned());
        Project::parse(text.as_deref(), &dir_name)
            .with_context(|| format!("`{}` is invalid", path.display()))
    }

    fn parse(pyproject: Option<&str>, dir_name: &str) -> anyhow::Result<Project> {
        let doc: toml::Table = match pyproject {
            Some(text) => toml::from_str(text)?,
            None => toml::Table::new(),
        };
        let string_at = |table: &str, key: &str| -> anyhow::Result<Option<String>> {
            let mut value = Some(&doc);
            for part in table.split('.') {
                value = value.and_then(|t| t.get(part)).and_then(|v| v.as_table());
            }
            match value.and_then(|t| t.get(key)) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => bail!(
                    "`[{table}] {key}` must be a string, not a value of type `{}`",
                    other.type_str()
                ),
            }
        };
        Ok(Project {
            name: string_at("project", "name")?.unwrap_or_else(|| dir_name.to_owned()),
            world: string_at("tool.trellis", "world")?.unwrap_or_else(|| DEFAULT_WORLD.into()),
        })
    }
}

/// The `componentize-py` to run: the one on `PATH` if it is the pinned version, else the
/// build's own, installed first if need be.
fn componentize_py() -> anyhow::Result<PathBuf> {
    let exe = format!("componentize-py{}", std::env::consts::EXE_SUFFIX);
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(&exe))
                .find(|path| path.is_file())
        })
        .unwrap_or_default();
    if let Some(path) = on_path {
        match version_of(&path) {
            Some(v) if v == COMPONENTIZE_PY_VERSION => return Ok(path),
            found => eprintln!(
                "not using `{}` ({}): Trellis builds with componentize-py {COMPONENTIZE_PY_VERSION}",
                path.display(),
                found.map_or_else(
                    || "its version is unknown".to_owned(),
                    |v| format!("version {v}")
                ),
            ),
        }
    }
    let venv = managed_venv()?;
    install(&venv)?;
    Ok(venv_bin(&venv).join(exe))
}

/// What `componentize-py --version` says (`componentize-py 0.25.1` → `0.25.1`).
fn version_of(tool: &Path) -> Option<String> {
    let output = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// `$XDG_CACHE_HOME/trellis/componentize-py-VERSION` (else `~/.cache/…`): where the build keeps
/// its own componentize-py. `scripts/build-plugins` uses the same place.
fn managed_venv() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .context(Hinted::new(
            "cannot find a cache directory for componentize-py (neither `XDG_CACHE_HOME` nor `HOME` is set)",
            format!(
                "set `HOME`, or install componentize-py {COMPONENTIZE_PY_VERSION} on `PATH`: \
                 `pip install componentize-py=={COMPONENTIZE_PY_VERSION}`"
            ),
        ))?;
    Ok(cache
        .join("trellis")
        .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}")))
}

fn venv_bin(venv: &Path) -> PathBuf {
    venv.join(if cfg!(windows) { "Scripts" } else { "bin" })
}

/// The file whose presence says the virtual environment is complete (pip succeeded).
const COMPLETE_MARKER: &str = ".trellis-complete";

/// Creates the virtual environment `venv` with componentize-py in it, unless it is there. Holds
/// a lock beside it meanwhile, so concurrent builds (and `scripts/build-plugins`) install once.
fn install(venv: &Path) -> anyhow::Result<()> {
    if venv.join(COMPLETE_MARKER).is_file() {
        return Ok(());
    }
    let parent = venv.parent().unwrap_or(venv);
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create `{}`", parent.display()))?;
    // `…/componentize-py-0.25.1.lock`, the file `scripts/build-plugins` locks too.
    let mut lock_name = venv.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let lock_path = parent.join(lock_name);
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create `{}`", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock `{}`", lock_path.display()))?;
    if venv.join(COMPLETE_MARKER).is_file() {
        return Ok(()); // another build installed it while we waited
    }
    if venv.exists() {
        // A earlier install that did not finish.
        std::fs::remove_dir_all(venv)
            .with_context(|| format!("cannot remove `{}`", venv.display()))?;
    }
    eprintln!(
        "installing componentize-py {COMPONENTIZE_PY_VERSION} into `{}` (once; needs python3 and PyPI)",
        venv.display()
    );
    let python = if cfg!(windows) { "python" } else { "python3" };
    let status = Command::new(python)
        .args(["-m", "venv"])
        .arg(venv)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| {
            anyhow::Error::new(e).context(Hinted::new(
                format!("cannot run `{python}` to install componentize-py"),
                format!(
                    "install Python 3 (e.g. `apt-get install python3 python3-venv`), or put \
                     componentize-py {COMPONENTIZE_PY_VERSION} on `PATH`: \
                     `pip install componentize-py=={COMPONENTIZE_PY_VERSION}`"
                ),
            ))
        })?;
    if !status.success() {
        bail!(Hinted::new(
            format!("`{python} -m venv {}` failed ({status})", venv.display()),
            "on Debian and Ubuntu the venv module is a package of its own: \
             `apt-get install python3-venv`"
        ));
    }
    let requirement = format!("componentize-py=={COMPONENTIZE_PY_VERSION}");
    let status =
        Command::new(venv_bin(venv).join(format!("python{}", std::env::consts::EXE_SUFFIX)))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(&requirement)
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .status()
            .context("cannot run the virtual environment's python")?;
    if !status.success() {
        bail!(Hinted::new(
            format!("`pip install {requirement}` failed ({status})"),
            format!(
                "pip's error is above: it needs to reach PyPI (check the network or pip's proxy \
                 settings), or install it yourself with `pip install {requirement}` so that \
                 `componentize-py` is on `PATH`"
            )
        ));
    }
    std::fs::write(venv.join(COMPLETE_MARKER), COMPONENTIZE_PY_VERSION)
        .with_context(|| format!("cannot write into `{}`", venv.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/build-plugins` installs the same componentize-py into the same place.
    #[test]
    fn build_plugins_pins_the_same_componentize_py() {
        let script = include_str!("../../../scripts/build-plugins");
        assert!(
            script.contains(&format!(
                "COMPONENTIZE_PY_VERSION={COMPONENTIZE_PY_VERSION}\n"
            )),
            "scripts/build-plugins pins another componentize-py"
        );
        assert!(script.contains(COMPLETE_MARKER));
        assert!(script.contains("trellis/componentize-py-$COMPONENTIZE_PY_VERSION"));
        assert!(script.contains(r#"9>"$venv.lock""#), "the same lock file");
    }

    /// The WIT the projects are built for names the default world.
    #[test]
    fn the_wit_is_the_default_worlds() {
        assert!(templates::WIT.contains(&format!(
            "package {};",
            DEFAULT_WORLD.replace("/plugin@", "@")
        )));
    }

    #[test]
    fn project_name_and_world_from_pyproject() {
        let both = "[project]\nname = \"word-count\"\n[tool.trellis]\nworld = \"trellis:plugin/plugin@0.3.0\"\n";
        assert_eq!(
            Project::parse(Some(both), "dir").unwrap(),
            Project {
                name: "word-count".into(),
                world: "trellis:plugin/plugin@0.3.0".into()
            }
        );
        let neither = Project::parse(None, "dir").unwrap();
        assert_eq!(neither.name, "dir");
        assert_eq!(neither.world, DEFAULT_WORLD);
        let bad = Project::parse(Some("[project]\nname = 3\n"), "dir").unwrap_err();
        assert_eq!(
            bad.to_string(),
            "`[project] name` must be a string, not a value of type `integer`"
        );
    }

    #[test]
    fn templates_are_filled_completely() {
        for template in [
            templates::NODE_APP,
            templates::MASKING_APP,
            templates::PYPROJECT,
            templates::README,
        ] {
            let filled = template
                .replace("{{name}}", "x")
                .replace("{{kind}}", "node")
                .replace("{{file}}", "x.wasm")
                .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION);
            assert!(!filled.contains("{{"), "{filled}");
        }
        assert!(templates::PYPROJECT.contains(DEFAULT_WORLD));
        assert_eq!(wasm_file_name("word-count"), "word_count.wasm");
    }
}
