//! Runs one prepared [`Statement`] on one driver connection: binds the JSON arguments to the
//! types the database expects, and maps result rows to JSON.
//!
//! # Row mapping
//!
//! | database type | JSON |
//! | --- | --- |
//! | NULL, PostgreSQL `void` | `null` |
//! | booleans (`BOOL`, MySQL `TINYINT(1)`) | `true` / `false` |
//! | integers | numbers |
//! | floats | numbers (`NaN` and infinities become strings) |
//! | `NUMERIC` / `DECIMAL` | strings holding the exact decimal (`"12345.6789"`): no precision lost |
//! | text types, enums | strings |
//! | `TIMESTAMPTZ` | RFC 3339 strings in UTC (`"2024-05-01T09:30:00Z"`) |
//! | `TIMESTAMP`, `DATETIME` (no zone) | `"2024-05-01T09:30:00"` (RFC 3339 without offset) |
//! | `DATE` / `TIME` | `"2024-05-01"` / `"09:30:00"` |
//! | `UUID` | strings |
//! | `JSON` / `JSONB` | the JSON value itself |
//! | `BYTEA`, `BLOB`, binary | base64 strings (standard alphabet, padded) |
//! | PostgreSQL arrays | arrays of the mapped elements |
//! | pgvector `vector` | arrays of numbers |
//!
//! A type outside this table is an error naming the column and the type, with the hint to cast
//! it to text in the query.
//!
//! # Parameter binding
//!
//! On PostgreSQL the statement is prepared first (once per connection: sqlx caches it) and each
//! JSON value is encoded as the type PostgreSQL inferred for its placeholder, so `'2024-05-01'`
//! binds to a `DATE` column, `"8d4…"` to a `UUID`, and `[1, 2]` to an `INT4[]` or a `vector`.
//! MySQL and SQLite convert on their own: values bind as their JSON kind (objects and arrays as
//! JSON text).

use base64::Engine as _;
use futures_util::TryStreamExt;
use serde_json::{Map, Number, Value};
use sqlx::mysql::{MySql, MySqlArguments, MySqlConnection, MySqlRow};
use sqlx::postgres::{PgArguments, PgConnection, PgRow, PgValueRef, Postgres};
use sqlx::query::Query;

use super::error::DatabaseError;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnection, SqliteRow};
use sqlx::{
    AssertSqlSafe, Column, Either, Executor, Row, SqlSafeStr, Statement as _, TypeInfo, ValueRef,
};

use super::params::{Shape, Statement};
use super::row::Row as OutputRow;

/// How many rows to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// The first row as an object, or `null`.
    One,
    /// Every row.
    All,
    /// The first `n` rows. The server produces only those for a query that reads rows: on
    /// PostgreSQL through a cursor, on MariaDB with `sql_select_limit`, on SQLite by stepping no
    /// further; elsewhere (MySQL, statements a cursor cannot run) the rest are read but never
    /// decoded.
    Many(usize),
    /// The first `n` rows in one round trip, as a plain statement runs: the rest are read but
    /// never decoded (on MariaDB `sql_select_limit` stops them at the server, on SQLite no
    /// further step is taken). Cheaper than [`Fetch::Many`]'s cursor on PostgreSQL when most
    /// answers fit; what a plugin's statement runs with. The rows come as JSON text
    /// ([`Output::text`]), written straight from the driver's row: what a plugin is handed.
    Capped(usize),
}

/// What a statement returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The rows (at most one for [`Fetch::One`]); none for [`Fetch::Capped`], whose rows are
    /// in `text`.
    pub rows: Vec<OutputRow>,
    /// For [`Fetch::Capped`], a statement that returns rows: the rows as the JSON text of an
    /// array of objects, the text `rows` would serialize to (a row with two columns of one name
    /// keeps the last value, in the first one's place, as in `rows`).
    pub text: Option<String>,
    /// Rows returned, or rows affected for a statement that returns none.
    pub row_count: u64,
    /// Whether the statement returns rows at all.
    pub returns_rows: bool,
}

impl From<sqlx::Error> for ExecError {
    fn from(error: sqlx::Error) -> ExecError {
        ExecError::Database(DatabaseError::from(error))
    }
}

/// A failure while binding, running or decoding.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExecError {
    /// The database or the driver reported an error.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// A JSON argument cannot be encoded as the placeholder's type.
    #[error("parameter {position} cannot be bound as `{ty}`: {reason}")]
    Bind {
        /// 1-based placeholder position.
        position: usize,
        /// The database type.
        ty: String,
        /// Why.
        reason: String,
    },
    /// A result column has a type without a JSON mapping.
    #[error("column `{column}` has type `{ty}`, which has no JSON mapping")]
    #[diagnostic(help(
        "cast it in the query, e.g. `{column}::text` (PostgreSQL) or `CAST({column} AS CHAR)` (MySQL)"
    ))]
    Unmapped {
        /// The column name.
        column: String,
        /// Its type.
        ty: String,
    },
    /// Behind a transaction-mode pooler, a statement that would leave state in the server
    /// session (see [`Statement::outlives_transaction`]).
    #[error(
        "the statement would leave state in the server session (`SET`, `RESET`, `LISTEN`, \
         `PREPARE`, `DEALLOCATE`, `DISCARD`, `LOAD`, a cursor `WITH HOLD`, a temporary object, a \
         session advisory lock, `set_config`), which the database's transaction-mode pooler \
         (`pooler = \"transaction\"`) does not keep"
    )]
    #[diagnostic(help(
        "use `SET LOCAL` or `pg_advisory_xact_lock` inside a transaction, or connect to the \
         server directly"
    ))]
    SessionState,
    /// Behind a transaction-mode pooler, the server stopped the statement at its time limit
    /// (the transaction's `statement_timeout`).
    #[error("the server stopped the statement at its time limit")]
    ServerTimeout,
}

