//! Named `:params` translated per dialect by a tokenizer, never by text replacement.
//!
//! The tokenizer walks the SQL once and recognises string literals (`'…'`, PostgreSQL `E'…'`,
//! MySQL backslash escapes), quoted identifiers (`"…"`, `` `…` ``, `[…]` on SQLite), comments
//! (`-- …`, `# …` on MySQL, nested `/* … */` on PostgreSQL), PostgreSQL dollar quoting
//! (`$tag$…$tag$`) and `::casts`. Only a `:name` outside all of those is a parameter, and it
//! ends at the first character that cannot be part of a name, so `:id` never touches `:id_type`.
//!
//! Named parameters become `$1, $2, …` on PostgreSQL (a repeated name reuses its number) and `?`
//! on MySQL and SQLite (a repeated name binds its value again). A parameter the SQL names but the
//! caller did not give, or one the caller gave but the SQL never names, is an error naming it.
//!
//! The same walk notes whether a statement may leave session state behind (it starts with
//! `BEGIN`, `START`, `SAVEPOINT`, `SET`, `XA`, `LOCK` or `CALL`): the pool then resets the
//! connection before anyone else gets it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::values::DatabaseKind;

/// Parameters as the caller gave them.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Params {
    /// No parameters.
    #[default]
    None,
    /// Positional values for the dialect's own placeholders (`$1` on PostgreSQL, `?` elsewhere).
    Positional(Vec<Value>),
    /// Values for `:name` placeholders.
    Named(Map<String, Value>),
}

impl Params {
    /// Reads the JSON forms: `null`/absent, an array (positional) or an object (named).
    pub fn from_json(value: Option<&Value>) -> Result<Params, ParamError> {
        match value {
            None | Some(Value::Null) => Ok(Params::None),
            Some(Value::Array(values)) => Ok(Params::Positional(values.clone())),
            Some(Value::Object(map)) => Ok(Params::Named(map.clone())),
            Some(other) => Err(ParamError::NotACollection {
                found: json_kind(other),
            }),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Params::None => true,
            Params::Positional(v) => v.is_empty(),
            Params::Named(m) => m.is_empty(),
        }
    }
}

/// SQL ready for one dialect, with its arguments in binding order.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL with the dialect's placeholders (shared: a statement run again is not copied).
    pub sql: Arc<str>,
    /// The values, in the order the placeholders bind them.
    pub args: Vec<Value>,
    /// Whether the statement may leave a transaction or session setting open (runs through the
    /// simple protocol when it has no parameters; its connection is reset on release).
    pub touches_session: bool,
    /// Whether the statement may leave session state that the dialect's reset cannot undo:
    /// MySQL/MariaDB user variables, settings other than `autocommit`, temporary tables and
    /// prepared statements; SQLite pragmas, attached databases and temporary tables. Its
    /// connection is closed when released instead of being reset (except the one connection of
    /// an in-memory SQLite database, which is the database itself: it keeps that state).
    pub leaves_state: bool,
    /// How many statements the SQL holds (`SELECT 1; SELECT 2` holds two).
    pub statements: usize,
    /// PostgreSQL: whether the statement may leave state in the server session past its
    /// transaction: `SET` (not `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`), `RESET`,
    /// `LISTEN`, `UNLISTEN`, `PREPARE`, `DEALLOCATE`, `DISCARD`, `LOAD`, a cursor `WITH HOLD`,
    /// a temporary object, a session advisory lock, `set_config`. Behind a transaction-mode
    /// pooler the next transaction may run in another server session, so such a statement is
    /// refused there (see `[databases.NAME] pooler`).
    pub outlives_transaction: bool,
    /// What the (first) statement is, by its first keyword.
    pub shape: Shape,
}

/// What a statement is, as far as running it needs to know (read off its first keyword by the
/// tokenizer, after comments and opening parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// `SELECT` (not `SELECT … INTO`), `VALUES`, `TABLE`: always returns a result set.
    Query,
    /// `WITH …`: reads rows, but may end in a data-modifying statement without `RETURNING`.
    With,
    /// Anything else.
    #[default]
    Other,
}

impl Statement {
    /// Whether the connection must be reset (or closed) before anyone else gets it.
    pub fn needs_reset(&self) -> bool {
        self.touches_session || self.leaves_state
    }
}

impl Shape {
    /// A query that reads rows: what a cursor or a select limit applies to.
    pub fn reads_rows(self) -> bool {
        matches!(self, Shape::Query | Shape::With)
    }
}

/// A problem with a statement's parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// The SQL names a parameter the caller did not give.
    #[error("parameter `:{name}` is used in the query but not given")]
    Missing {
        /// The name.
        name: String,
    },
    /// The caller gave a parameter the SQL never uses.
    #[error("parameter `{name}` is given but the query never uses `:{name}`")]
    Unused {
        /// The name.
        name: String,
    },
    /// Positional parameters do not match the placeholders.
    #[error(
        "the query has {placeholders} placeholder(s) but {given} positional parameter(s) were given"
    )]
    Count {
        /// Placeholders in the SQL.
        placeholders: usize,
        /// Values given.
        given: usize,
    },
    /// The SQL has placeholders but no parameters were given.
    #[error("the query uses `:{name}` but no parameters were given")]
    NoParams {
        /// The first name used.
        name: String,
    },
    /// Params were neither an array nor an object.
    #[error("`params` must be an array (positional) or an object (named), not {found}")]
    NotACollection {
        /// What was given.
        found: &'static str,
    },
    /// The SQL mixes `:name` with positional placeholders.
    #[error("the query mixes `:name` parameters with positional placeholders; use one style")]
    Mixed,
    /// A quote, comment or dollar quote is never closed.
    #[error("unterminated {what} starting at byte {at}")]
    Unterminated {
        /// What kind of token.
        what: &'static str,
        /// Where it starts.
        at: usize,
    },
}

