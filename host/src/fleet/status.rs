//! What the fleet serves, read from the control database: every host's heartbeat, the active
//! generation and the published ones (`trellis fleet status`, `GET /v1/fleet`), and the wait of
//! `publish --wait` until every live host has staged a generation.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::{FleetError, db};
use crate::pool::Pool;
use crate::sql::exec::Fetch;
use crate::sql::params::Params;
use crate::sql::row::Row;

/// One host's heartbeat row.
#[derive(Debug, Clone, Serialize)]
pub struct HostRow {
    /// Its id.
    pub id: String,
    /// Where it serves HTTP.
    pub address: String,
    /// Its trellis version.
    pub version: String,
    /// The generation it has staged, ready to serve.
    pub staged: Option<i64>,
    /// The generation it serves.
    pub active: Option<i64>,
    /// When it started serving `active`, in microseconds since the Unix epoch (its clock).
    pub activated_at_us: Option<i64>,
    /// The generation it last failed to load, if its last error is about one.
    pub failed: Option<i64>,
    /// Its last error.
    pub last_error: Option<String>,
    /// Whether it wrote its heartbeat within three of its intervals, or 5 s when that is longer
    /// (a host compiling a large plugin on a busy machine may be late).
    pub live: bool,
    /// Milliseconds since its last heartbeat.
    pub silent_ms: i64,
}

/// The fleet's state: the active generation, the published ones, every host.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// The active generation, if any was activated.
    pub active: Option<i64>,
    /// The newest published generation.
    pub latest: Option<i64>,
    /// The most recent generations (newest first, at most 20): id, publisher, time, files.
    pub generations: Vec<Value>,
    /// Every host that wrote a heartbeat and did not stop cleanly.
    pub hosts: Vec<HostRow>,
}

fn int(row: &Row, key: &str) -> Option<i64> {
    row.get(key).and_then(Value::as_i64)
}

fn text(row: &Row, key: &str) -> Option<String> {
    row.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Every host's heartbeat row, by id.
pub async fn hosts(pool: &Pool) -> Result<Vec<HostRow>, FleetError> {
    let out = pool
        .execute(
            "SELECT id, address, version, staged, active, activated_at_us, failed, last_error, \
             (now() - seen_at) < greatest(heartbeat_ms::bigint * 3, 5000) * interval '1 millisecond' AS live, \
             (extract(epoch FROM now() - seen_at) * 1000)::bigint AS silent_ms \
             FROM trellis_control.hosts ORDER BY id",
            &Params::None,
            Fetch::All,
        )
        .await
        .map_err(db("cannot read the hosts"))?;
    Ok(out
        .rows
        .iter()
        .map(|row| HostRow {
            id: text(row, "id").unwrap_or_default(),
            address: text(row, "address").unwrap_or_default(),
            version: text(row, "version").unwrap_or_default(),
            staged: int(row, "staged"),
            active: int(row, "active"),
            activated_at_us: int(row, "activated_at_us"),
            failed: int(row, "failed"),
            last_error: text(row, "last_error"),
            live: row.get("live").and_then(Value::as_bool).unwrap_or(false),
            silent_ms: int(row, "silent_ms").unwrap_or(0),
        })
        .collect())
}

/// The active generation and the newest published one.
pub async fn heads(pool: &Pool) -> Result<(Option<i64>, Option<i64>), FleetError> {
    let out = pool
        .execute(
            "SELECT (SELECT generation FROM trellis_control.active) AS active, \
             (SELECT max(id) FROM trellis_control.generations) AS latest",
            &Params::None,
            Fetch::One,
        )
        .await
        .map_err(db("cannot read the active generation"))?;
    let head = out.rows.first();
    Ok((
        head.and_then(|h| int(h, "active")),
        head.and_then(|h| int(h, "latest")),
    ))
}

/// The fleet's state.
pub async fn status(pool: &Pool) -> Result<FleetStatus, FleetError> {
    let (active, latest) = heads(pool).await?;
    let generations = pool
        .execute(
            "SELECT id, published_by, \
             to_char(published_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS published_at, \
             (SELECT count(*) FROM jsonb_object_keys(manifest -> 'files')) AS files \
             FROM trellis_control.generations ORDER BY id DESC LIMIT 20",
            &Params::None,
            Fetch::All,
        )
        .await
        .map_err(db("cannot read the generations"))?;
    Ok(FleetStatus {
        active,
        latest,
        generations: generations.rows.into_iter().map(Value::from).collect(),
        hosts: hosts(pool).await?,
    })
}

/// Why `publish --wait` did not activate its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// A live host could not load it.
    Failed {
        /// The host.
        host: String,
        /// Its error.
        error: String,
    },
    /// A live host had not staged it when the time ran out.
    NotStaged {
        /// The host.
        host: String,
        /// What it has staged.
        staged: Option<i64>,
    },
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Failed { host, error } => write!(f, "host `{host}` cannot load it: {error}"),
            Missing::NotStaged { host, staged } => write!(
                f,
                "host `{host}` has not staged it (it has staged {})",
                staged.map_or_else(|| "none".to_owned(), |s| s.to_string())
            ),
        }
    }
}

/// Waits until every live host has staged `generation` (or serves it). Returns the hosts that
/// had, or what is missing: at once when a live host cannot load it, else when `timeout` ends.
pub async fn wait_staged(
    pool: &Pool,
    generation: i64,
    timeout: Duration,
) -> Result<Result<Vec<String>, Vec<Missing>>, FleetError> {
    let until = Instant::now() + timeout;
    loop {
        let live: Vec<HostRow> = hosts(pool).await?.into_iter().filter(|h| h.live).collect();
        let failed: Vec<Missing> = live
            .iter()
            .filter(|h| h.failed == Some(generation))
            .map(|h| Missing::Failed {
                host: h.id.clone(),
                error: h.last_error.clone().unwrap_or_default(),
            })
            .collect();
        if !failed.is_empty() {
            return Ok(Err(failed));
        }
        let missing: Vec<Missing> = live
            .iter()
            .filter(|h| h.staged != Some(generation) && h.active != Some(generation))
            .map(|h| Missing::NotStaged {
                host: h.id.clone(),
                staged: h.staged,
            })
            .collect();
        if missing.is_empty() {
            return Ok(Ok(live.into_iter().map(|h| h.id).collect()));
        }
        if Instant::now() >= until {
            return Ok(Err(missing));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
