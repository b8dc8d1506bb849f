"""The guard on the spec's own SQL (the `verify` checks): one read-only SELECT, judged by parsing it.

A verify query is parsed with sqlglot in the dialect of the server it runs on (Postgres for `source_sql`, the
warehouse dialect's `sqlglot_dialect` for `warehouse_sql`) and refused unless it is exactly one query (SELECT, set
operations of SELECTs, CTEs) with

- no statement or clause that changes data or state anywhere in its tree (a DELETE inside a CTE, SELECT … INTO,
  FOR UPDATE, COPY, ATTACH, SET, …);
- no call to a function that reads or writes files, reaches other servers, runs SQL given as a string or changes
  replication, sessions or server state (`DENIED`), and no call to a function sqlglot does not know (user-defined
  functions, server internals) unless it is on the short list of harmless ones (`ALLOWED_FUNCTIONS`);
- no table reference that is a file path, URL or stage (`FROM '/etc/passwd'`, `FROM "x.csv"`, `FROM @stage`).

`bankflow validate` reports a refusal at the query's spec line; `verify` checks again before it runs the query and
then runs sqlglot's own rendering of the parsed tree (`checked_query`), so what runs is what was checked even where
a server would tokenize the text differently. The servers add their own walls (read-only transaction on the
source, a read-only DuckDB without file access): this guard is the part that knows about side-effecting functions.

sqlglot is imported only when a query is checked: `bankflow validate` of a spec without verify checks never pays
for it.
"""

from __future__ import annotations

import logging
from fnmatch import fnmatchcase
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlglot import exp

SOURCE_DIALECT = "postgres"  # source_sql runs on PostgreSQL

HINT = "a verify query is one SELECT that only reads tables: remove the part named"

# Function names (lower case, `*` wildcards) that are refused wherever they appear, by why. One list for every
# dialect: a Postgres name is meaningless on DuckDB and the other way round, so refusing both everywhere costs nothing.
DENIED: dict[str, tuple[str, ...]] = {
    "reaches another server": ("dblink*", "postgres_*", "mysql_*", "http_*", "pg_replication_origin_*"),
    "reads or writes files or the environment of the server": (
        "pg_read_file", "pg_read_binary_file", "pg_ls_*", "pg_stat_file", "pg_file_*", "lo_*", "pg_import_*",
        "read_*", "parquet_*", "sniff_csv", "glob", "getenv", "iceberg_*", "delta_*", "sqlite_*", "*_scan",
        "st_read", "st_read_*", "to_file", "infer_schema", "get_presigned_url", "build_*_url",
        "get_stage_location", "get_relative_path", "get_absolute_path", "duckdb_secrets", "which_secret", "secret",
        "load_aws_credentials",
    ),
    "runs SQL given as a string": (
        "query", "query_table", "query_to_xml*", "cursor_to_xml*", "table_to_xml*", "schema_to_xml*",
        "database_to_xml*", "json_execute_serialized_sql", "from_substrait*", "get_substrait*",
    ),
    "changes replication, sessions or server state": (
        "pg_drop_replication_slot", "pg_create_*", "pg_copy_*", "pg_logical_*", "pg_replication_slot_advance",
        "pg_terminate_backend", "pg_cancel_backend", "pg_signal_*", "pg_reload_conf", "pg_rotate_logfile",
        "pg_promote", "pg_switch_wal", "pg_backup_*", "pg_start_backup", "pg_stop_backup", "pg_wal_replay_*",
        "pg_stat_reset*", "pg_stat_statements_reset", "pg_log_*", "pg_notify", "pg_advisory*", "pg_try_advisory*",
        "set_config", "nextval", "setval", "next_value_for", "pg_sleep*", "txid_current*", "pg_current_xact_id*",
        "pg_prewarm", "brin_*", "gin_clean_pending_list", "pg_truncate_visibility_map", "pg_xlog_*",
        "pg_wal_*",
    ),
    "is a system function (they read or change the account's state)": ("system$*",),
}