/// How [`run_pg`] runs a PostgreSQL statement.
#[derive(Clone, Copy)]
pub(super) enum PgMode<'a> {
    /// As a named statement the driver caches, its arguments (if any) bound as the types
    /// PostgreSQL inferred when it was prepared; a session statement or a script without
    /// arguments goes through the simple protocol.
    Cached,
    /// As an unnamed statement, its arguments bound as `types` (what PostgreSQL inferred for its
    /// placeholders): what a connection behind a transaction-mode pooler runs (see
    /// `super::pooled`).
    Unnamed(&'a [String]),
    /// Through the simple protocol (a script behind a transaction-mode pooler).
    Simple,
}

/// Runs `stmt` on PostgreSQL as `mode` says.
///
/// Every PostgreSQL statement takes this path, in one `async fn` from the connection to the
/// driver: each further layer would cost a state machine and the moves into it, per statement.
pub(super) async fn run_pg(
    conn: &mut PgConnection,
    stmt: &Statement,
    fetch: Fetch,
    mode: PgMode<'_>,
) -> Result<Output, ExecError> {
    let simple = match mode {
        PgMode::Cached => stmt.args.is_empty() && (stmt.touches_session || stmt.statements > 1),
        PgMode::Unnamed(_) => false,
        PgMode::Simple => true,
    };
    if simple {
        // Session statements and scripts go through the simple protocol.
        let stream = sqlx::raw_sql(AssertSqlSafe(stmt.sql.clone())).fetch_many(&mut *conn);
        return collect(stream, fetch, |d| d.rows_affected(), pg_columns).await;
    }
    // Without arguments nothing is prepared first (the query prepares itself, once per
    // connection), and the query is built where it runs: it is moved by copying.
    let prepared;
    let types: &[String] = match mode {
        PgMode::Unnamed(types) => types,
        _ if stmt.args.is_empty() => &[],
        _ => {
            prepared = prepare_pg(conn, stmt).await?;
            &prepared
        }
    };
    let mut query = sqlx::query::<Postgres>(AssertSqlSafe(stmt.sql.clone()));
    if matches!(mode, PgMode::Unnamed(_)) {
        query = query.persistent(false);
    }
    if !stmt.args.is_empty() {
        query = bind_pg_typed(query, stmt, types)?;
    }
    if matches!(fetch, Fetch::One) && stmt.shape == Shape::Query {
        // One row of a query that always returns a result set (`SELECT … INTO` creates a table
        // instead): the driver's single-row path, which decodes only the first row and skips
        // the wrapper stream `fetch_many` adds (on a short query that costs as much as the rest
        // of the call). Rows affected do not apply.
        let rows = match query.fetch_optional(&mut *conn).await? {
            Some(row) => vec![to_row(&row, pg_columns, &mut Names::default())?],
            None => Vec::new(),
        };
        return Ok(with_rows(rows));
    }
    #[allow(deprecated)] // one statement: the deprecation is about several
    let stream = query.fetch_many(&mut *conn);
    collect(stream, fetch, |d| d.rows_affected(), pg_columns).await
}

/// Binds `stmt`'s arguments to `query`, each as the type PostgreSQL inferred for its placeholder
/// in `stmt.sql`. The prepared statement is cached per connection, so this costs a round trip
/// once per statement.
async fn bind_pg_args<'q>(
    conn: &mut PgConnection,
    stmt: &Statement,
    query: PgQuery<'q>,
) -> Result<PgQuery<'q>, ExecError> {
    if stmt.args.is_empty() {
        return Ok(query);
    }
    let types = prepare_pg(conn, stmt).await?;
    bind_pg_typed(query, stmt, &types)
}

/// Prepares `stmt` on PostgreSQL (a named statement, which the driver caches unless its cache is
/// off): the types PostgreSQL inferred for its placeholders.
pub(super) async fn prepare_pg(
    conn: &mut PgConnection,
    stmt: &Statement,
) -> Result<Vec<String>, ExecError> {
    let prepared = (&mut *conn)
        .prepare(AssertSqlSafe(stmt.sql.clone()).into_sql_str())
        .await?;
    Ok(match prepared.parameters() {
        Some(Either::Left(types)) => types.iter().map(|t| t.name().to_owned()).collect(),
        _ => Vec::new(),
    })
}

/// Binds `stmt`'s arguments to `query` as `types`, one per placeholder (`TEXT` past the end).
fn bind_pg_typed<'q>(
    mut query: PgQuery<'q>,
    stmt: &Statement,
    types: &[String],
) -> Result<PgQuery<'q>, ExecError> {
    for (i, value) in stmt.args.iter().enumerate() {
        let ty = types.get(i).map_or("TEXT", String::as_str);
        query = bind_pg(query, value, ty).map_err(|reason| ExecError::Bind {
            position: i + 1,
            ty: ty.to_owned(),
            reason,
        })?;
    }
    Ok(query)
}

/// The cursor `fetch_mode = "many"` reads from on PostgreSQL.
const MANY_CURSOR: &str = "trellis_fetch_many";

