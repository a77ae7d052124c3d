"""Example node plugin `enrich`, written in Python: adds columns of a database row to each record.

For each record it takes the value of the field `key`, finds the row of `table` whose `column`
holds that value, and copies that row's `fields` into the record (named `prefix` + field). The
rows come from the host's database through the `database` import, so the host's policy decides
each statement for the user the run is for. With the repository's example database:

    [nodes.config]
    table = "employees"
    key = "employee_id"
    fields = ["name", "department"]
    prefix = "employee_"

turns `{"employee_id": 3, "amount": 12.5}` into
`{"employee_id": 3, "amount": 12.5, "employee_name": "...", "employee_department": "..."}`.

The lookups of a batch are few: the distinct values go `CHUNK` at a time into one
`SELECT ... WHERE column IN (:k0, :k1, ...)` each (the host allows 16 statements per call by
default), every value bound as a parameter. When a statement fails, the records it was for fail
with the error's kind and message (e.g. `database denied: ...` when the policy refuses the
read); records already enriched keep their rows. A record whose value has no row passes
unchanged (`on_missing = "keep"`) or fails (`"fail"`). Errors name the table and the record's
field, never a value: a record's error may be shown where its fields are masked.
"""

import re

from wit_world import exports

import trellis

NAME = "enrich"
VERSION = "0.1.0"

# Distinct values per statement: with the default `max_statements` (16) a batch may hold 1,600
# distinct values, and with a unique `column` a statement returns at most 100 of the default
# `max_rows` (1,000) rows.
CHUNK = 100

# Table and column names go into the statement's text, so they must be plain identifiers.
IDENTIFIER = "^[A-Za-z_][A-Za-z0-9_]{0,62}$"
_IDENTIFIER = re.compile(IDENTIFIER)

# Without `additionalProperties`, the host itself names an unknown key, with a did-you-mean.
CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "database": {
            "type": "string",
            "default": "main",
            "description": "The database to read (a `[databases.NAME]`)",
        },
        "table": {"type": "string", "pattern": IDENTIFIER, "description": "The table to read"},
        "column": {
            "type": "string",
            "pattern": IDENTIFIER,
            "default": "id",
            "description": "The table's column to match",
        },
        "key": {
            "type": "string",
            "default": "id",
            "description": "The record field whose value is looked up",
        },
        "fields": {
            "type": "array",
            "items": {"type": "string", "pattern": IDENTIFIER},
            "minItems": 1,
            "description": "The columns to copy into each record",
        },
        "prefix": {
            "type": "string",
            "default": "",
            "description": "Put before each copied column's name in the record",
        },
        "on_missing": {
            "enum": ["keep", "fail"],
            "default": "keep",
            "description": "A record whose value has no row: keep it unchanged, or fail it",
        },
    },
    "required": ["table", "fields"],
}

# The column alias the matched value comes back under.
_KEY_ALIAS = "trellis_enrich_key"


class Settings:
    """The node config, checked."""

    def __init__(self):
        self.database = trellis.config("database", "main")
        self.table = _identifier("table", trellis.config("table"))
        self.column = _identifier("column", trellis.config("column", "id"))
        self.key = trellis.config("key", "id")
        fields = trellis.config("fields")
        if not isinstance(fields, list) or not fields:
            raise ValueError("config `fields` must be a list of column names")
        self.fields = [_identifier("fields", f) for f in fields]
        self.prefix = trellis.config("prefix", "")
        self.on_missing = trellis.config("on_missing", "keep")
        if not isinstance(self.key, str) or not isinstance(self.prefix, str):
            raise ValueError("config `key` and `prefix` must be strings")
        if self.on_missing not in ("keep", "fail"):
            raise ValueError("config `on_missing` must be `keep` or `fail`")

    def statement(self, count):
        columns = ", ".join([f"{self.column} AS {_KEY_ALIAS}", *self.fields])
        params = ", ".join(f":k{i}" for i in range(count))
        return f"SELECT {columns} FROM {self.table} WHERE {self.column} IN ({params})"


def _identifier(name, value):
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ValueError(f"config `{name}` must be a table or column name, not {value!r}")
    return value


def _normal(value):
    """A looked-up value as a dictionary key: `3`, `3.0`, `"3"` and a row's `3` are one key (the
    database compared them as it saw fit)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _column(row, field):
    """`row[field]`, matching the name without regard to case (PostgreSQL lower-cases it)."""
    if field in row:
        return row[field]
    for name, value in row.items():
        if name.lower() == field.lower():
            return value
    return None


def lookup(settings, values):
    """The rows for `values` (distinct, JSON scalars), by `_normal(value)`, and the error that
    stopped the lookups early, if any (the values after it have no entry)."""
    found = {}
    for start in range(0, len(values), CHUNK):
        chunk = values[start : start + CHUNK]
        params = {f"k{i}": value for i, value in enumerate(chunk)}
        try:
            rows = trellis.rows(settings.database, settings.statement(len(chunk)), params)
        except trellis.DatabaseError as error:
            trellis.log_warn(f"lookup in `{settings.table}` failed: {error}")
            return found, error
        for row in rows:
            found.setdefault(_normal(_column(row, _KEY_ALIAS)), row)
    return found, None


def enrich(records):
    """One result per record (parsed from JSON): the enriched record, or a `ValueError` that
    fails it. A bad config raises, which fails the whole batch."""
    settings = Settings()
    wanted = {}
    for record in records:
        if isinstance(record, dict):
            value = record.get(settings.key)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                wanted.setdefault(_normal(value), value)
    found, failure = lookup(settings, list(wanted.values()))

    def one(record):
        if not isinstance(record, dict):
            raise ValueError("a record must be a JSON object")
        if settings.key not in record:
            raise ValueError(f"`{settings.key}` is missing")
        value = record[settings.key]
        key = _normal(value)
        row = found.get(key)
        if row is None and failure is not None and key in wanted:
            raise ValueError(f"database {failure.kind}: {failure.message}")
        if row is None:
            if settings.on_missing == "fail":
                raise ValueError(f"no row of `{settings.table}` matches `{settings.key}`")
            return record
        for field in settings.fields:
            record[settings.prefix + field] = _column(row, field)
        return record

    results = []
    for record in records:
        try:
            results.append(one(record))
        except ValueError as error:
            results.append(error)
    return results


class Meta(exports.Meta):
    def describe(self):
        return trellis.describe(
            NAME,
            VERSION,
            kind="node",
            capabilities=["log", "config", "database"],
            config_schema=CONFIG_SCHEMA,
        )


class Transform(exports.Transform):
    def transform(self, records):
        return trellis.transform_batch(records, enrich)


class Mask(exports.Mask):
    def mask(self, requests):
        return trellis.not_this_kind(NAME, "node", len(requests))
