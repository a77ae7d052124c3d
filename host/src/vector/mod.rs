//! AsyncPostgreSQLVectorNode: vector tables, indexes, batch inserts and similarity search on
//! pgvector, and the same operations on the embedded SQLite database (exact search in Rust).
//!
//! - [`filter`]: the structured `metadata_filter`, compiled to bound parameters.
//! - [`store`]: the operations on one pool ([`VectorStore`]).
//! - [`node`]: the node's JSON config and output ([`VectorNode`]).
//!
//! Nothing from a request reaches the database as SQL text: table names are validated
//! identifiers, index parameters are range-checked integers, filter keys and values and vectors
//! are bound parameters.

pub(crate) mod filter;
mod node;
mod store;

pub use filter::{Filter, FilterError};
pub use node::VectorNode;
pub use store::{IndexSpec, IndexType, Metric, NewVector, SearchQuery, VectorStore};

use crate::pool::PoolError;

/// The longest identifier PostgreSQL keeps (bytes).
pub const MAX_IDENTIFIER: usize = 63;

/// A validated table name: `name` or `schema.name`, each part `[A-Za-z_][A-Za-z0-9_]*` and at
/// most 63 bytes. Always quoted when written into SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    /// Validates `text`.
    pub fn parse(text: &str) -> Result<TableName, VectorError> {
        let bad = || VectorError::Identifier {
            value: text.to_owned(),
        };
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, text),
        };
        let ok = |part: &str| {
            let mut chars = part.chars();
            part.len() <= MAX_IDENTIFIER
                && chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !ok(name) || schema.is_some_and(|s| !ok(s)) {
            return Err(bad());
        }
        Ok(TableName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The table's own name (without schema).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"schema"."name"` or `"name"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
        }
    }

    /// An index name in the table's schema, quoted, derived from the table name and `suffix`;
    /// shortened with a hash of the full name when it would pass 63 bytes.
    fn index_name(&self, suffix: &str) -> (String, String) {
        let full = format!("{}_{suffix}", self.name);
        let bare = if full.len() <= MAX_IDENTIFIER {
            full
        } else {
            // FNV-1a: stable across builds, enough to keep shortened names apart.
            let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let keep = MAX_IDENTIFIER - suffix.len() - 10;
            format!("{}_{:08x}_{suffix}", &self.name[..keep], hash as u32)
        };
        let quoted = match &self.schema {
            Some(s) => format!("\"{s}\".\"{bare}\""),
            None => format!("\"{bare}\""),
        };
        (bare, quoted)
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Why a vector operation failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum VectorError {
    /// A table name that is not a plain identifier.
    #[error(
        "invalid table name `{value}`: use letters, digits and `_` (not first), at most 63 characters, optionally `schema.table`"
    )]
    Identifier {
        /// What was given.
        value: String,
    },
    /// A numeric setting outside its range.
    #[error("`{field}` must be between {min} and {max}, not {value}")]
    OutOfRange {
        /// The setting.
        field: &'static str,
        /// What was given.
        value: String,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The node config is malformed.
    #[error("invalid vector node config: {0}")]
    Config(String),
    /// The metadata filter is malformed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Filter(#[from] FilterError),
    /// A vector with the wrong number of dimensions.
    #[error(
        "{} has {found} dimensions but table `{table}` holds vectors of {expected}",
        row_label(*.row)
    )]
    Dimension {
        /// The table.
        table: String,
        /// The row of the batch (0-based), `None` for a single vector or a query.
        row: Option<usize>,
        /// The table's dimension.
        expected: usize,
        /// The vector's.
        found: usize,
    },
    /// A value in a vector is not a finite number.
    #[error("{} has a value that is not a finite number at position {position}", row_label(*.row))]
    NotFinite {
        /// The row of the batch (0-based), `None` for a single vector or a query.
        row: Option<usize>,
        /// The position in the vector.
        position: usize,
    },
    /// `vectors` and `metadata` (or `ids`) of a batch differ in length.
    #[error("`vectors` has {vectors} rows but `{other}` has {count}")]
    #[diagnostic(help("give one {other} entry per vector, in the same order"))]
    LengthMismatch {
        /// Rows in `vectors`.
        vectors: usize,
        /// The other list.
        other: &'static str,
        /// Rows in it.
        count: usize,
    },
    /// A row's metadata is not a JSON object.
    #[error("{} has metadata that is not a JSON object", row_label(*.row))]
    Metadata {
        /// The row of the batch (0-based), `None` for a single vector.
        row: Option<usize>,
    },
    /// An upsert row without an id.
    #[error("{} has no `id`; `upsert` replaces rows by id", row_label(*.row))]
    #[diagnostic(help("give `id` (or `ids`), or use `insert`"))]
    MissingId {
        /// The row of the batch (0-based), `None` for a single vector.
        row: Option<usize>,
    },
    /// The table does not exist (or is not a vector table).
    #[error("table `{table}` is not a vector table in this database")]
    #[diagnostic(help(
        "create it with the `create_table` operation (or `trellis vector ingest`, which creates it)"
    ))]
    NoTable {
        /// The table.
        table: String,
    },
    /// The backend cannot do this.
    #[error("`{operation}` is not supported on {backend}: {why}")]
    Unsupported {
        /// The operation.
        operation: &'static str,
        /// The database kind.
        backend: &'static str,
        /// Why, and what to do.
        why: &'static str,
    },
    /// The database failed the statement.
    #[error("vector `{operation}` on table `{table}` failed: {source}")]
    Database {
        /// The operation.
        operation: &'static str,
        /// The table.
        table: String,
        /// What the pool reported.
        #[source]
        source: Box<PoolError>,
    },
}

fn row_label(row: Option<usize>) -> String {
    match row {
        Some(i) => format!("row {i} of the batch"),
        None => "the vector".to_owned(),
    }
}

/// Checks that `value` is within `min..=max`.
pub(crate) fn in_range(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<u32, VectorError> {
    if (min..=max).contains(&value) {
        Ok(u32::try_from(value).unwrap_or(u32::MAX))
    } else {
        Err(VectorError::OutOfRange {
            field,
            value: value.to_string(),
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert_eq!(TableName::parse("docs").unwrap().quoted(), "\"docs\"");
        assert_eq!(
            TableName::parse("app.docs_2").unwrap().quoted(),
            "\"app\".\"docs_2\""
        );
        for bad in [
            "",
            "1docs",
            "docs; DROP TABLE x",
            "docs\"",
            "a.b.c",
            "docs--",
            "dócs",
            &"x".repeat(64),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn long_index_names_are_shortened_and_distinct() {
        let a = TableName::parse(&format!("{}a", "t".repeat(60))).unwrap();
        let b = TableName::parse(&format!("{}b", "t".repeat(60))).unwrap();
        let (na, _) = a.index_name("embedding_hnsw_cosine_idx");
        let (nb, _) = b.index_name("embedding_hnsw_cosine_idx");
        assert!(na.len() <= MAX_IDENTIFIER && nb.len() <= MAX_IDENTIFIER);
        assert_ne!(na, nb);
        let short = TableName::parse("docs").unwrap();
        assert_eq!(
            short.index_name("embedding_hnsw_cosine_idx").0,
            "docs_embedding_hnsw_cosine_idx"
        );
    }
}