/// `fetch_mode = "many"` on PostgreSQL: the query runs behind a cursor and only `FETCH n` rows
/// are produced and sent, however large the result would be. The cursor lives in a transaction
/// of its own (committed, as autocommit would), or in a savepoint when the caller has a
/// transaction open (`maybe_in_transaction`: a session statement ran on the connection; a
/// `SAVEPOINT` tells). `None` when the statement cannot run behind a cursor (it does not read
/// rows, several statements, a data-modifying `WITH`, n = 0 or above `i32::MAX`, an aborted
/// transaction): the caller runs it plainly and stops decoding after `n` rows.
pub(super) async fn run_pg_many(
    conn: &mut PgConnection,
    stmt: &Statement,
    n: usize,
    maybe_in_transaction: bool,
) -> Result<Option<Output>, ExecError> {
    // `FETCH` takes a 32-bit count; a larger fetch size reads the plain way.
    let fits = i32::try_from(n).is_ok_and(|n| n > 0);
    if !fits || stmt.statements != 1 || stmt.touches_session || !stmt.shape.reads_rows() {
        return Ok(None);
    }
    // Preparing the query itself (cached per connection; with arguments `bind_pg_args` does it)
    // has the driver know its column types before `FETCH` is described: looking one up then
    // would reuse the unnamed statement `FETCH` runs in. Done first, so that its failure leaves
    // no transaction behind.
    if stmt.args.is_empty() {
        (&mut *conn)
            .prepare(AssertSqlSafe(stmt.sql.clone()).into_sql_str())
            .await?;
    }
    let nested = if maybe_in_transaction {
        match conn
            .execute(sqlx::raw_sql(AssertSqlSafe(format!(
                "SAVEPOINT {MANY_CURSOR}"
            ))))
            .await
        {
            Ok(_) => true,
            // 25P01: no transaction is open.
            Err(e) if super::error::sqlstate(&e).as_deref() == Some("25P01") => false,
            Err(_) => return Ok(None),
        }
    } else {
        false
    };
    if !nested {
        conn.execute(sqlx::raw_sql("BEGIN")).await?;
    }
    let declare = format!("DECLARE {MANY_CURSOR} NO SCROLL CURSOR FOR {}", stmt.sql);
    let declared = match bind_pg_args(
        conn,
        stmt,
        sqlx::query::<Postgres>(AssertSqlSafe(declare)).persistent(false),
    )
    .await
    {
        Ok(query) => query.execute(&mut *conn).await.map_err(ExecError::from),
        Err(error) => Err(error),
    };
    if let Err(error) = declared {
        let undo = if nested {
            format!("ROLLBACK TO SAVEPOINT {MANY_CURSOR}; RELEASE SAVEPOINT {MANY_CURSOR}")
        } else {
            "ROLLBACK".to_owned()
        };
        conn.execute(sqlx::raw_sql(AssertSqlSafe(undo))).await?;
        return match error {
            // The plain run reports the statement's own errors.
            ExecError::Database(_) => Ok(None),
            other => Err(other),
        };
    }
    // The rows come through the extended protocol: binary, with every column type resolved
    // (pgvector and the other extension types decode as in a plain run).
    let fetch_sql = format!("FETCH {n} FROM {MANY_CURSOR}");
    #[allow(deprecated)] // one statement: the deprecation is about several
    let stream = sqlx::query::<Postgres>(AssertSqlSafe(fetch_sql))
        .persistent(false)
        .fetch_many(&mut *conn);
    let fetched = collect(stream, Fetch::All, |_| 0, pg_columns).await;
    let finish = match (&fetched, nested) {
        (Ok(_), false) => Some("COMMIT".to_owned()),
        (Err(_), false) => Some("ROLLBACK".to_owned()),
        (Ok(_), true) => Some(format!(
            "CLOSE {MANY_CURSOR}; RELEASE SAVEPOINT {MANY_CURSOR}"
        )),
        // The server failed the query: the caller's transaction is aborted, as a plain failing
        // statement leaves it (their rollback ends the savepoint and the cursor too).
        (Err(ExecError::Database(_)), true) => None,
        // A row that did not decode: leave nothing behind in the caller's transaction.
        (Err(_), true) => Some(format!(
            "ROLLBACK TO SAVEPOINT {MANY_CURSOR}; RELEASE SAVEPOINT {MANY_CURSOR}"
        )),
    };
    if let Some(finish) = finish {
        conn.execute(sqlx::raw_sql(AssertSqlSafe(finish))).await?;
    }
    fetched.map(Some)
}

/// Runs `stmt` on MySQL or MariaDB.
///
/// `fetch_mode = "many"` on MariaDB runs a query that reads rows as
/// `SET STATEMENT sql_select_limit = n FOR …`, so the server sends only `n` rows (an explicit
/// `LIMIT` in the query still wins). MySQL has no `SET STATEMENT`: there the rows past `n` are
/// read and dropped by the driver.
pub(super) async fn run_mysql(
    conn: &mut MySqlConnection,
    stmt: &Statement,
    fetch: Fetch,
    mariadb: bool,
) -> Result<Output, ExecError> {
    let sql = AssertSqlSafe(stmt.sql.clone());
    if stmt.args.is_empty() && (stmt.touches_session || stmt.statements > 1) {
        let stream = sqlx::raw_sql(sql).fetch_many(&mut *conn);
        return collect(stream, fetch, |d| d.rows_affected(), mysql_columns).await;
    }
    let sql = match fetch {
        Fetch::Many(n) | Fetch::Capped(n) if mariadb && stmt.shape.reads_rows() => {
            AssertSqlSafe(format!("SET STATEMENT sql_select_limit = {n} FOR {}", stmt.sql).into())
        }
        _ => sql,
    };
    let mut query = sqlx::query::<MySql>(sql);
    for value in &stmt.args {
        query = bind_mysql(query, value);
    }
    #[allow(deprecated)] // one statement: the deprecation is about several
    let stream = query.fetch_many(&mut *conn);
    collect(stream, fetch, |d| d.rows_affected(), mysql_columns).await
}