# Functions sqlglot does not know (it parses them as anonymous calls) that only compute on their arguments. Any
# other unknown function is refused: it may be user-defined or a server internal with a side effect. Functions
# sqlglot knows (sum, coalesce, date_trunc, cast, …) need no entry here.
ALLOWED_FUNCTIONS = frozenset({
    # dates and times
    "age", "date_part", "date_bin", "to_date", "now", "epoch", "epoch_ms", "epoch_us", "make_date", "make_time",
    "make_timestamp", "make_timestamptz", "make_interval", "dateadd", "timestampadd", "timestampdiff", "timezone",
    "isfinite", "justify_days", "justify_hours", "justify_interval", "strftime", "strptime", "to_timestamp_tz",
    "to_timestamp_ntz", "try_to_date", "try_to_timestamp", "convert_timezone",
    # numbers
    "div", "div0", "gcd", "lcm", "factorial", "scale", "trim_scale", "width_bucket", "bit_count", "to_decimal",
    "to_numeric", "try_to_number", "try_to_decimal", "try_to_numeric", "zeroifnull", "nullifzero", "isnan",
    "isinf", "even", "fdiv", "fmod", "xor",
    # text
    "btrim", "ascii", "chr", "to_hex", "octet_length", "strlen", "len", "to_varchar", "sha256", "sha1",
    "md5_number", "hash", "quote_ident", "quote_literal", "quote_nullable", "regexp_matches", "regexp_split_to_array",
    "regexp_substr", "regexp_count", "nvl2", "equal_null", "iff", "editdist3", "levenshtein", "jaro_winkler_similarity",
    # json, arrays, structs
    "to_json", "to_jsonb", "json_build_object", "jsonb_build_object", "json_build_array", "jsonb_build_array",
    "json_typeof", "jsonb_typeof", "jsonb_extract_path_text", "jsonb_extract_path", "json_extract_path",
    "json_array_length", "jsonb_array_length", "jsonb_strip_nulls", "json_strip_nulls", "cardinality",
    "array_position", "array_remove", "array_cat", "array_dims", "array_upper", "array_lower", "list_value",
    "list_sort", "list_distinct", "list_aggregate", "struct_pack", "array_size", "object_construct", "parse_json",
    "try_parse_json", "typeof", "pg_typeof",
    # aggregates
    "every", "list_agg", "listagg", "arbitrary", "sum_if", "bit_and", "bit_or", "bit_xor", "product", "fsum",
    "sumkahan", "kahan_sum", "favg", "histogram", "entropy", "kurtosis", "skewness", "hash_agg", "booland_agg",
    "boolor_agg", "num_nulls", "num_nonnulls", "regr_slope", "regr_intercept", "regr_count", "regr_r2",
})


class QueryRefused(ValueError):
    """A verify query bankflow will not run: `reason` says which part, `hint` what to do."""

    def __init__(self, reason: str, hint: str = HINT):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def refusal(sql: str, dialect: str) -> QueryRefused | None:
    """Why `sql` may not run as a verify query on a `dialect` server (a sqlglot dialect name), or None."""
    try:
        checked_query(sql, dialect)
    except QueryRefused as refused:
        return refused
    return None


def checked_query(sql: str, dialect: str) -> str:
    """The query to run: sqlglot's rendering of `sql`'s one read-only SELECT; QueryRefused otherwise."""
    root = _parse(sql, dialect)
    for node in root.walk():
        reason = _node_refusal(node)
        if reason:
            raise QueryRefused(reason)
    return root.sql(dialect=dialect, comments=False)


