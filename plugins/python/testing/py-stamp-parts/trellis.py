"""Helpers for Trellis plugins written in Python (`trellis:plugin@0.2.0`).

A plugin is `app.py` beside this file, built into a WebAssembly component with componentize-py
(`trellis plugin build DIR` runs it). `app.py` defines the classes `Meta`, `Transform` and `Mask`
that componentize-py exports; this module turns their calls into plain Python:

- `describe(...)` builds what `Meta.describe` returns;
- `transform_each(records, fn)` calls `fn(record)` on each record, parsed from JSON, and turns
  each return value or exception into that record's result; `transform_batch(records, fn)`
  hands `fn` the whole batch;
- `mask_each(requests, fn)` does the same for masking, with `fn(value, params, field_path)`;
- `not_this_kind(...)` answers the export a plugin of the other kind does not implement;
- `config(key)`, `log_*(message)` and `query(...)`/`rows(...)` wrap the host's imports.

Only modules imported while the component is built exist when it runs: the component has no
file system. Import every module you need at the top of a file, never inside a function.
"""

import json
from typing import Any, Callable, Iterable, List, Optional

from componentize_py_types import Err, Ok
from wit_world.imports import config as _config
from wit_world.imports import log as _log
from wit_world.imports import types as _types

try:
    from wit_world.imports import database as _database
except ImportError:  # a world before trellis:plugin@0.2.0, which has no `database` import
    _database = None

__all__ = [
    "DatabaseError",
    "config",
    "describe",
    "log_debug",
    "log_error",
    "log_info",
    "log_trace",
    "log_warn",
    "mask_each",
    "not_this_kind",
    "query",
    "rows",
    "transform_batch",
    "transform_each",
]


# ---- describe ---------------------------------------------------------------------------------


def describe(
    name: str,
    version: str,
    kind: str = "node",
    capabilities: Iterable[str] = (),
    config_schema: Optional[dict] = None,
) -> _types.Description:
    """What `Meta.describe` returns.

    `kind` is `"node"` or `"masking"`; `capabilities` lists the host imports the plugin uses
    (`"log"`, `"config"`, `"database"`); `config_schema` is a JSON Schema (a dict) for the node
    config, which the host checks before each call.
    """
    kinds = {"node": _types.Kind.NODE, "masking": _types.Kind.MASKING}
    if kind not in kinds:
        raise ValueError(f"kind must be `node` or `masking`, not `{kind}`")
    return _types.Description(
        name=name,
        version=version,
        kind=kinds[kind],
        capabilities=list(capabilities),
        config_schema=None if config_schema is None else json.dumps(config_schema),
    )


# ---- the exports --------------------------------------------------------------------------------


def _reason(error: Exception) -> str:
    """An exception as a record's error: a `ValueError`'s message as it is (raise one to fail a
    record with your own words), any other exception's type and message (a bug shows as one)."""
    if type(error) in (ValueError, Exception) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def transform_each(records: List[str], fn: Callable[[Any], Any]) -> list:
    """`Transform.transform` for a plugin that transforms one record at a time.

    Each record is parsed from JSON and given to `fn`; what `fn` returns is that record's result
    (serialized back to JSON), and an exception it raises fails that record only: raise
    `ValueError("...")` to fail it with your own message. The results come back in order, one per
    record.
    """

    def each(values: list) -> list:
        out: list = []
        for value in values:
            try:
                out.append(fn(value))
            except Exception as e:  # noqa: BLE001 - an error fails this record, not the batch
                out.append(e)
        return out

    return transform_batch(records, each)


def transform_batch(records: List[str], fn: Callable[[list], list]) -> list:
    """`Transform.transform` for a plugin that works on the whole batch (one database lookup for
    all records, totals across records, ...).

    `fn` gets the records parsed from JSON and returns one result per record, in order: the
    record's new value, or an exception (an instance, returned, not raised) that fails that
    record. An exception `fn` raises fails every record of the batch.
    """
    values = []
    for i, text in enumerate(records):
        try:
            values.append(json.loads(text))
        except ValueError as e:
            # The host always sends JSON; if it did not, fail every record rather than guess.
            return [Err(f"record {i} is not JSON: {e}") for _ in records]
    try:
        results = list(fn(values))
    except Exception as e:  # noqa: BLE001 - reported as every record's error
        return [Err(_reason(e)) for _ in records]
    if len(results) != len(records):
        message = f"the plugin gave {len(results)} results for {len(records)} records"
        return [Err(message) for _ in records]
    out = []
    for result in results:
        if isinstance(result, Exception):
            out.append(Err(_reason(result)))
            continue
        try:
            out.append(Ok(json.dumps(result)))
        except (TypeError, ValueError) as e:
            out.append(Err(f"the result is not JSON: {e}"))
    return out