/// Runs `stmt` on SQLite.
pub(super) async fn run_sqlite(
    conn: &mut SqliteConnection,
    stmt: &Statement,
    fetch: Fetch,
) -> Result<Output, ExecError> {
    let sql = AssertSqlSafe(stmt.sql.clone());
    if stmt.args.is_empty() && stmt.statements > 1 {
        let stream = sqlx::raw_sql(sql).fetch_many(&mut *conn);
        return collect(stream, fetch, |d| d.rows_affected(), sqlite_columns).await;
    }
    let mut query = sqlx::query::<Sqlite>(sql);
    for value in &stmt.args {
        query = bind_sqlite(query, value);
    }
    #[allow(deprecated)] // one statement: the deprecation is about several
    let stream = query.fetch_many(&mut *conn);
    collect(stream, fetch, |d| d.rows_affected(), sqlite_columns).await
}

/// Drains a `fetch_many` stream into an [`Output`]: rows (up to the fetch limit, then it stops
/// reading) or, for statements without rows, the rows affected.
async fn collect<R, D>(
    mut stream: futures_util::stream::BoxStream<'_, Result<Either<D, R>, sqlx::Error>>,
    fetch: Fetch,
    affected_of: fn(&D) -> u64,
    columns: Columns<R>,
) -> Result<Output, ExecError>
where
    R: Row,
{
    let limit = limit_of(fetch);
    let mut rows = Vec::new();
    let mut names = Names::default();
    let mut text: Option<RowsText> = None;
    let mut taken = 0;
    let mut affected = 0;
    let mut returns_rows = false;
    while let Some(item) = stream.try_next().await? {
        match item {
            Either::Left(done) => affected += affected_of(&done),
            Either::Right(row) => {
                returns_rows = true;
                if taken == limit {
                    break;
                }
                taken += 1;
                if matches!(fetch, Fetch::Capped(_)) {
                    text.get_or_insert_with(RowsText::new).push(&row, columns)?;
                } else {
                    rows.push(to_row(&row, columns, &mut names)?);
                }
            }
        }
    }
    drop(stream);
    Ok(if !returns_rows {
        no_rows(affected)
    } else if matches!(fetch, Fetch::Capped(_)) {
        let text = text.map_or_else(|| "[]".to_owned(), RowsText::finish);
        Output {
            rows: Vec::new(),
            text: Some(text),
            row_count: taken as u64,
            returns_rows: true,
        }
    } else {
        with_rows(rows)
    })
}

/// Calls `each` with every column of a row, in order: its name and its value as JSON.
type Columns<R> = fn(&R, &mut dyn FnMut(&str, Value)) -> Result<(), ExecError>;

/// The column names the rows of one result set share, made once for them.
#[derive(Default)]
struct Names(Option<std::sync::Arc<[String]>>);

thread_local! {
    /// The names of the last result set decoded on this thread: a statement run again (the
    /// common case) shares them instead of copying each name once more.
    static LAST_NAMES: std::cell::RefCell<Option<std::sync::Arc<[String]>>> =
        const { std::cell::RefCell::new(None) };
}

impl Names {
    /// `row`'s column names: the last row's, when they are the same.
    fn of<R: sqlx::Row>(&mut self, row: &R) -> std::sync::Arc<[String]> {
        let columns = row.columns();
        let same = |names: &[String]| {
            names.len() == columns.len() && names.iter().zip(columns).all(|(n, c)| n == c.name())
        };
        if let Some(names) = &self.0
            && same(names)
        {
            return names.clone();
        }
        let names = LAST_NAMES.with_borrow_mut(|last| match last {
            Some(names) if same(names) => names.clone(),
            _ => last
                .insert(columns.iter().map(|c| c.name().to_owned()).collect())
                .clone(),
        });
        self.0.insert(names).clone()
    }
}

/// A row as the driver decoded it, its values mapped to JSON.
fn to_row<R: sqlx::Row>(
    row: &R,
    columns: Columns<R>,
    names: &mut Names,
) -> Result<OutputRow, ExecError> {
    let mut values = Vec::with_capacity(row.len());
    columns(row, &mut |_, value| values.push(value))?;
    Ok(OutputRow::new(names.of(row), values))
}

/// A row as a JSON object.
fn to_map<R: Row>(row: &R, columns: Columns<R>) -> Result<Map<String, Value>, ExecError> {
    let mut out = Map::with_capacity(row.len());
    columns(row, &mut |name, value| {
        out.insert(name.to_owned(), value);
    })?;
    Ok(out)
}

/// Rows written as the JSON text of an array of objects, each as it is read: no map is built
/// for a row, and its column names are not copied.
struct RowsText {
    out: Vec<u8>,
    /// The column names `duplicate_names` was worked out for, each followed by a NUL (one
    /// allocation per statement; a script's next result set has columns of its own).
    names: String,
    /// Whether two columns share a name: each row then goes through a map, which keeps one.
    duplicate_names: bool,
}

impl RowsText {
    fn new() -> RowsText {
        let mut out = Vec::with_capacity(64);
        out.push(b'[');
        RowsText {
            out,
            names: String::new(),
            duplicate_names: false,
        }
    }