/// Translates `sql` with `params` for `dialect`.
///
/// The translation depends only on the text and the dialect, so it is kept per thread (a
/// statement run again is not tokenized again); the parameters are checked against it on every
/// call.
pub fn prepare(sql: &str, params: &Params, dialect: DatabaseKind) -> Result<Statement, ParamError> {
    TEMPLATES
        .with(|cache| cache.borrow_mut().get(sql, dialect))?
        .bind(params)
}

/// What the tokenizer found in one statement's text: its translation for one dialect, without
/// the values.
#[derive(Debug)]
struct Template {
    /// The text to run: `:name` tokens replaced by the dialect's placeholders, if it has any.
    sql: Arc<str>,
    /// Every distinct `:name`, in order of first use (empty: the text has none).
    names: Vec<Box<str>>,
    /// The name (an index into `names`) each placeholder of `sql` binds, in order (PostgreSQL:
    /// each name once, numbered by first use; MySQL and SQLite: once per token).
    binds: Vec<usize>,
    /// `$n` (PostgreSQL: the highest n) or `?` (others: the count).
    positional: usize,
    touches_session: bool,
    leaves_state: bool,
    statements: usize,
    outlives_transaction: bool,
    shape: Shape,
}

impl Template {
    fn parse(sql: &str, dialect: DatabaseKind) -> Result<Template, ParamError> {
        let scan = scan(sql, dialect)?;
        let mut names: Vec<Box<str>> = Vec::new();
        let mut binds = Vec::new();
        let translated = (!scan.named.is_empty()).then(|| {
            let mut out = String::with_capacity(sql.len() + 8);
            let mut last = 0;
            for token in &scan.named {
                let name = &sql[token.start + 1..token.end];
                out.push_str(&sql[last..token.start]);
                let known = names.iter().position(|n| &**n == name);
                let index = known.unwrap_or_else(|| {
                    names.push(name.into());
                    names.len() - 1
                });
                match dialect {
                    DatabaseKind::Postgres => {
                        if known.is_none() {
                            binds.push(index);
                        }
                        out.push('$');
                        out.push_str(&(index + 1).to_string());
                    }
                    DatabaseKind::Mysql | DatabaseKind::Sqlite => {
                        out.push('?');
                        binds.push(index);
                    }
                }
                last = token.end;
            }
            out.push_str(&sql[last..]);
            Arc::from(out)
        });
        Ok(Template {
            sql: translated.unwrap_or_else(|| Arc::from(sql)),
            names,
            binds,
            positional: scan.positional,
            touches_session: scan.touches_session,
            leaves_state: scan.leaves_state,
            statements: scan.statements,
            outlives_transaction: scan.outlives_transaction,
            shape: scan.shape(sql),
        })
    }

    /// The statement with `params` bound, or what is wrong with them.
    fn bind(&self, params: &Params) -> Result<Statement, ParamError> {
        let statement = |args| Statement {
            sql: self.sql.clone(),
            args,
            touches_session: self.touches_session,
            leaves_state: self.leaves_state,
            statements: self.statements,
            outlives_transaction: self.outlives_transaction,
            shape: self.shape,
        };
        let has_named = !self.names.is_empty();
        match params {
            Params::Named(values) if has_named => {
                let mut args = Vec::with_capacity(self.binds.len());
                for &index in &self.binds {
                    let name = &self.names[index];
                    let value = values.get(&**name).ok_or_else(|| ParamError::Missing {
                        name: name.to_string(),
                    })?;
                    args.push(value.clone());
                }
                if let Some(unused) = values
                    .keys()
                    .find(|k| !self.names.iter().any(|n| **n == ***k))
                {
                    return Err(ParamError::Unused {
                        name: unused.clone(),
                    });
                }
                if self.positional > 0 {
                    return Err(ParamError::Mixed);
                }
                Ok(statement(args))
            }
            Params::Named(values) => match values.keys().next() {
                Some(name) => Err(ParamError::Unused { name: name.clone() }),
                None => Ok(statement(Vec::new())),
            },
            _ if has_named => {
                let name = self.names[0].to_string();
                if params.is_empty() {
                    Err(ParamError::NoParams { name })
                } else {
                    Err(ParamError::Missing { name })
                }
            }
            Params::Positional(values) => {
                if self.positional != values.len() {
                    return Err(ParamError::Count {
                        placeholders: self.positional,
                        given: values.len(),
                    });
                }
                Ok(statement(values.clone()))
            }
            Params::None => {
                if self.positional > 0 {
                    return Err(ParamError::Count {
                        placeholders: self.positional,
                        given: 0,
                    });
                }
                Ok(statement(Vec::new()))
            }
        }
    }
}

