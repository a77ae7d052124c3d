//! Files that hold data, audit records or keys: created readable by the host's own user only
//! (files 0600, directories 0700), whatever the umask. An existing file or directory keeps
//! the mode its owner gave it.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

/// Creates `dir` and its missing parents, each new one 0700.
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir)
}

/// Creates the parent directory of `path` when missing (0700).
pub(crate) fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => create_dir_all(dir),
        None => Ok(()),
    }
}

/// `OpenOptions` whose newly created file is 0600.
pub(crate) fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    options.mode(0o600);
    options
}

/// Opens `path` for appending, creating it 0600 when missing.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    options().create(true).append(true).open(path)
}

/// Creates `path` (0600) empty when it does not exist yet; an existing file is left alone.
pub(crate) fn touch(path: &Path) -> io::Result<()> {
    match options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a new file beside `path`, then renames it over `path` (0600 either way).
pub(crate) fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}