    fn push<R: Row>(&mut self, row: &R, columns: Columns<R>) -> Result<(), ExecError> {
        let mut known = self.names.as_str();
        let same = row.columns().iter().all(|column| {
            let rest = known
                .strip_prefix(column.name())
                .and_then(|rest| rest.strip_prefix('\0'));
            rest.inspect(|rest| known = rest).is_some()
        }) && known.is_empty();
        if !same {
            let columns = row.columns();
            self.duplicate_names = columns
                .iter()
                .enumerate()
                .any(|(i, c)| columns[..i].iter().any(|d| d.name() == c.name()));
            self.names.clear();
            for column in columns {
                self.names.push_str(column.name());
                self.names.push('\0');
            }
        }
        let out = &mut self.out;
        if out.len() > 1 {
            out.push(b',');
        }
        if self.duplicate_names {
            let map = to_map(row, columns)?;
            serde_json::to_writer(&mut *out, &map).expect("writing JSON to memory cannot fail");
            return Ok(());
        }
        out.push(b'{');
        let mut first = true;
        columns(row, &mut |name, value| {
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut *out, name).expect("writing JSON to memory cannot fail");
            out.push(b':');
            serde_json::to_writer(&mut *out, &value).expect("writing JSON to memory cannot fail");
        })?;
        out.push(b'}');
        Ok(())
    }

    fn finish(mut self) -> String {
        self.out.push(b']');
        String::from_utf8(self.out).expect("serde_json writes UTF-8")
    }
}

fn limit_of(fetch: Fetch) -> usize {
    match fetch {
        Fetch::One => 1,
        Fetch::All => usize::MAX,
        Fetch::Many(n) | Fetch::Capped(n) => n,
    }
}

fn with_rows(rows: Vec<OutputRow>) -> Output {
    Output {
        row_count: rows.len() as u64,
        rows,
        text: None,
        returns_rows: true,
    }
}

fn no_rows(affected: u64) -> Output {
    Output {
        rows: Vec::new(),
        text: None,
        row_count: affected,
        returns_rows: false,
    }
}

// ---- binding ----------------------------------------------------------------------------------

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

fn bind_pg<'q>(query: PgQuery<'q>, value: &Value, ty: &str) -> Result<PgQuery<'q>, String> {
    if value.is_null() {
        // NULL carries no data; the prepared statement already fixed the type.
        return Ok(query.bind(None::<String>));
    }
    Ok(match ty {
        "BOOL" => query.bind(as_bool(value)?),
        "INT2" => query.bind(i16::try_from(as_i64(value)?).map_err(|_| "out of range for INT2")?),
        "INT4" => query.bind(i32::try_from(as_i64(value)?).map_err(|_| "out of range for INT4")?),
        "INT8" | "OID" => query.bind(as_i64(value)?),
        "FLOAT4" => query.bind(as_f64(value)? as f32),
        "FLOAT8" => query.bind(as_f64(value)?),
        "NUMERIC" => query.bind(as_decimal(value)?),
        "UUID" => query.bind(as_uuid(value)?),
        "JSON" | "JSONB" => query.bind(sqlx::types::Json(value.clone())),
        "BYTEA" => query.bind(as_bytes(value)?),
        "DATE" => query.bind(as_date(value)?),
        "TIME" => query.bind(as_time(value)?),
        "TIMESTAMP" => query.bind(as_naive_datetime(value)?),
        "TIMESTAMPTZ" => query.bind(as_datetime(value)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UNKNOWN" | "\"CHAR\"" | "CITEXT" => {
            query.bind(as_text(value))
        }
        "BOOL[]" => query.bind(as_pg_array(value, as_bool)?),
        "INT2[]" => query.bind(as_pg_array(value, |v| {
            i16::try_from(as_i64(v)?).map_err(|_| "out of range for INT2".to_owned())
        })?),
        "INT4[]" => query.bind(as_pg_array(value, |v| {
            i32::try_from(as_i64(v)?).map_err(|_| "out of range for INT4".to_owned())
        })?),
        "INT8[]" => query.bind(as_pg_array(value, as_i64)?),
        "FLOAT4[]" => query.bind(as_pg_array(value, |v| as_f64(v).map(|f| f as f32))?),
        "FLOAT8[]" => query.bind(as_pg_array(value, as_f64)?),
        "NUMERIC[]" => query.bind(as_pg_array(value, as_decimal)?),
        "TEXT[]" | "VARCHAR[]" | "BPCHAR[]" | "NAME[]" => {
            query.bind(as_pg_array(value, |v| Ok(as_text(v)))?)
        }
        "UUID[]" => query.bind(as_pg_array(value, as_uuid)?),
        "vector" => query.bind(pgvector::Vector::from(as_array(value, |v| {
            as_f64(v).map(|f| f as f32)
        })?)),
        "vector[]" | "_vector" => query.bind(as_array(value, |row| {
            as_array(row, |v| as_f64(v).map(|f| f as f32)).map(pgvector::Vector::from)
        })?),
        other => {
            return Err(format!(
                "no JSON conversion to `{other}`; cast the placeholder in SQL, e.g. `CAST(CAST(:p AS text) AS {other})`"
            ));
        }
    })
}

fn bind_mysql<'q>(
    query: Query<'q, MySql, MySqlArguments>,
    value: &Value,
) -> Query<'q, MySql, MySqlArguments> {
    match value {
        Value::Null => query.bind(None::<String>),
        Value::Bool(b) => query.bind(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => query.bind(i),
            (None, Some(u)) => query.bind(u),
            _ => query.bind(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => query.bind(s.clone()),
        other => query.bind(other.to_string()),
    }
}

fn bind_sqlite<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    value: &Value,
) -> Query<'q, Sqlite, SqliteArguments> {
    match value {
        Value::Null => query.bind(None::<String>),
        Value::Bool(b) => query.bind(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => query.bind(i),
            None => query.bind(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => query.bind(s.clone()),
        other => query.bind(other.to_string()),
    }
}

fn as_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!("expected a boolean, got `{other}`")),
    }
}

fn as_i64(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("expected an integer, got `{n}`")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("expected an integer, got `{s}`")),
        other => Err(format!("expected an integer, got `{other}`")),
    }
}

