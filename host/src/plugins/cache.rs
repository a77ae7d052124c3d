//! Precompiled components on disk, keyed by the component's SHA-256 and the engine's
//! compatibility hash, so a restart or a reload of a known file skips compilation.
//!
//! An entry is `MAGIC`, an HMAC-SHA256, then wasmtime's serialized component. The HMAC is keyed
//! with a per-install secret (`install.key` in the cache directory, 32 random bytes, 0600, made
//! on first use) and covers the component's source hash, the engine's hash and the payload, so
//! an entry is native code only this install wrote, for exactly this component: a forged,
//! corrupt, truncated or swapped entry fails the check, and wasmtime's own header check catches
//! one compiled by another engine (a foreign entry). Either way the component is compiled again
//! and the entry rewritten (write beside, then rename). A cache that cannot be written only
//! costs time: the error is logged and the compiled component is used; without a key (the
//! directory cannot hold one) there is no cache.
//!
//! Only files this cache wrote are ever deserialized; a `.wasm` in the plugins directory is
//! always compiled from source, so a precompiled blob from a user is never trusted.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Entries of the keyed format (`cwa1` held an unkeyed SHA-256 and is never read).
const MAGIC: &[u8; 12] = b"trellis-cwa2";
/// The per-install key's file, in the cache directory.
const KEY_FILE: &str = "install.key";

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
    /// The per-install MAC key; `None` when it could not be read or made (no cache then).
    key: Option<[u8; 32]>,
}

impl ComponentCache {
    pub(crate) fn new(dir: PathBuf, engine_hash: String) -> Self {
        let key = match install_key(&dir) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no plugin cache key; plugins are compiled at every load");
                None
            }
        };
        ComponentCache {
            dir,
            engine_hash,
            key,
        }
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
        let Some(key) = &self.key else {
            return Ok((Component::new(engine, wasm)?, CacheOutcome::Disabled));
        };
        let mac = EntryMac {
            key,
            sha256,
            engine_hash: &self.engine_hash,
        };
        let path = self.entry_path(sha256);
        let outcome = match std::fs::read(&path) {
            Ok(bytes) => match open_entry(engine, &mac, &bytes) {
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
                if let Err(e) = write_entry(&path, &mac, &payload) {
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

/// What an entry's HMAC covers besides its payload: which component, which engine.
struct EntryMac<'a> {
    key: &'a [u8; 32],
    sha256: &'a str,
    engine_hash: &'a str,
}

impl EntryMac<'_> {
    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key).expect("HMAC takes any key size");
        mac.update(self.sha256.as_bytes());
        mac.update(b"\0");
        mac.update(self.engine_hash.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }
}

/// Checks and deserializes one entry, or says why it is unusable.
fn open_entry(engine: &Engine, mac: &EntryMac<'_>, bytes: &[u8]) -> Result<Component, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a trellis cache entry of this version")?;
    if rest.len() < 32 {
        return Err("truncated entry".into());
    }
    let (tag, payload) = rest.split_at(32);
    mac.mac(payload)
        .verify_slice(tag)
        .map_err(|_| "MAC mismatch (the entry was not written by this install for this component, or is corrupt)".to_owned())?;
    // SAFETY: the payload is exactly what `Component::serialize` produced in `load_or_compile`
    // for this component (the HMAC under this install's key proves this cache wrote it, for
    // this source hash and engine), and wasmtime checks that it was compiled by a compatible
    // engine before using it.
    unsafe { Component::deserialize(engine, payload) }
        .map_err(|e| format!("compiled by an incompatible engine: {e:#}"))
}

fn write_entry(path: &Path, mac: &EntryMac<'_>, payload: &[u8]) -> std::io::Result<()> {
    crate::private_fs::create_parent(path)?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&mac.mac(payload).finalize().into_bytes());
    bytes.extend_from_slice(payload);
    crate::private_fs::write_replace(path, &bytes)
}

/// The install's key: read from `dir/install.key`, or made (32 random bytes, 0600) when missing.
/// Two hosts starting together agree on one key: the file appears whole, by a hard link that
/// fails when another got there first.
fn install_key(dir: &Path) -> std::io::Result<[u8; 32]> {
    let path = dir.join(KEY_FILE);
    let read = |path: &Path| -> std::io::Result<[u8; 32]> {
        let bytes = std::fs::read(path)?;
        bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the key file is not 32 bytes: delete it to make a new one (the cache is rebuilt)",
            )
        })
    };
    match read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    crate::private_fs::create_dir_all(dir)?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{KEY_FILE}.tmp{}", std::process::id()));
    crate::private_fs::write_replace(&tmp, &key)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(e),
    }
}
