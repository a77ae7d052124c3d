//! Reading a file from a directory the host serves (plugins, policies, workflows). A symbolic
//! link is followed only when its target lies inside the same directory: the layout Kubernetes
//! uses for ConfigMap volumes (`guardrails.cedar -> ..data/guardrails.cedar`) works, and a link
//! pointing elsewhere (`policy.cedar -> /home/someone/permit-all.cedar`) is refused, so what
//! the directory holds is all it serves.

use std::io;
use std::path::Path;

/// The bytes of `path`, a file in `dir`.
pub(crate) fn read(dir: &Path, path: &Path) -> io::Result<Vec<u8>> {
    check(dir, path)?;
    std::fs::read(path)
}

/// The text of `path`, a file in `dir`.
pub(crate) fn read_to_string(dir: &Path, path: &Path) -> io::Result<String> {
    check(dir, path)?;
    std::fs::read_to_string(path)
}

/// Refuses `path` when it is a link whose target is outside `dir`.
fn check(dir: &Path, path: &Path) -> io::Result<()> {
    if !std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Ok(());
    }
    let target = std::fs::canonicalize(path)?;
    let root = std::fs::canonicalize(dir)?;
    if target.starts_with(&root) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it is a link to a file outside its directory (links are followed only within it)",
        ))
    }
}