fn as_f64(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("expected a number, got `{n}`")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("expected a number, got `{s}`")),
        other => Err(format!("expected a number, got `{other}`")),
    }
}

fn as_decimal(v: &Value) -> Result<bigdecimal::BigDecimal, String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        other => return Err(format!("expected a decimal number, got `{other}`")),
    };
    text.parse()
        .map_err(|_| format!("expected a decimal number, got `{text}`"))
}

fn as_uuid(v: &Value) -> Result<uuid::Uuid, String> {
    match v {
        Value::String(s) => s.parse().map_err(|_| format!("`{s}` is not a UUID")),
        other => Err(format!("expected a UUID string, got `{other}`")),
    }
}

fn as_bytes(v: &Value) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("expected base64: {e}")),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_u64()
                    .and_then(|b| u8::try_from(b).ok())
                    .ok_or_else(|| "expected bytes 0..=255".to_owned())
            })
            .collect(),
        other => Err(format!("expected a base64 string, got `{other}`")),
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_date(v: &Value) -> Result<chrono::NaiveDate, String> {
    let s = v
        .as_str()
        .ok_or("expected a date string like `2024-05-01`")?;
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|d| d.date_naive()))
        .map_err(|_| format!("`{s}` is not a date like `2024-05-01`"))
}

fn as_time(v: &Value) -> Result<chrono::NaiveTime, String> {
    let s = v.as_str().ok_or("expected a time string like `09:30:00`")?;
    chrono::NaiveTime::parse_from_str(s, "%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveTime::parse_from_str(s, "%H:%M"))
        .map_err(|_| format!("`{s}` is not a time like `09:30:00`"))
}

fn as_naive_datetime(v: &Value) -> Result<chrono::NaiveDateTime, String> {
    let s = v
        .as_str()
        .ok_or("expected a timestamp string like `2024-05-01T09:30:00`")?;
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|d| d.naive_utc()))
        .or_else(|_| as_date(v).map(|d| d.and_time(chrono::NaiveTime::MIN)))
        .map_err(|_| format!("`{s}` is not a timestamp like `2024-05-01T09:30:00`"))
}

fn as_datetime(v: &Value) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let s = v
        .as_str()
        .ok_or("expected an RFC 3339 timestamp like `2024-05-01T09:30:00Z`")?;
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&chrono::Utc))
        .or_else(|_| as_naive_datetime(v).map(|n| n.and_utc()))
        .map_err(|_| format!("`{s}` is not a timestamp like `2024-05-01T09:30:00Z`"))
}

fn as_array<T>(v: &Value, item: impl Fn(&Value) -> Result<T, String>) -> Result<Vec<T>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| item(v).map_err(|e| format!("element {i}: {e}")))
            .collect(),
        other => Err(format!("expected an array, got `{other}`")),
    }
}

/// A JSON array for a PostgreSQL array parameter: each element by `item`, and `null` as a NULL
/// element, as a row read maps one (so an array read from a row binds back as it was).
fn as_pg_array<T>(
    v: &Value,
    item: impl Fn(&Value) -> Result<T, String>,
) -> Result<Vec<Option<T>>, String> {
    as_array(v, |v| {
        if v.is_null() {
            Ok(None)
        } else {
            item(v).map(Some)
        }
    })
}

// ---- rows -------------------------------------------------------------------------------------

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
}

fn base64(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Column `i` (its value `raw`), a PostgreSQL array of `T`, as JSON: each element by `f`, a NULL
/// element as `null` in its place.
fn pg_array<T>(raw: PgValueRef<'_>, i: usize, f: impl Fn(T) -> Value) -> Result<Value, ExecError>
where
    Vec<Option<T>>: for<'r> sqlx::Decode<'r, Postgres>,
{
    let items = decode::<Vec<Option<T>>>(raw, i)?;
    Ok(Value::Array(
        items
            .into_iter()
            .map(|item| item.map_or(Value::Null, &f))
            .collect(),
    ))
}

fn pg_columns(row: &PgRow, each: &mut dyn FnMut(&str, Value)) -> Result<(), ExecError> {
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            // The column's type is the value's (sqlx copies it into the value), and the value
            // is decoded as it was read: not looked up and copied again per decode.
            pg_value(raw, i, column.type_info().name()).map_err(|e| match e {
                ExecError::Unmapped { ty, .. } => ExecError::Unmapped {
                    column: column.name().to_owned(),
                    ty,
                },
                other => other,
            })?
        };
        each(column.name(), value);
    }
    Ok(())
}

/// Column `i`'s value `raw` decoded as `T`, failing as sqlx's `try_get` does.
fn decode<'r, T: sqlx::Decode<'r, Postgres>>(
    raw: PgValueRef<'r>,
    i: usize,
) -> Result<T, ExecError> {
    T::decode(raw).map_err(|source| column_decode(i, source))
}

/// Column `i`'s value could not be decoded: the error sqlx's `try_get` gives.
fn column_decode(i: usize, source: sqlx::error::BoxDynError) -> ExecError {
    ExecError::from(sqlx::Error::ColumnDecode {
        index: format!("{i:?}"),
        source,
    })
}

