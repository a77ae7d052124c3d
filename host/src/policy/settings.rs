//! `[policy]` of trellis.toml: the zone time conditions are read in, the `hmac` mask key, the
//! decision cache, and where the audit trail goes; checked when the file loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::database::DatabaseConfig;
use crate::config::values::{HumanDuration, Interpolated, ResolveError, Secret, relative_to};

/// `[policy]`: the zone time conditions are read in, the `hmac` mask key, the decision cache,
/// and where every decision is recorded.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// An IANA time zone name (default `UTC`).
    pub timezone: String,
    /// The key of the `hmac` mask (default: the `TRELLIS_MASK_HMAC_KEY` environment variable).
    pub hmac_key: Option<Secret>,
    /// How many decisions to cache (default 100000).
    pub cache_capacity: usize,
    /// Where decisions are recorded.
    pub audit: AuditTarget,
    /// How many recent decisions `GET /v1/audit` can show (default 10000).
    pub audit_recent: usize,
    /// When the audit file is rotated, and how many rotated files are kept.
    pub audit_rotation: crate::policy::audit::Rotation,
    /// What happens while audit records cannot be written.
    pub audit_on_failure: crate::policy::audit::OnFailure,
    /// How many records may wait for the audit writer (default 65536).
    pub audit_queue: usize,
}

/// Where the audit trail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// JSON lines appended to a file (default `<data>/audit.jsonl`).
    File(PathBuf),
    /// The audit tables (`policy_audit_runs`, `policy_audit_decisions`, `policy_audit`) of a
    /// configured database.
    Database(String),
    /// Nowhere (only the in-memory recent list).
    Off,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    timezone: Option<Interpolated<String>>,
    hmac_key: Option<Interpolated<Secret>>,
    cache_capacity: Option<usize>,
    audit: Option<bool>,
    audit_file: Option<Interpolated<PathBuf>>,
    audit_database: Option<Interpolated<String>>,
    audit_recent: Option<usize>,
    audit_max_bytes: Option<u64>,
    audit_max_age: Option<Interpolated<HumanDuration>>,
    audit_keep: Option<usize>,
    audit_on_failure: Option<crate::policy::audit::OnFailure>,
    audit_queue: Option<usize>,
}

pub(crate) fn resolve(
    raw: Option<toml::Spanned<RawPolicy>>,
    base: &Path,
    data: &Path,
    databases: &BTreeMap<String, DatabaseConfig>,
) -> Result<PolicyConfig, ResolveError> {
    let (span, raw) = match raw {
        Some(s) => (s.span(), s.into_inner()),
        None => (0..0, RawPolicy::default()),
    };
    let error = |key: &str, message: String| ResolveError {
        span: span.clone(),
        key: format!("policy.{key}"),
        message,
    };
    let timezone = raw.timezone.map_or_else(|| "UTC".to_owned(), |t| t.0);
    jiff::tz::TimeZone::get(&timezone).map_err(|e| {
        error(
            "timezone",
            format!(
                "unknown time zone `{timezone}` ({e}); use an IANA name such as `Europe/Berlin`"
            ),
        )
    })?;
    let audit = match (raw.audit, raw.audit_file, raw.audit_database) {
        (Some(false), None, None) => AuditTarget::Off,
        (Some(false), _, _) => {
            return Err(error(
                "audit",
                "`audit = false` turns the audit trail off; remove `audit_file`/`audit_database` or the switch".into(),
            ));
        }
        (_, Some(_), Some(_)) => {
            return Err(error(
                "audit_file",
                "give `audit_file` or `audit_database`, not both".into(),
            ));
        }
        (_, Some(file), None) => AuditTarget::File(relative_to(base, file.0)),
        (_, None, Some(db)) => {
            if !databases.contains_key(&db.0) {
                return Err(error(
                    "audit_database",
                    format!("`{}` is not a configured database", db.0),
                ));
            }
            AuditTarget::Database(db.0)
        }
        (_, None, None) => AuditTarget::File(data.join("audit.jsonl")),
    };
    let defaults = crate::policy::audit::Rotation::default();
    let audit_rotation = crate::policy::audit::Rotation {
        max_bytes: raw.audit_max_bytes.unwrap_or(defaults.max_bytes),
        max_age: raw.audit_max_age.map_or(defaults.max_age, |d| d.0.0),
        keep: raw.audit_keep.unwrap_or(defaults.keep),
    };
    if audit_rotation.max_bytes == 0 || audit_rotation.max_age.is_zero() {
        return Err(error(
            "audit_max_bytes",
            "`audit_max_bytes` and `audit_max_age` must be above zero".into(),
        ));
    }
    let audit_queue = raw.audit_queue.unwrap_or(65_536);
    if audit_queue == 0 {
        return Err(error(
            "audit_queue",
            "`audit_queue` must be above zero (records wait there for the writer)".into(),
        ));
    }
    Ok(PolicyConfig {
        timezone,
        hmac_key: raw.hmac_key.map(|k| k.0),
        cache_capacity: raw.cache_capacity.unwrap_or(100_000),
        audit,
        audit_recent: raw.audit_recent.unwrap_or(10_000),
        audit_rotation,
        audit_on_failure: raw.audit_on_failure.unwrap_or_default(),
        audit_queue,
    })
}