/// Statements longer than this are tokenized on every call instead of kept.
const TEMPLATE_MAX_SQL: usize = 16 * 1024;
/// Translations kept per thread and dialect; the set starts over when it is full.
const TEMPLATE_MAX_ENTRIES: usize = 256;

thread_local! {
    static TEMPLATES: RefCell<Templates> = RefCell::new(Templates::default());
}

/// The translations one thread has made, by dialect and text.
#[derive(Default)]
struct Templates {
    by_dialect: [HashMap<Box<str>, Rc<Template>, foldhash::fast::RandomState>; 3],
}

impl Templates {
    fn get(&mut self, sql: &str, dialect: DatabaseKind) -> Result<Rc<Template>, ParamError> {
        let map = &mut self.by_dialect[match dialect {
            DatabaseKind::Postgres => 0,
            DatabaseKind::Mysql => 1,
            DatabaseKind::Sqlite => 2,
        }];
        if let Some(template) = map.get(sql) {
            return Ok(template.clone());
        }
        let template = Rc::new(Template::parse(sql, dialect)?);
        if sql.len() <= TEMPLATE_MAX_SQL {
            if map.len() >= TEMPLATE_MAX_ENTRIES {
                map.clear();
            }
            map.insert(sql.into(), template.clone());
        }
        Ok(template)
    }
}

/// A `:name` token: byte range including the colon.
#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
}

#[derive(Debug, Default)]
struct Scan {
    named: Vec<Token>,
    /// `$n` (PostgreSQL: the highest n) or `?` (others: the count).
    positional: usize,
    touches_session: bool,
    leaves_state: bool,
    statements: usize,
    outlives_transaction: bool,
    /// The first word of the first statement.
    first_word: Option<Token>,
    /// The word `INTO` appears outside literals and comments.
    into: bool,
}

impl Scan {
    fn shape(&self, sql: &str) -> Shape {
        let Some(word) = self.first_word else {
            return Shape::Other;
        };
        let word = &sql[word.start..word.end];
        let is = |k: &str| word.eq_ignore_ascii_case(k);
        if is("WITH") {
            Shape::With
        } else if (is("SELECT") && !self.into) || is("VALUES") || is("TABLE") {
            Shape::Query
        } else {
            Shape::Other
        }
    }
}

/// First words of statements that may leave a transaction or session state behind.
const SESSION_KEYWORDS: &[&str] = &[
    "BEGIN",
    "START",
    "SAVEPOINT",
    "SET",
    "XA",
    "LOCK",
    "CALL",
    // PostgreSQL: undone by the reset (`UNLISTEN *`, `DEALLOCATE`, `CLOSE ALL`).
    "LISTEN",
    "PREPARE",
    "DECLARE",
];

/// Words that, followed by `TEMP`/`TEMPORARY`, create a temporary (session) object.
const BEFORE_TEMP: &[&str] = &["CREATE", "GLOBAL", "LOCAL", "REPLACE", "INTO"];

/// Where a MySQL `SET` statement is: only `SET [SESSION|LOCAL] autocommit = …` is undone by the
/// reset; any other variable, or a second assignment, stays with the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetState {
    /// Not in a `SET` statement.
    No,
    /// After `SET` (and `SESSION`, `LOCAL`, `@@`).
    Start,
    /// Assigning `autocommit`.
    Autocommit,
}

/// Functions that take a lock held by the session past the statement (and its transaction):
/// a statement calling one is reset on release like `BEGIN`, which frees the locks.
const SESSION_LOCK_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "get_lock",
];

/// PostgreSQL statements (by their first word) that leave session state past their transaction.
const PG_SESSION_STATEMENTS: &[&str] = &[
    "RESET",
    "LISTEN",
    "UNLISTEN",
    "PREPARE",
    "DEALLOCATE",
    "DISCARD",
    "LOAD",
];

/// PostgreSQL's advisory lock functions whose lock outlives the transaction.
const PG_SESSION_LOCK_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn scan(sql: &str, dialect: DatabaseKind) -> Result<Scan, ParamError> {
    let mut scanner = Scanner {
        sql,
        b: sql.as_bytes(),
        dialect,
        out: Scan::default(),
        i: 0,
        statement_start: true,
        prev_word: None,
        set: SetState::No,
        pg_set: false,
    };
    while scanner.i < scanner.b.len() {
        scanner.token()?;
    }
    scanner.out.outlives_transaction |= scanner.pg_set;
    Ok(scanner.out)
}

/// The tokenizer's walk over one text: where it is and what it has found so far.
struct Scanner<'a> {
    sql: &'a str,
    b: &'a [u8],
    dialect: DatabaseKind,
    out: Scan,
    /// The next byte to look at.
    i: usize,
    /// At the start of a statement: the next word decides `touches_session`.
    statement_start: bool,
    /// The previous word of the current statement.
    prev_word: Option<Token>,
    set: SetState,
    /// PostgreSQL: the statement began with `SET`, and the next word says for how long.
    pg_set: bool,
}

