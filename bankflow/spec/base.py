"""What every spec model shares: strict keys, empty-means-unset, identifier checks and errors with hints.

Separate from `models.py` so each warehouse's and engine's config model (in its own folder) can build on it
without importing the whole spec.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
IDENTIFIER_HINT = "use lower-case letters, digits and underscores, starting with a letter or underscore (max 63)"
# Kafka topic / connector / slot names: what Kafka and Postgres accept without quoting games.
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}$")
LAKE_PLACEHOLDERS = ("table", "schema", "topic", "date", "partition")

# Words that cannot be an unquoted column or table name in Postgres (reserved and type/function-name keywords,
# from its kwlist.h), DuckDB (`duckdb_keywords()` reserved) or Snowflake (its reserved keywords). A source name
# that is one of them, or is anything but lower-case letters, digits and underscores, is not "plain": every
# system spells it exactly as the source does and it is always quoted (see `is_plain_name`).
RESERVED_WORDS = frozenset([
    "account", "all",
    "alter", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization", "between",
    "binary", "both", "by", "case", "cast", "check", "collate", "collation", "column", "concurrently",
    "connect", "connection", "constraint", "create", "cross", "current", "current_catalog", "current_date",
    "current_role", "current_schema", "current_time", "current_timestamp", "current_user", "database",
    "default", "deferrable", "delete", "desc", "describe", "distinct", "do", "drop", "else", "end", "except",
    "exists", "false", "fetch", "following", "for", "foreign", "freeze", "from", "full", "grant", "group",
    "gscluster", "having", "ilike", "in", "increment", "initially", "inner", "insert", "intersect", "into",
    "is", "isnull", "issue", "join", "lambda", "lateral", "leading", "left", "like", "limit", "localtime",
    "localtimestamp", "minus", "natural", "not", "notnull", "null", "of", "offset", "on", "only", "or", "order",
    "organization", "outer", "overlaps", "pivot", "pivot_longer", "pivot_wider", "placing", "primary",
    "qualify", "references", "regexp", "returning", "revoke", "right", "rlike", "row", "rows", "sample",
    "schema", "select", "session_user", "set", "show", "similar", "some", "start", "summarize", "symmetric",
    "system_user", "table", "tablesample", "then", "to", "trailing", "trigger", "true", "try_cast", "union",
    "unique", "unpivot", "update", "user", "using", "values", "variadic", "verbose", "view", "when", "whenever",
    "where", "window", "with",
])
# Postgres' NAMEDATALEN - 1: a longer name is truncated by the server, so two spec names could become one.
MAX_NAME_BYTES = 63
# A table name is also a lake directory, a file-name prefix and a glob pattern (bankflow/lake/writer.py).
_PATH_UNSAFE = frozenset("/\\*?[]")
SOURCE_NAME_HINT = ("write the name exactly as the source spells it, without SQL quotes (e.g. name: KycStatus or "
                    "name: order); bankflow quotes it wherever it reaches SQL")


class SpecValueError(ValueError):
    """A validation failure with a hint; `at` locates it below the validated model (e.g. ("primary_key",))."""

    def __init__(self, message: str, hint: str = "", at: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.hint = hint
        self.at = at


def check_identifier(value: str, what: str = "identifier") -> str:
    """Reject anything that is not a plain SQL identifier; quoting happens again where SQL is rendered."""
    if not IDENTIFIER_RE.match(value):
        raise SpecValueError(f"{what} {value!r} is not a valid identifier", IDENTIFIER_HINT)
    return value


def is_plain_name(name: str) -> bool:
    """True for a name every SQL dialect bankflow writes reads the same without quotes: lower-case letters,
    digits and underscores, not a reserved word. Each warehouse spells a plain name as it folds unquoted names
    (DuckDB as is, Snowflake upper case); any other name is kept exactly and always quoted."""
    return bool(IDENTIFIER_RE.match(name)) and name not in RESERVED_WORDS


def check_source_name(value: str, what: str = "name", *, path_safe: bool = False) -> str:
    """A table or column name as the source has it: any Postgres identifier (1..63 bytes), kept exactly.

    Refused: control characters (they would break every file bankflow writes), a double quote (SQL quotes are
    not part of the name: write it bare), and with `path_safe` (table names, which become lake paths) the
    characters a path or a glob would read as syntax.
    """
    if not value:
        raise SpecValueError(f"{what} is empty", SOURCE_NAME_HINT)
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise SpecValueError(f"{what} {value!r} is longer than {MAX_NAME_BYTES} bytes (Postgres truncates it)",
                             "use the name as the source catalog shows it (at most 63 bytes)")
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise SpecValueError(f"{what} {value!r} holds a control character", "a source name must be printable text")
    if '"' in value:
        raise SpecValueError(f"{what} {value!r} holds a double quote", SOURCE_NAME_HINT)
    if path_safe and (set(value) & _PATH_UNSAFE or value in (".", "..")):
        raise SpecValueError(f"{what} {value!r} holds one of / \\ * ? [ ] (or is . or ..): a table name is also a "
                             "directory and a file name in the lake", "rename the table in the source, or leave "
                             "it out of the spec")
    return value


def check_topic_name(value: str) -> str:
    """Kafka topic and connector names: what Kafka and Kafka Connect accept without quoting games."""
    if not TOPIC_RE.match(value):
        raise SpecValueError(f"{value!r} is not a valid name", "use only letters, digits, '.', '_' and '-' (max 249)")
    return value


Identifier = Annotated[str, Field(description="A plain SQL identifier: [a-z_][a-z0-9_]*")]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_unset(cls, data: object) -> object:
        """`${VAR:-}` interpolates to "": for optional fields that means "not set", not an empty value."""
        if isinstance(data, dict):
            optional = {f.alias or n for n, f in cls.model_fields.items() if f.default is None}
            return {k: v for k, v in data.items() if not (v == "" and k in optional)}
        return data