def _parse(sql: str, dialect: str) -> exp.Expr:
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    sqlglot_log = logging.getLogger("sqlglot")  # "falling back to parsing as a Command": refused below anyway
    level = sqlglot_log.level
    sqlglot_log.setLevel(logging.ERROR)
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise QueryRefused(f"cannot be parsed as {dialect} SQL: {detail}",
                           "fix the SQL; bankflow runs only a query it can parse") from None
    finally:
        sqlglot_log.setLevel(level)
    if len(statements) != 1:
        raise QueryRefused(f"holds {len(statements)} statements, not one SELECT",
                           "keep exactly one SELECT (CTEs allowed), no ';'-separated statements")
    root = statements[0]
    if not isinstance(root, (exp.Select, getattr(exp, "SetOperation", exp.Union), exp.Subquery)):
        raise QueryRefused(f"is a {_statement_kind(root)} statement, not a SELECT", HINT)
    return root


def _statement_kind(node: exp.Expr) -> str:
    from sqlglot import exp

    if isinstance(node, exp.Command):  # what sqlglot could not parse: LOAD, CALL, EXPORT …
        return str(node.this).upper()
    return node.key.upper()


@cache
def _forbidden_nodes() -> tuple[type[Any], ...]:
    """sqlglot node types that change data or state (looked up by name: older sqlglot lacks some)."""
    from sqlglot import exp

    names = ("Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "AlterTable", "TruncateTable",
             "Command", "Copy", "LoadData", "Set", "Pragma", "Use", "Transaction", "Commit", "Rollback", "Into",
             "Lock", "Attach", "Detach", "Install", "Grant", "Revoke", "Analyze", "Cache", "Uncache", "Refresh",
             "Export", "Kill", "Declare", "Execute", "Put", "Get")
    return tuple(getattr(exp, name) for name in names if isinstance(getattr(exp, name, None), type))


def _node_refusal(node: exp.Expr) -> str | None:
    from sqlglot import exp

    if isinstance(node, _forbidden_nodes()):
        kind = "SELECT … INTO" if isinstance(node, exp.Into) else (
            "FOR UPDATE/SHARE" if isinstance(node, exp.Lock) else _statement_kind(node))
        return f"contains {kind}, which changes data or state: a verify query only reads"
    if isinstance(node, exp.Func):
        return _function_refusal(node)
    if isinstance(node, exp.Table):
        return _table_refusal(node)
    return None


@cache
def _anonymous() -> tuple[type[Any], ...]:
    """sqlglot's classes for calls of functions it does not know."""
    from sqlglot import exp

    return tuple(getattr(exp, name) for name in ("Anonymous", "AnonymousAggFunc") if hasattr(exp, name))


def _function_names(node: exp.Func) -> list[str]:
    if isinstance(node, _anonymous()):
        return [str(node.name).lower()]
    return [name.lower() for name in type(node).sql_names()]


def denied_reason(name: str) -> str | None:
    """Why the function `name` (any case) is on the deny list, or None."""
    lowered = name.lower()
    return next((why for why, patterns in DENIED.items()
                 if any(fnmatchcase(lowered, pattern) for pattern in patterns)), None)


def _function_refusal(node: exp.Func) -> str | None:
    names = _function_names(node)
    for name in names:
        why = denied_reason(name)
        if why:
            return f"calls {name}(), which {why}"
    if isinstance(node, _anonymous()) and names[0] not in ALLOWED_FUNCTIONS:
        return (f"calls {names[0]}(), which is not a function a verify query may call (user-defined functions "
                "and server functions outside bankflow.sqlguard.ALLOWED_FUNCTIONS are refused)")
    return None


PATH_CHARACTERS = frozenset("/\\:@*?~.'")


def _table_refusal(node: exp.Table) -> str | None:
    from sqlglot import exp

    target = node.this
    if target is None or isinstance(target, exp.Func):
        return None  # a table function: judged as a function
    if not isinstance(target, exp.Identifier):
        return f"reads {node.sql()!r}, which is a file, stage or URL, not a table"
    for part in node.parts:
        if isinstance(part, exp.Identifier) and PATH_CHARACTERS & set(part.name):
            return f"reads {part.name!r}, which looks like a file path or URL, not a table name"
    return None