impl Scanner<'_> {
    /// Steps over the token at `i`, noting what it means.
    fn token(&mut self) -> Result<(), ParamError> {
        let (sql, b, dialect, i) = (self.sql, self.b, self.dialect, self.i);
        let c = b[i];
        match c {
            b'\'' => {
                let backslash = dialect == DatabaseKind::Mysql
                    || (dialect == DatabaseKind::Postgres
                        && i > 0
                        && matches!(b[i - 1], b'E' | b'e')
                        && (i < 2 || !is_name_char(b[i - 2])));
                self.i = skip_quoted(b, i, b'\'', backslash, "string literal")?;
                self.begin_statement();
            }
            b'"' => {
                let backslash = dialect == DatabaseKind::Mysql;
                self.i = skip_quoted(b, i, b'"', backslash, "quoted identifier")?;
                self.begin_statement();
            }
            b'`' if dialect != DatabaseKind::Postgres => {
                self.i = skip_quoted(b, i, b'`', false, "quoted identifier")?;
                self.begin_statement();
            }
            b'[' if dialect == DatabaseKind::Sqlite => {
                let end = sql[i..].find(']').ok_or(ParamError::Unterminated {
                    what: "quoted identifier",
                    at: i,
                })?;
                self.i = i + end + 1;
                self.begin_statement();
            }
            b'-' if b.get(i + 1) == Some(&b'-')
                && (dialect != DatabaseKind::Mysql
                    || b.get(i + 2).is_none_or(|c| c.is_ascii_whitespace())) =>
            {
                self.i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'#' if dialect == DatabaseKind::Mysql => {
                self.i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                self.i = skip_block_comment(b, i, dialect == DatabaseKind::Postgres)?;
            }
            b'$' if dialect == DatabaseKind::Postgres => {
                self.dollar()?;
                self.begin_statement();
            }
            b'?' if dialect != DatabaseKind::Postgres => {
                self.question_mark();
                self.begin_statement();
            }
            b':' => {
                self.colon();
                self.begin_statement();
            }
            b';' => {
                self.statement_start = true;
                self.prev_word = None;
                self.set = SetState::No;
                // `SET;` alone is a syntax error; a session `SET` is assumed.
                self.out.outlives_transaction |= std::mem::take(&mut self.pg_set);
                self.i += 1;
            }
            b'@' if dialect == DatabaseKind::Mysql => {
                self.at_sign();
                self.begin_statement();
            }
            c if c.is_ascii_whitespace() || c == b'(' => self.i += 1,
            c if is_name_start(c) => self.word(),
            _ => {
                if c == b',' && self.set == SetState::Autocommit {
                    // `SET autocommit = 0, sql_mode = …`: more than the reset undoes.
                    self.out.leaves_state = true;
                    self.set = SetState::No;
                }
                self.begin_statement();
                self.i += 1;
            }
        }
        Ok(())
    }

    /// Counts a new statement if the token just read is the first of one.
    fn begin_statement(&mut self) {
        if std::mem::take(&mut self.statement_start) {
            self.out.statements += 1;
        }
    }

    /// Steps over a PostgreSQL `$`: a `$1` positional, or a whole `$tag$ … $tag$` dollar quote.
    fn dollar(&mut self) -> Result<(), ParamError> {
        let (sql, b, i) = (self.sql, self.b, self.i);
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            let n: usize = sql[i + 1..i + 1 + digits].parse().unwrap_or(usize::MAX);
            self.out.positional = self.out.positional.max(n);
            self.i += 1 + digits;
        } else if let Some(tag_len) = dollar_tag(b, i) {
            let tag = &sql[i..i + tag_len];
            let body = i + tag_len;
            let close = sql[body..].find(tag).ok_or(ParamError::Unterminated {
                what: "dollar-quoted string",
                at: i,
            })?;
            self.i = body + close + tag_len;
        } else {
            self.i += 1;
        }
        Ok(())
    }

    /// Steps over a `?` positional placeholder (and SQLite's `?NNN` digits), counting it.
    fn question_mark(&mut self) {
        self.out.positional += 1;
        self.i += 1;
        // SQLite `?NNN`
        while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
            self.i += 1;
        }
    }

    /// Steps over a `:`: a `::cast`, a `:name` parameter (noted), or a lone colon.
    fn colon(&mut self) {
        let (b, i) = (self.b, self.i);
        if b.get(i + 1) == Some(&b':') {
            self.i += 2; // `::cast`
        } else if b.get(i + 1).copied().is_some_and(is_name_start)
            && (i == 0 || !is_name_char(b[i - 1]))
            && (i == 0 || b[i - 1] != b':')
        {
            let end = i + 1 + b[i + 1..].iter().take_while(|c| is_name_char(**c)).count();
            self.out.named.push(Token { start: i, end });
            self.i = end;
        } else {
            self.i += 1;
        }
    }

    /// Steps over a MySQL `@`: `@@system_variable`, or a user variable that outlives the statement.
    fn at_sign(&mut self) {
        let (b, i) = (self.b, self.i);
        if b.get(i + 1) == Some(&b'@') {
            self.i += 2; // `@@system_variable`: the name follows as a word
        } else {
            // `@name`, `@'name'`: a user variable lives as long as the session.
            self.out.leaves_state |= b.get(i + 1).is_some_and(|c| {
                is_name_char(*c) || matches!(c, b'\'' | b'"' | b'`' | b'$' | b'.')
            });
            self.i += 1;
        }
    }

    /// Steps over a word, noting the session state it may touch or leave and the statement's
    /// first word.
    fn word(&mut self) {
        let (sql, b, i) = (self.sql, self.b, self.i);
        let end = i + b[i..].iter().take_while(|c| is_name_char(**c)).count();
        let word = &sql[i..end];
        let is = |list: &[&str]| list.iter().any(|k| k.eq_ignore_ascii_case(word));
        if (self.statement_start && is(SESSION_KEYWORDS)) || is(SESSION_LOCK_FUNCTIONS) {
            self.out.touches_session = true;
        }
        self.dialect_session_state(word);
        self.prev_word = Some(Token { start: i, end });
        if self.statement_start && self.out.statements == 0 {
            self.out.first_word = Some(Token { start: i, end });
        }
        self.out.into |= word.eq_ignore_ascii_case("INTO");
        self.begin_statement();
        self.i = end;
    }

    /// Notes what `word` means to the dialect's reset: temporary objects, MySQL `PREPARE` and
    /// `SET`, SQLite `PRAGMA` and `ATTACH`.
    fn dialect_session_state(&mut self, word: &str) {
        let sql = self.sql;
        let is_word = |k: &str| word.eq_ignore_ascii_case(k);
        let temp = (is_word("TEMP") || is_word("TEMPORARY"))
            && self.prev_word.is_some_and(|p| {
                let p = &sql[p.start..p.end];
                BEFORE_TEMP.iter().any(|k| k.eq_ignore_ascii_case(p))
            });
        let statement_start = self.statement_start;
        match self.dialect {
            // The reset undoes temporary tables (`DISCARD TEMP`).
            DatabaseKind::Postgres => {
                self.out.touches_session |= temp;
                self.out.outlives_transaction |= temp || self.pg_outlives(word);
            }
            DatabaseKind::Mysql => {
                self.out.leaves_state |= temp || (statement_start && is_word("PREPARE"));
                self.set = self.mysql_set(word);
            }
            DatabaseKind::Sqlite => {
                self.out.leaves_state |=
                    temp || (statement_start && (is_word("PRAGMA") || is_word("ATTACH")));
            }
        }
    }

    /// Whether PostgreSQL's `word` makes the statement leave session state past its transaction
    /// (see [`Statement::outlives_transaction`]; temporary objects are noted by the caller).
    fn pg_outlives(&mut self, word: &str) -> bool {
        let is_word = |k: &str| word.eq_ignore_ascii_case(k);
        if std::mem::take(&mut self.pg_set) {
            return !(is_word("LOCAL") || is_word("TRANSACTION") || is_word("CONSTRAINTS"));
        }
        if self.statement_start {
            if is_word("SET") {
                self.pg_set = true;
                return false;
            }
            return PG_SESSION_STATEMENTS.iter().any(|k| is_word(k));
        }
        let after_with = self
            .prev_word
            .is_some_and(|p| self.sql[p.start..p.end].eq_ignore_ascii_case("WITH"));
        (after_with && is_word("HOLD"))
            || is_word("set_config")
            || PG_SESSION_LOCK_FUNCTIONS.iter().any(|k| is_word(k))
    }

    /// Where a MySQL `SET` statement is after `word` (noting a variable the reset cannot undo).
    fn mysql_set(&mut self, word: &str) -> SetState {
        let is_word = |k: &str| word.eq_ignore_ascii_case(k);
        match self.set {
            _ if self.statement_start => {
                if is_word("SET") {
                    SetState::Start
                } else {
                    SetState::No
                }
            }
            SetState::Start if is_word("SESSION") || is_word("LOCAL") => SetState::Start,
            SetState::Start if is_word("autocommit") => SetState::Autocommit,
            SetState::Start => {
                self.out.leaves_state = true;
                SetState::No
            }
            other => other,
        }
    }
}

