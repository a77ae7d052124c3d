//! Publishing a bundle as a new generation, and activating one, on the control database.
//!
//! A publish is one transaction: the files not stored yet (by SHA-256: an unchanged plugin is
//! not uploaded again), the manifest as generation N+1, N+1 made active (or, for `--wait`, only
//! announced, so hosts stage it), and a `NOTIFY` on [`super::CHANNEL`] (delivered when the
//! transaction commits): `{"active":N}` or `{"published":N}`. Publishers take turns on a
//! transaction-scoped advisory lock, so generation numbers never collide.

use base64::Engine as _;
use serde_json::{Value, json};

use super::bundle::Bundle;
use super::{CHANNEL, FleetError, db, named};
use crate::pool::{Lease, Pool, PoolError};
use crate::sql::exec::{Fetch, Output};

/// What a publish wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The new generation.
    pub generation: i64,
    /// Files stored by this publish.
    pub uploaded: usize,
    /// Files already stored (by content).
    pub reused: usize,
    /// The generation active when this one was published (before it, when it was activated).
    pub active_before: Option<i64>,
}

async fn run(lease: &Lease, sql: &str, params: Value) -> Result<Output, PoolError> {
    lease.execute(sql, &named(params), Fetch::All).await
}

/// Runs `body` on a connection of `pool`, in a transaction holding the publish lock; rolled
/// back on error.
async fn in_transaction<T>(
    pool: &Pool,
    body: impl AsyncFnOnce(&Lease) -> Result<T, FleetError>,
) -> Result<T, FleetError> {
    let lease = &pool
        .acquire()
        .await
        .map_err(db("cannot connect to the control database"))?;
    run(lease, "BEGIN", json!({}))
        .await
        .map_err(db("cannot begin the publish transaction"))?;
    let done = async {
        run(
            lease,
            "SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(hashtext('trellis_control.publish'))) l",
            json!({}),
        )
        .await
        .map_err(db("cannot take the publish lock"))?;
        body(lease).await
    }
    .await;
    let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = run(lease, end, json!({})).await;
    let value = done?;
    ended.map_err(db("cannot commit the publish"))?;
    Ok(value)
}

/// Writes `bundle` as a new generation (published by `by`): active at once when `activate`,
/// else only announced for the hosts to stage (`publish --wait` activates it when they have).
pub async fn publish(
    pool: &Pool,
    bundle: &Bundle,
    by: &str,
    activate: bool,
) -> Result<Published, FleetError> {
    in_transaction(pool, async |lease: &Lease| {
        let hashes: Vec<&str> = bundle.files.values().map(|f| f.sha256.as_str()).collect();
        let stored = run(
            lease,
            "SELECT sha256 FROM trellis_control.blobs WHERE sha256 = ANY(:hashes)",
            json!({ "hashes": hashes }),
        )
        .await
        .map_err(db("cannot read the stored files"))?;
        let mut have: std::collections::HashSet<String> = stored
            .rows
            .iter()
            .filter_map(|r| r.get("sha256").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let (mut uploaded, mut reused) = (0, 0);
        for file in bundle.files.values() {
            if !have.insert(file.sha256.clone()) {
                reused += 1;
                continue;
            }
            run(
                lease,
                "INSERT INTO trellis_control.blobs (sha256, size, content) \
                 VALUES (:sha256, :size, :content) ON CONFLICT (sha256) DO NOTHING",
                json!({
                    "sha256": file.sha256,
                    "size": file.bytes.len(),
                    "content": base64::engine::general_purpose::STANDARD.encode(&file.bytes),
                }),
            )
            .await
            .map_err(db("cannot store a file"))?;
            uploaded += 1;
        }
        let next = run(
            lease,
            "SELECT coalesce(max(id), 0) + 1 AS id FROM trellis_control.generations",
            json!({}),
        )
        .await
        .map_err(db("cannot number the generation"))?;
        let generation = next.rows[0]["id"].as_i64().unwrap_or(1);
        let active_before = active_in(lease).await?;
        run(
            lease,
            "INSERT INTO trellis_control.generations (id, manifest, published_by) \
             VALUES (:id, :manifest, :by)",
            json!({"id": generation, "manifest": bundle.manifest(), "by": by}),
        )
        .await
        .map_err(db("cannot record the generation"))?;
        if activate {
            activate_in(lease, generation).await?;
        } else {
            notify(lease, json!({ "published": generation })).await?;
        }
        Ok(Published {
            generation,
            uploaded,
            reused,
            active_before,
        })
    })
    .await
}

/// Makes `generation` (published earlier) the active one: the fleet rolls back or forward to it.
pub async fn activate(pool: &Pool, generation: i64) -> Result<(), FleetError> {
    in_transaction(pool, async |lease: &Lease| {
        let found = run(
            lease,
            "SELECT id FROM trellis_control.generations WHERE id = :id",
            json!({ "id": generation }),
        )
        .await
        .map_err(db("cannot read the generations"))?;
        if found.rows.is_empty() {
            return Err(FleetError::NoSuchGeneration(generation));
        }
        activate_in(lease, generation).await
    })
    .await
}

/// Makes `generation` active only if the active generation is still `expected` (what
/// `publish --wait` saw when it published): an activation made meanwhile by someone else is
/// never undone.
pub async fn activate_if(
    pool: &Pool,
    generation: i64,
    expected: Option<i64>,
) -> Result<(), FleetError> {
    in_transaction(pool, async |lease: &Lease| {
        let now = active_in(lease).await?;
        if now != expected {
            return Err(FleetError::Superseded {
                generation,
                active: now,
            });
        }
        activate_in(lease, generation).await
    })
    .await
}

/// Inside a transaction: the active generation.
async fn active_in(lease: &Lease) -> Result<Option<i64>, FleetError> {
    let out = run(
        lease,
        "SELECT generation FROM trellis_control.active",
        json!({}),
    )
    .await
    .map_err(db("cannot read the active generation"))?;
    Ok(out
        .rows
        .first()
        .and_then(|r| r.get("generation"))
        .and_then(Value::as_i64))
}

/// Inside the publish transaction: `generation` becomes active, and the fleet is told at commit.
async fn activate_in(lease: &Lease, generation: i64) -> Result<(), FleetError> {
    run(
        lease,
        "INSERT INTO trellis_control.active (one, generation) VALUES (true, :id) \
         ON CONFLICT (one) DO UPDATE SET generation = EXCLUDED.generation, activated_at = now()",
        json!({ "id": generation }),
    )
    .await
    .map_err(db("cannot activate the generation"))?;
    notify(lease, json!({ "active": generation })).await
}

/// Inside the publish transaction: tells the fleet `payload` at commit.
async fn notify(lease: &Lease, payload: Value) -> Result<(), FleetError> {
    run(
        lease,
        "SELECT 1 AS sent FROM (SELECT pg_notify(:channel, :payload)) n",
        json!({"channel": CHANNEL, "payload": payload.to_string()}),
    )
    .await
    .map_err(db("cannot notify the fleet"))?;
    Ok(())
}