def mask_each(requests: list, fn: Callable[[Any, Any, str], Any]) -> list:
    """`Mask.mask` for a plugin that masks one value at a time.

    `fn(value, params, field_path)` gets the value and the masking rule's `params` (both parsed
    from JSON) and where the value sits (e.g. `employees[].email`); it returns the masked value.
    An exception makes the host redact that value: masking fails closed.
    """
    out = []
    for request in requests:
        try:
            value = json.loads(request.value)
        except ValueError as e:
            out.append(Err(f"value at `{request.field_path}` is not JSON: {e}"))
            continue
        try:
            params = json.loads(request.params)
        except ValueError:
            params = None
        try:
            out.append(Ok(json.dumps(fn(value, params, request.field_path))))
        except Exception as e:  # noqa: BLE001 - the host redacts this value
            out.append(Err(_reason(e)))
    return out


def not_this_kind(name: str, kind: str, count: int) -> list:
    """The answer of the export a plugin does not implement: one error per input.

    The host calls only the export of the kind a plugin describes itself as, so this is never
    seen in normal use.
    """
    message = f"plugin `{name}` is a {kind} plugin and does not implement this export"
    return [Err(message) for _ in range(count)]


# ---- the host's imports -------------------------------------------------------------------------


def config(key: str, default: Any = None) -> Any:
    """The node config's value at `key`, parsed from JSON, or `default` when it is not set."""
    text = _config.get(key)
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def log_trace(message: str) -> None:
    """Logs `message` into the host's tracing at `trace`."""
    _log.log(_log.Level.TRACE, message)


def log_debug(message: str) -> None:
    """Logs `message` at `debug`."""
    _log.log(_log.Level.DEBUG, message)


def log_info(message: str) -> None:
    """Logs `message` at `info`."""
    _log.log(_log.Level.INFO, message)


def log_warn(message: str) -> None:
    """Logs `message` at `warn`."""
    _log.log(_log.Level.WARN, message)


def log_error(message: str) -> None:
    """Logs `message` at `error`."""
    _log.log(_log.Level.ERROR, message)


class DatabaseError(Exception):
    """A statement that did not run, or did not finish.

    `kind` is `"denied"` (the policy refused it, or the plugin did not ask for the `database`
    capability), `"query"` (the database refused it, or the parameters do not fit), `"timeout"`
    (the call's deadline passed) or `"limit"` (more rows than `max_rows`, or more statements
    than `max_statements` in one call); `message` is the host's, and never quotes a parameter.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(f"database {kind}: {message}")
        self.kind = kind
        self.message = message


_KINDS = {"DENIED": "denied", "QUERY": "query", "TIMEOUT": "timeout", "LIMIT": "limit"}


def query(database: str, statement: str, params: Optional[dict] = None) -> dict:
    """Runs one statement on the host's database `database` (a `[databases.NAME]`).

    `statement` names its parameters `:name`; `params` holds their values, always bound, never
    spliced into the text. Returns what an SQL node returns under `result`:
    `{"data": [rows as dicts], "row_count": N, "database_type": "..."}`. Raises `DatabaseError`.
    The plugin must list `"database"` in its capabilities, and the host's policy must allow the
    statement for the user the run is for.
    """
    if _database is None:
        raise DatabaseError("denied", "this plugin's WIT world has no `database` import")
    try:
        text = _database.query(database, statement, json.dumps(params))
    except Err as e:
        error = e.value
        raise DatabaseError(_KINDS.get(error.kind.name, "query"), error.message) from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise DatabaseError("query", f"the host returned rows that are not JSON: {e}") from None


def rows(database: str, statement: str, params: Optional[dict] = None) -> list:
    """`query`'s rows (its `data`), for a statement that returns rows."""
    data = query(database, statement, params).get("data")
    return data if isinstance(data, list) else []
