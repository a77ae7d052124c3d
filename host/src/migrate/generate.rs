//! `trellis migrate new`: the next zero-padded number plus a slug of the name, with templates.

use std::path::{Path, PathBuf};

use super::source::validate_id;

/// Why a migration could not be created.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum GenerateError {
    /// The name has no letters or digits.
    #[error("`{name}` makes an empty migration name")]
    #[diagnostic(help("use words, e.g. `add_user_settings`"))]
    EmptyName {
        /// What was given.
        name: String,
    },
    /// A dependency that is not in the directory.
    #[error("`--depends-on {id}`: no migration `{id}` in `{}`", dir.display())]
    #[diagnostic(help("`trellis migrate status` lists the known ids"))]
    UnknownDependency {
        /// The id.
        id: String,
        /// The migrations directory.
        dir: PathBuf,
    },
    /// The file system failed.
    #[error("cannot write `{}`: {cause}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS message.
        cause: String,
    },
}

/// Lower-case words joined by `_`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str(&word.to_ascii_lowercase());
    }
    out
}

/// Creates `dir/<NNN>_<slug>/` with `migration.toml`, `up.sql` and `down.sql`; returns its path.
/// The number is one more than the highest leading number in `dir`, padded to three digits.
pub fn new_migration(
    dir: &Path,
    name: &str,
    depends_on: &[String],
) -> Result<PathBuf, GenerateError> {
    let slug = slug(name);
    if slug.is_empty() {
        return Err(GenerateError::EmptyName {
            name: name.to_owned(),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| GenerateError::Io {
            path,
            cause: e.to_string(),
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut existing = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if entry.path().is_dir() {
            existing.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    for dep in depends_on {
        if !existing.contains(dep) {
            return Err(GenerateError::UnknownDependency {
                id: dep.clone(),
                dir: dir.to_path_buf(),
            });
        }
    }
    let (highest, width) = existing
        .iter()
        .filter_map(|n| {
            let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok().map(|v| (v, digits.len()))
        })
        .fold((0, 3), |(h, w), (v, len)| (h.max(v), w.max(len)));
    let id = format!("{:0width$}_{slug}", highest + 1);
    debug_assert!(validate_id(&id).is_ok());
    let path = dir.join(&id);
    std::fs::create_dir(&path).map_err(io(&path))?;
    let deps = depends_on
        .iter()
        .map(|d| format!("\"{d}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let description = slug.replace('_', " ");
    let files = [
        (
            "migration.toml",
            format!(
                "# What `{id}` does, what it needs first, and whether it runs in a transaction.\n\
                 description = \"{description}\"\n\
                 dependencies = [{deps}]\n\
                 # false for statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY);\n\
                 # on MariaDB DDL commits implicitly either way, and a failure marks the migration dirty.\n\
                 transaction = true\n"
            ),
        ),
        ("up.sql", format!("-- {id}: the forward step.\n")),
        (
            "down.sql",
            format!("-- {id}: undo up.sql (delete this file if the migration cannot be undone).\n"),
        ),
    ];
    for (file, text) in files {
        let p = path.join(file);
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::MigrationSet;

    #[test]
    fn numbers_and_slugs() {
        assert_eq!(slug("Add user-settings!"), "add_user_settings");
        let root = tempfile::tempdir().unwrap();
        let first = new_migration(root.path(), "create users", &[]).unwrap();
        assert!(first.ends_with("001_create_users"));
        std::fs::create_dir(root.path().join("003_manual")).unwrap();
        let next =
            new_migration(root.path(), "add settings", &["001_create_users".into()]).unwrap();
        assert!(next.ends_with("004_add_settings"), "{}", next.display());
        std::fs::remove_dir(root.path().join("003_manual")).unwrap();
        let set = MigrationSet::from_dir(root.path()).unwrap();
        let m = set.get("004_add_settings").unwrap();
        assert_eq!(m.dependencies(), ["001_create_users"]);
        assert!(m.transactional() && m.reversible());
        let err = new_migration(root.path(), "x", &["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("no migration `nope`"), "{err}");
        assert!(new_migration(root.path(), "!!", &[]).is_err());
    }
}