/// Column `i` (its value `raw`), of PostgreSQL type `ty`, as JSON. Each arm is chosen by the
/// column's own type name, so sqlx's check that the Rust type fits it (which `try_get` repeats
/// for every value: a type-info clone and comparison, 65 instructions of `SELECT 1`'s 1.1 k per
/// row) is skipped: the decoders read the value by its own type and format.
fn pg_value(raw: PgValueRef<'_>, i: usize, ty: &str) -> Result<Value, ExecError> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    Ok(match ty {
        "BOOL" => Value::Bool(decode(raw, i)?),
        // `SELECT pg_sleep(1)` and other procedures-as-functions return `void`.
        "VOID" => Value::Null,
        "INT2" => Value::from(decode::<i16>(raw, i)?),
        "INT4" => Value::from(decode::<i32>(raw, i)?),
        "INT8" => Value::from(decode::<i64>(raw, i)?),
        "OID" => Value::from(decode::<sqlx::postgres::types::Oid>(raw, i)?.0),
        "FLOAT4" => float(f64::from(decode::<f32>(raw, i)?)),
        "FLOAT8" => float(decode::<f64>(raw, i)?),
        "NUMERIC" => Value::String(pg_numeric(raw)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "\"CHAR\"" | "UNKNOWN" | "CITEXT" => {
            Value::String(decode::<String>(raw, i)?)
        }
        "UUID" => Value::String(decode::<uuid::Uuid>(raw, i)?.to_string()),
        "JSON" | "JSONB" => decode::<sqlx::types::Json<Value>>(raw, i)?.0,
        "BYTEA" => base64(&decode::<Vec<u8>>(raw, i)?),
        "DATE" => Value::String(decode::<NaiveDate>(raw, i)?.to_string()),
        "TIME" => Value::String(decode::<NaiveTime>(raw, i)?.to_string()),
        "TIMESTAMP" => Value::String(
            decode::<NaiveDateTime>(raw, i)?
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        ),
        "TIMESTAMPTZ" => Value::String(
            decode::<DateTime<Utc>>(raw, i)?.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        "BOOL[]" => pg_array::<bool>(raw, i, Value::Bool)?,
        "INT2[]" => pg_array::<i16>(raw, i, Value::from)?,
        "INT4[]" => pg_array::<i32>(raw, i, Value::from)?,
        "INT8[]" => pg_array::<i64>(raw, i, Value::from)?,
        "FLOAT4[]" => pg_array::<f32>(raw, i, |f| float(f64::from(f)))?,
        "FLOAT8[]" => pg_array::<f64>(raw, i, float)?,
        "NUMERIC[]" => pg_array::<NumericText>(raw, i, |n| Value::String(n.0))?,
        "TEXT[]" | "VARCHAR[]" | "BPCHAR[]" | "NAME[]" => {
            pg_array::<String>(raw, i, Value::String)?
        }
        "UUID[]" => pg_array::<uuid::Uuid>(raw, i, |u| Value::String(u.to_string()))?,
        "JSONB[]" | "JSON[]" => pg_array::<sqlx::types::Json<Value>>(raw, i, |j| j.0)?,
        "TIMESTAMPTZ[]" => pg_array::<DateTime<Utc>>(raw, i, |d| {
            Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        })?,
        "DATE[]" => pg_array::<NaiveDate>(raw, i, |d| Value::String(d.to_string()))?,
        "vector" => Value::Array(
            decode::<pgvector::Vector>(raw, i)?
                .as_slice()
                .iter()
                .map(|&f| float(f64::from(f)))
                .collect(),
        ),
        other => {
            return Err(ExecError::Unmapped {
                column: String::new(),
                ty: other.to_owned(),
            });
        }
    })
}

/// PostgreSQL `NUMERIC` as PostgreSQL itself prints it (scale kept, `NaN`, `Infinity`).
fn pg_numeric(raw: PgValueRef<'_>) -> Result<String, ExecError> {
    NumericText::read(raw)
        .map(|n| n.0)
        .map_err(|e| ExecError::from(sqlx::Error::Decode(e)))
}

/// A `NUMERIC` decoded to PostgreSQL's own text, for the elements of a `NUMERIC[]` as for a
/// single value (sqlx's `BigDecimal` drops the display scale, `1.50` → `1.5000`, and refuses
/// `NaN` and the infinities).
struct NumericText(String);

impl NumericText {
    fn read(raw: sqlx::postgres::PgValueRef<'_>) -> Result<NumericText, sqlx::error::BoxDynError> {
        match raw.format() {
            sqlx::postgres::PgValueFormat::Text => Ok(NumericText(raw.as_str()?.to_owned())),
            sqlx::postgres::PgValueFormat::Binary => numeric_text(raw.as_bytes()?)
                .map(NumericText)
                .ok_or_else(|| "malformed NUMERIC value".into()),
        }
    }
}