fn skip_quoted(
    b: &[u8],
    start: usize,
    quote: u8,
    backslash: bool,
    what: &'static str,
) -> Result<usize, ParamError> {
    let mut i = start + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2; // doubled quote
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(ParamError::Unterminated { what, at: start })
}

fn skip_block_comment(b: &[u8], start: usize, nested: bool) -> Result<usize, ParamError> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
            if !nested {
                depth = 1;
            }
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err(ParamError::Unterminated {
        what: "block comment",
        at: start,
    })
}

/// Length of a `$tag$` opener at `i` (`$$` or `$name$`), if there is one.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    // A `$` right after a name character is part of an identifier, not a quote.
    if i > 0 && is_name_char(b[i - 1]) {
        return None;
    }
    let mut j = i + 1;
    if b.get(j).copied().is_some_and(is_name_start) {
        while b.get(j).copied().is_some_and(is_name_char) {
            j += 1;
        }
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

/// "a string", "an array", …: a JSON value's type, for messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn named(v: Value) -> Params {
        Params::Named(v.as_object().unwrap().clone())
    }

    const PG: DatabaseKind = DatabaseKind::Postgres;
    const MY: DatabaseKind = DatabaseKind::Mysql;
    const LITE: DatabaseKind = DatabaseKind::Sqlite;

    #[test]
    fn a_kept_translation_checks_each_call_s_parameters_again() {
        let sql = "SELECT :a, :b, :a WHERE x = :b";
        // Same text, three dialects: each its own translation.
        let pg = prepare(sql, &named(json!({"a": 1, "b": 2})), PG).unwrap();
        assert_eq!(&*pg.sql, "SELECT $1, $2, $1 WHERE x = $2");
        assert_eq!(pg.args, vec![json!(1), json!(2)]);
        let my = prepare(sql, &named(json!({"a": 1, "b": 2})), MY).unwrap();
        assert_eq!(&*my.sql, "SELECT ?, ?, ? WHERE x = ?");
        assert_eq!(my.args, vec![json!(1), json!(2), json!(1), json!(2)]);
        // Kept now: new values bind, and wrong ones are still refused, naming the parameter.
        let again = prepare(sql, &named(json!({"b": "y", "a": "x"})), PG).unwrap();
        assert_eq!(again.args, vec![json!("x"), json!("y")]);
        assert!(
            Arc::ptr_eq(&pg.sql, &again.sql),
            "the translation is shared"
        );
        assert_eq!(
            prepare(sql, &named(json!({"a": 1})), PG),
            Err(ParamError::Missing { name: "b".into() })
        );
        assert_eq!(
            prepare(sql, &named(json!({"a": 1, "b": 2, "c": 3})), PG),
            Err(ParamError::Unused { name: "c".into() })
        );
        assert_eq!(
            prepare(sql, &Params::None, PG),
            Err(ParamError::NoParams { name: "a".into() })
        );
        assert_eq!(
            prepare("SELECT $1", &Params::None, PG),
            Err(ParamError::Count {
                placeholders: 1,
                given: 0
            })
        );
        let one = prepare("SELECT $1", &Params::Positional(vec![json!(5)]), PG).unwrap();
        assert_eq!(one.args, vec![json!(5)]);
        // Text that does not tokenize is refused every time, never kept.
        for _ in 0..2 {
            assert!(matches!(
                prepare("SELECT 'open", &Params::None, PG),
                Err(ParamError::Unterminated { .. })
            ));
        }
        assert!(TEMPLATES.with(|t| !t.borrow().by_dialect[0].contains_key("SELECT 'open")));
    }

    #[test]
    fn the_kept_translations_stay_bounded() {
        for i in 0..(TEMPLATE_MAX_ENTRIES * 2 + 7) {
            let sql = format!("SELECT {i}");
            assert_eq!(&*prepare(&sql, &Params::None, LITE).unwrap().sql, sql);
        }
        let kept = TEMPLATES.with(|t| t.borrow().by_dialect[2].len());
        assert!(kept <= TEMPLATE_MAX_ENTRIES, "{kept} kept");
        // Too long to keep: translated, not kept.
        let long = format!("SELECT '{}'", "x".repeat(TEMPLATE_MAX_SQL));
        prepare(&long, &Params::None, LITE).unwrap();
        assert!(TEMPLATES.with(|t| !t.borrow().by_dialect[2].contains_key(long.as_str())));
    }

    #[test]
    fn id_never_touches_id_type() {
        let p = named(json!({"id": 7, "id_type": "x"}));
        let s = prepare("SELECT * FROM t WHERE id = :id AND kind = :id_type", &p, PG).unwrap();
        assert_eq!(&*s.sql, "SELECT * FROM t WHERE id = $1 AND kind = $2");
        assert_eq!(s.args, vec![json!(7), json!("x")]);
        // The reverse order of declaration changes nothing.
        let s = prepare("SELECT :id_type, :id", &p, MY).unwrap();
        assert_eq!(&*s.sql, "SELECT ?, ?");
        assert_eq!(s.args, vec![json!("x"), json!(7)]);
    }

    #[test]
    fn repeated_names_reuse_number_or_rebind() {
        let p = named(json!({"a": 1}));
        assert_eq!(
            &*prepare("SELECT :a + :a", &p, PG).unwrap().sql,
            "SELECT $1 + $1"
        );
        let s = prepare("SELECT :a + :a", &p, LITE).unwrap();
        assert_eq!((&*s.sql, s.args.len()), ("SELECT ? + ?", 2));
    }

    #[test]
    fn literals_comments_casts_and_identifiers_are_left_alone() {
        let p = named(json!({"id": 1}));
        let sql = "SELECT ':id', E'\\':id', \"col:id\", $q$ :id $q$, x::text, '2024-01-01 10:00'::timestamp -- :id\n/* :id /* nested :id */ */ FROM t WHERE id = :id";
        let s = prepare(sql, &p, PG).unwrap();
        assert!(s.sql.ends_with("WHERE id = $1"), "{}", s.sql);
        assert_eq!(s.sql.matches(":id").count(), 7, "{}", s.sql);
        assert_eq!(s.args, vec![json!(1)]);

        let sql = "SELECT ':id', 'it\\'s :id', `c:id` FROM t # :id\nWHERE id = :id -- :id";
        let s = prepare(sql, &p, MY).unwrap();
        assert!(s.sql.contains("WHERE id = ? --"), "{}", s.sql);

        let sql = "SELECT [c:id], ':id' FROM t WHERE id = :id";
        assert!(prepare(sql, &p, LITE).unwrap().sql.ends_with("id = ?"));
    }

    #[test]
    fn time_literals_and_slices_are_not_parameters() {
        let s = prepare("SELECT '10:30', arr[1:2] FROM t", &Params::None, PG).unwrap();
        assert_eq!(&*s.sql, "SELECT '10:30', arr[1:2] FROM t");
    }

    #[test]
    fn missing_unused_and_no_params_are_named() {
        let err = prepare("SELECT :a, :b", &named(json!({"a": 1})), PG).unwrap_err();
        assert_eq!(err, ParamError::Missing { name: "b".into() });
        let err = prepare("SELECT :a", &named(json!({"a": 1, "zz": 2})), PG).unwrap_err();
        assert_eq!(err, ParamError::Unused { name: "zz".into() });
        let err = prepare("SELECT :a", &Params::None, MY).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the query uses `:a` but no parameters were given"
        );
        let err = prepare("SELECT 1", &named(json!({"a": 1})), LITE).unwrap_err();
        assert_eq!(err, ParamError::Unused { name: "a".into() });
    }

    #[test]
    fn positional_counts_are_checked() {
        let p = Params::Positional(vec![json!(1), json!(2)]);
        assert!(prepare("SELECT $1, $2", &p, PG).is_ok());
        assert_eq!(
            prepare("SELECT $1", &p, PG).unwrap_err(),
            ParamError::Count {
                placeholders: 1,
                given: 2
            }
        );
        assert!(prepare("SELECT ?, ?", &p, MY).is_ok());
        assert!(prepare("SELECT '?', ?", &p, LITE).is_err());
        assert!(prepare("SELECT ?", &Params::None, LITE).is_err());
        // `$1` is not a placeholder on MySQL, `?` is not one on PostgreSQL (jsonb operator).
        assert!(prepare("SELECT data ? 'k' FROM t", &Params::None, PG).is_ok());
    }

    #[test]
    fn unterminated_tokens_are_errors() {
        assert!(matches!(
            prepare("SELECT 'abc", &Params::None, PG),
            Err(ParamError::Unterminated {
                what: "string literal",
                at: 7
            })
        ));
        assert!(prepare("SELECT $x$ abc", &Params::None, PG).is_err());
        assert!(prepare("SELECT /* abc", &Params::None, MY).is_err());
    }

    #[test]
    fn statements_are_told_apart_by_their_first_keyword() {
        let shape = |sql: &str| prepare(sql, &Params::None, PG).unwrap().shape;
        for sql in [
            "SELECT 1",
            "  select * from t",
            "/* a */ /* b */ (SELECT 1) UNION (SELECT 2)",
            "-- report\nVALUES (1), (2)",
            "TABLE t",
            "SELECT 'INTO' AS word",
            "SELECT into_col FROM t",
        ] {
            assert_eq!(shape(sql), Shape::Query, "{sql}");
        }
        assert_eq!(shape("WITH x AS (SELECT 1) SELECT * FROM x"), Shape::With);
        for sql in [
            "SELECT x INTO t FROM y",
            "select x\ninto t",
            "INSERT INTO t SELECT 1",
            "UPDATE t SET x = 1 RETURNING x",
            "SHOW TABLES",
            "selected",
            "-- only a comment",
            "",
            "'literal'",
        ] {
            assert_eq!(shape(sql), Shape::Other, "{sql}");
        }
        assert!(Shape::With.reads_rows() && Shape::Query.reads_rows());
        assert!(!Shape::Other.reads_rows());
    }

    #[test]
    fn session_statements_are_noticed() {
        for sql in [
            "BEGIN",
            "begin;",
            "START TRANSACTION",
            "SELECT 1; BEGIN",
            "  SET autocommit = 0",
            "SAVEPOINT a",
            "/* x */ BEGIN",
            "SELECT pg_advisory_lock(1)",
            "select Pg_Try_Advisory_Lock_Shared(1) AS got",
            "SELECT GET_LOCK('name', 1)",
        ] {
            assert!(
                prepare(sql, &Params::None, MY).unwrap().touches_session,
                "{sql}"
            );
        }
        for sql in [
            "SELECT 1",
            "SELECT 'BEGIN'",
            "DO $$ BEGIN PERFORM 1; END $$",
            "UPDATE t SET a = 1",
            "COMMIT",
            "SELECT pg_advisory_unlock(1)",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT 'pg_advisory_lock(1)'",
            "SELECT get_locks FROM t",
        ] {
            assert!(
                !prepare(sql, &Params::None, PG).unwrap().touches_session,
                "{sql}"
            );
        }
    }

    #[test]
    fn postgres_session_state_past_the_transaction_is_noticed() {
        let outlives = |sql: &str| {
            prepare(sql, &Params::None, PG)
                .unwrap()
                .outlives_transaction
        };
        for sql in [
            "SET search_path = x",
            "set session statement_timeout = 5",
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "SELECT 1; SET work_mem = '1GB'",
            "RESET ALL",
            "LISTEN ch",
            "UNLISTEN *",
            "PREPARE q AS SELECT 1",
            "DEALLOCATE ALL",
            "DISCARD ALL",
            "LOAD 'auto_explain'",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE t (a int)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock_shared(1)",
            "SELECT set_config('search_path', 'x', false)",
            "SET",
        ] {
            assert!(outlives(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "SET LOCAL statement_timeout = 5",
            "BEGIN; SET LOCAL hnsw.ef_search = 40",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "UPDATE t SET a = 1",
            "UPDATE t SET reset = 1",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT 'SET x = 1'",
            "DECLARE c CURSOR FOR SELECT 1",
            "BEGIN",
            "COMMIT",
        ] {
            assert!(!outlives(sql), "{sql}");
        }
    }
    #[test]
    fn state_a_reset_cannot_undo_is_noticed() {
        let leaves = |sql, dialect| prepare(sql, &Params::None, dialect).unwrap().leaves_state;
        for sql in [
            "SET @n = 0",
            "SELECT @n := 1",
            "SELECT 1 INTO @x",
            "SELECT @`odd name`",
            "SET SESSION sql_mode = ''",
            "set names utf8mb4",
            "SET autocommit = 0, sql_mode = ''",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET @@session.time_zone = '+00:00'",
            "CREATE TEMPORARY TABLE t (a INT)",
            "PREPARE s FROM 'SELECT 1'",
            "SELECT 1; SET max_execution_time = 5",
        ] {
            assert!(leaves(sql, MY), "{sql}");
            assert!(
                prepare(sql, &Params::None, MY).unwrap().needs_reset(),
                "{sql}"
            );
        }
        for sql in [
            "SET autocommit = 0",
            "SET SESSION autocommit=1",
            "SET @@autocommit = OFF",
            "SET @@session.autocommit = 0",
            "SELECT @@version",
            "SELECT '@n', `a@b` FROM t -- @n\n",
            "SELECT * FROM temp",
            "CREATE TABLE temp (a INT)",
            "UPDATE t SET a = 1, b = @@sql_mode",
            "BEGIN",
        ] {
            assert!(!leaves(sql, MY), "{sql}");
        }
        for sql in [
            "PRAGMA foreign_keys = OFF",
            "pragma journal_mode",
            "ATTACH DATABASE 'x.db' AS x",
            "CREATE TEMP TABLE t (a)",
            "CREATE TEMPORARY VIEW v AS SELECT 1",
        ] {
            assert!(leaves(sql, LITE), "{sql}");
        }
        assert!(!leaves("SELECT temp FROM weather", LITE));
        // PostgreSQL's reset undoes all of these: they only need it.
        for sql in [
            "LISTEN jobs",
            "PREPARE q AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE t (a int)",
            "CREATE GLOBAL TEMPORARY TABLE t (a int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "SELECT 1 INTO TEMP t",
            "SET search_path = x",
        ] {
            let stmt = prepare(sql, &Params::None, PG).unwrap();
            assert!(stmt.touches_session && !stmt.leaves_state, "{sql}");
        }
        for sql in [
            "SELECT temp FROM weather",
            "SELECT 1 AS temporary",
            "SELECT @ -5",
        ] {
            assert!(
                !prepare(sql, &Params::None, PG).unwrap().needs_reset(),
                "{sql}"
            );
        }
    }

    #[test]
    fn statements_are_counted_outside_literals() {
        let count = |sql| prepare(sql, &Params::None, PG).unwrap().statements;
        assert_eq!(count("SELECT 1"), 1);
        assert_eq!(count("SELECT 1;"), 1);
        assert_eq!(count("SELECT 1; SELECT 2"), 2);
        assert_eq!(count("SELECT ';'; -- ;\n"), 1);
        assert_eq!(count("(SELECT 1); (SELECT 2)"), 2);
    }

    #[test]
    fn params_from_json() {
        assert_eq!(Params::from_json(None).unwrap(), Params::None);
        assert!(matches!(
            Params::from_json(Some(&json!([1]))).unwrap(),
            Params::Positional(_)
        ));
        assert!(matches!(
            Params::from_json(Some(&json!({"a": 1}))).unwrap(),
            Params::Named(_)
        ));
        assert!(Params::from_json(Some(&json!("x"))).is_err());
    }

    mod arbitrary {
        use super::*;
        use proptest::prelude::*;

        /// SQL-ish text: the tokenizer's special characters are frequent, so quotes, comments,
        /// dollar tags, casts and placeholders are cut off and nested at random.
        fn sqlish() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(vec![
                        "'", "\"", "`", "$", "$$", "$a$", ":", "::", ":id", ":id_type", "?",
                        "$1", "--", "/*", "*/", "\n", "\\", "[", "]", "E'", "SELECT ", "INTO ",
                        "WITH ", "TEMP ", "SET ", "PREPARE ", "@x", ";",
                    ])
                    .prop_map(str::to_owned),
                    1 => any::<String>(),
                ],
                0..40,
            )
            .prop_map(|parts| parts.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn the_tokenizer_never_panics(sql in sqlish(), value in any::<i64>()) {
                let params = named(json!({"id": value, "id_type": "x", "a": [1, 2]}));
                for dialect in [PG, MY, LITE] {
                    let _ = prepare(&sql, &params, dialect);
                    let _ = prepare(&sql, &Params::Positional(vec![json!(value)]), dialect);
                    let _ = prepare(&sql, &Params::None, dialect);
                }
            }
        }
    }
}
