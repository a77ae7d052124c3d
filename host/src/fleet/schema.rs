//! The control plane's schema `trellis_control`, brought up to date by the migration runner with
//! migrations of its own: their history is `trellis_control.trellis_migrations`, apart from the
//! application's.

use std::sync::Arc;

use super::{FleetError, db};
use crate::config::database::{DatabaseConfig, Pooler};
use crate::config::values::DatabaseKind;
use crate::migrate::{Migration, MigrationSet, Runner, Step, StepFuture};
use crate::pool::Pool;
use crate::sql::exec::Fetch;
use crate::sql::params::Params;

/// The schema every control table lives in.
pub const SCHEMA: &str = "trellis_control";

/// The control migrations, in order: id, description, SQL.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    (
        "0001_bundles",
        "bundle files by content, generations and the active one",
        "CREATE TABLE trellis_control.blobs (
        sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
        size bigint NOT NULL,
        content bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE trellis_control.generations (
        id bigint PRIMARY KEY CHECK (id > 0),
        manifest jsonb NOT NULL,
        published_by text NOT NULL,
        published_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE trellis_control.active (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        generation bigint NOT NULL REFERENCES trellis_control.generations (id),
        activated_at timestamptz NOT NULL DEFAULT now()
    );",
    ),
    (
        "0002_hosts",
        "every host's heartbeat: what it has staged and serves, and its last error",
        "CREATE TABLE trellis_control.hosts (
        id text PRIMARY KEY,
        instance text NOT NULL,
        address text NOT NULL,
        version text NOT NULL,
        staged bigint,
        active bigint,
        activated_at_us bigint,
        failed bigint,
        last_error text,
        heartbeat_ms integer NOT NULL CHECK (heartbeat_ms > 0),
        started_at timestamptz NOT NULL DEFAULT now(),
        seen_at timestamptz NOT NULL DEFAULT now()
    );",
    ),
];

/// One control migration.
struct ControlMigration {
    id: &'static str,
    description: &'static str,
    after: Option<&'static str>,
    sql: &'static str,
}

impl Migration for ControlMigration {
    fn id(&self) -> &str {
        self.id
    }

    fn description(&self) -> &str {
        self.description
    }

    fn dependencies(&self) -> Vec<String> {
        self.after.map(str::to_owned).into_iter().collect()
    }

    fn fingerprint(&self) -> &str {
        self.sql
    }

    fn sql(&self, up: bool) -> Option<&str> {
        up.then_some(self.sql)
    }

    fn up<'a>(&'a self, db: &'a Step<'a>) -> StepFuture<'a> {
        Box::pin(async move { db.script(self.sql).await.map(drop) })
    }
}

fn migrations() -> MigrationSet {
    let mut set = MigrationSet::new();
    let mut after = None;
    for (id, description, sql) in MIGRATIONS {
        set.register(Arc::new(ControlMigration {
            id,
            description,
            after,
            sql,
        }))
        .expect("the control migrations are distinct and ordered");
        after = Some(*id);
    }
    set
}

/// Opens the control database `control` (PostgreSQL, directly: not behind a pooler) with the
/// control schema current; `by` (`trellis publish`, `trellis serve`) is recorded with the
/// migrations it applies.
pub async fn open(control: &DatabaseConfig, by: &str) -> Result<Pool, FleetError> {
    if control.target.kind() != DatabaseKind::Postgres {
        return Err(FleetError::NotPostgres(control.name.clone()));
    }
    if control.pooler != Pooler::None {
        return Err(FleetError::Pooled(control.name.clone()));
    }
    let connect = |e| FleetError::Connect {
        database: control.name.clone(),
        source: Box::new(e),
    };
    let pool = crate::database::open(control).await.map_err(connect)?;
    pool.execute(
        "CREATE SCHEMA IF NOT EXISTS trellis_control",
        &Params::None,
        Fetch::All,
    )
    .await
    .map_err(db("cannot create the control schema"))?;
    // The runner keeps its history in the current schema: the control schema's own.
    let mut scoped = control.clone();
    scoped.search_path = Some(SCHEMA.to_owned());
    let migrating = crate::database::open(&scoped).await.map_err(connect)?;
    let runner = Runner::new(migrating.clone(), migrations()).by(by);
    let applied = runner
        .apply(None, &mut ())
        .await
        .map_err(|e| FleetError::Schema(Box::new(e)));
    migrating.close().await;
    applied?;
    Ok(pool)
}