impl sqlx::Type<Postgres> for NumericText {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <bigdecimal::BigDecimal as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::postgres::PgHasArrayType for NumericText {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <bigdecimal::BigDecimal as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for NumericText {
    fn decode(raw: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        NumericText::read(raw)
    }
}

/// Formats PostgreSQL's binary `NUMERIC` (base-10000 digits, weight, sign, display scale).
fn numeric_text(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<i16> {
        bytes
            .get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = i32::from(word(1)?);
    let sign = word(2)? as u16;
    let dscale = usize::try_from(word(3)?).ok()?;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<i16> = (0..ndigits).map(|k| word(4 + k)).collect::<Option<_>>()?;
    let digit = |k: i32| -> i16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    // Integer part: base-10000 groups 0..=weight.
    if weight < 0 {
        out.push('0');
    } else {
        for k in 0..=weight {
            let d = digit(k);
            if k == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut k = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(k)));
            k += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Some(out)
}

fn mysql_columns(row: &MySqlRow, each: &mut dyn FnMut(&str, Value)) -> Result<(), ExecError> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            each(column.name(), Value::Null);
            continue;
        }
        let ty = raw.type_info().name().to_owned();
        let value = match ty.as_str() {
            "BOOLEAN" => Value::Bool(row.try_get(i)?),
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
                Value::from(row.try_get::<i64, _>(i)?)
            }
            "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
            | "BIGINT UNSIGNED" => Value::from(row.try_get::<u64, _>(i)?),
            "FLOAT" => float(f64::from(row.try_get::<f32, _>(i)?)),
            "DOUBLE" => float(row.try_get::<f64, _>(i)?),
            "DECIMAL" => Value::String(row.try_get::<bigdecimal::BigDecimal, _>(i)?.to_string()),
            "DATE" => Value::String(row.try_get::<NaiveDate, _>(i)?.to_string()),
            "TIME" => Value::String(row.try_get::<NaiveTime, _>(i)?.to_string()),
            "DATETIME" => Value::String(
                row.try_get::<NaiveDateTime, _>(i)?
                    .format("%Y-%m-%dT%H:%M:%S%.f")
                    .to_string(),
            ),
            "TIMESTAMP" => Value::String(
                row.try_get::<DateTime<Utc>, _>(i)?
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
            "JSON" => row.try_get::<sqlx::types::Json<Value>, _>(i)?.0,
            "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BIT"
            | "GEOMETRY" => base64(&row.try_get::<Vec<u8>, _>(i)?),
            "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM"
            | "SET" => Value::String(row.try_get::<String, _>(i)?),
            other => {
                return Err(ExecError::Unmapped {
                    column: column.name().to_owned(),
                    ty: other.to_owned(),
                });
            }
        };
        each(column.name(), value);
    }
    Ok(())
}

fn sqlite_columns(row: &SqliteRow, each: &mut dyn FnMut(&str, Value)) -> Result<(), ExecError> {
    /// A value's storage class.
    enum Class {
        Integer,
        Real,
        Text,
        Blob,
    }
    fn decode<'r, T: sqlx::Decode<'r, Sqlite>>(
        raw: sqlx::sqlite::SqliteValueRef<'r>,
        i: usize,
    ) -> Result<T, ExecError> {
        T::decode(raw).map_err(|source| column_decode(i, source))
    }
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            each(column.name(), Value::Null);
            continue;
        }
        // SQLite is dynamically typed: map the value's storage class, and honour a BOOLEAN
        // declaration for integers. Each value is decoded as its class (`try_get` would look
        // the column up again and check the Rust type against the class it has).
        let class = match raw.type_info().name() {
            "INTEGER" => Class::Integer,
            "REAL" => Class::Real,
            "TEXT" => Class::Text,
            "BLOB" => Class::Blob,
            other => {
                return Err(ExecError::Unmapped {
                    column: column.name().to_owned(),
                    ty: other.to_owned(),
                });
            }
        };
        let value = match class {
            Class::Integer => {
                let n: i64 = decode(raw, i)?;
                if column.type_info().name().eq_ignore_ascii_case("BOOLEAN") {
                    Value::Bool(n != 0)
                } else {
                    Value::from(n)
                }
            }
            Class::Real => float(decode(raw, i)?),
            Class::Text => Value::String(decode(raw, i)?),
            Class::Blob => base64(&decode::<Vec<u8>>(raw, i)?),
        };
        each(column.name(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversions_report_what_is_wrong() {
        assert_eq!(as_i64(&json!("42")).unwrap(), 42);
        assert!(
            as_i64(&json!(1.5))
                .unwrap_err()
                .contains("expected an integer")
        );
        assert!(
            as_uuid(&json!("nope"))
                .unwrap_err()
                .contains("`nope` is not a UUID")
        );
        assert_eq!(as_bytes(&json!("AAE=")).unwrap(), vec![0, 1]);
        assert_eq!(
            as_datetime(&json!("2024-05-01T09:30:00+02:00"))
                .unwrap()
                .to_rfc3339(),
            "2024-05-01T07:30:00+00:00"
        );
        assert_eq!(
            as_date(&json!("2024-05-01")).unwrap().to_string(),
            "2024-05-01"
        );
        assert!(
            as_array(&json!([1, "x"]), as_i64)
                .unwrap_err()
                .starts_with("element 1:")
        );
        assert_eq!(
            as_decimal(&json!("12345678901234567890.123456789"))
                .unwrap()
                .to_string(),
            "12345678901234567890.123456789"
        );
    }

    fn numeric(
        ndigits: i16,
        weight: i16,
        sign: u16,
        dscale: i16,
        digits: &[i16],
    ) -> Option<String> {
        let mut b = Vec::new();
        for w in [ndigits, weight, sign as i16, dscale].iter().chain(digits) {
            b.extend_from_slice(&w.to_be_bytes());
        }
        numeric_text(&b)
    }

    #[test]
    fn numeric_binary_form_keeps_the_scale() {
        // 12345678901234567890.123 (scale 3): groups 1234 5678 9012 3456 7890 . 1230
        assert_eq!(
            numeric(6, 4, 0, 3, &[1234, 5678, 9012, 3456, 7890, 1230]).unwrap(),
            "12345678901234567890.123"
        );
        assert_eq!(numeric(1, 0, 0x4000, 2, &[15]).unwrap(), "-15.00");
        assert_eq!(numeric(1, -1, 0, 4, &[5]).unwrap(), "0.0005");
        assert_eq!(numeric(0, 0, 0, 0, &[]).unwrap(), "0");
        assert_eq!(numeric(1, 1, 0, 0, &[7]).unwrap(), "70000");
        assert_eq!(numeric(0, 0, 0xC000, 0, &[]).unwrap(), "NaN");
        assert!(numeric_text(&[0, 1]).is_none());
    }

    #[test]
    fn non_finite_floats_become_strings() {
        assert_eq!(float(f64::NAN), json!("NaN"));
        assert_eq!(float(1.5), json!(1.5));
    }
}
