//! Precompiled components on disk, keyed by the component's SHA-256 and the engine's
//! compatibility hash, so a restart or a reload of a known file skips compilation.
//!
//! An entry is `MAGIC`, the SHA-256 of the payload, then wasmtime's serialized component. On
//! load the checksum catches a corrupt or truncated entry, and wasmtime's own header check
//! catches one compiled by another engine (a foreign entry): either way the component is
//! compiled again and the entry rewritten (write beside, then rename). A cache that cannot be
//! written only costs time: the error is logged and the compiled component is used.
//!
//! Only files this cache wrote are ever deserialized; a `.wasm` in the plugins directory is
//! always compiled from source, so a precompiled blob from a user is never trusted.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 12] = b"trellis-cwa1";

/// Where the component came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// No cache is configured: compiled.
    Disabled,
    /// Loaded from a valid entry.
    Hit,
    /// No entry: compiled and written.
    Miss,
    /// An entry existed but was unusable (the reason says why): compiled and rewritten.
    Rebuilt(String),
}

/// The precompiled-component cache under the data directory.
pub(crate) struct ComponentCache {
    dir: PathBuf,
    engine_hash: String,
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf, engine_hash: String) -> Self {
        ComponentCache { dir, engine_hash }
    }

    /// The entry for a component whose SHA-256 (hex) is `sha256`.
    pub(crate) fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm", self.engine_hash))
    }

    /// The component for `wasm` (whose SHA-256 is `sha256`), from the cache when possible.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.entry_path(sha256);
        let outcome = match std::fs::read(&path) {
            Ok(bytes) => match open_entry(engine, &bytes) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(reason) => {
                    tracing::warn!(entry = %path.display(), %reason, "plugin cache entry unusable; recompiling");
                    CacheOutcome::Rebuilt(reason)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheOutcome::Miss,
            Err(e) => CacheOutcome::Rebuilt(format!("cannot read the entry: {e}")),
        };
        let component = Component::new(engine, wasm)?;
        match component.serialize() {
            Ok(payload) => {
                if let Err(e) = write_entry(&path, &payload) {
                    tracing::warn!(entry = %path.display(), error = %e, "cannot write the plugin cache entry");
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot serialize the compiled plugin")
            }
        }
        Ok((component, outcome))
    }
}

/// Checks and deserializes one entry, or says why it is unusable.
fn open_entry(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a trellis cache entry")?;
    if rest.len() < 32 {
        return Err("truncated entry".into());
    }
    let (sum, payload) = rest.split_at(32);
    if Sha256::digest(payload)[..] != *sum {
        return Err("checksum mismatch (corrupt entry)".into());
    }
    // SAFETY: the payload is exactly what `Component::serialize` produced in `load_or_compile`
    // (the checksum proves it is unchanged since this cache wrote it), and wasmtime checks that it
    // was compiled by a compatible engine before using it.
    unsafe { Component::deserialize(engine, payload) }
        .map_err(|e| format!("compiled by an incompatible engine: {e:#}"))
}

fn write_entry(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&Sha256::digest(payload));
    bytes.extend_from_slice(payload);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}
