"""Postgres column types as the spec declares them, and their exact images in every system downstream.

One table of truth keeps money exact (numeric → decimal128, never a float) and timestamps exact to the
microsecond with their zone (timestamptz → timestamp[us, UTC]); each warehouse dialect maps the same kinds on.
Pure: no pyarrow import here, so `bankflow validate` stays fast; `bankflow.lake.arrow_schema` maps `arrow`
strings to pyarrow types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# kind -> Arrow type. Parametrised kinds ({p},{s},{n}) are filled in by `PgType.fill`. Each warehouse's dialect
# (bankflow/warehouses/<type>/dialect.py) maps the same kinds to its own types.
_KINDS: dict[str, str] = {
    "smallint": "int16",
    "integer": "int32",
    "bigint": "int64",
    "numeric": "decimal128({p},{s})",
    "real": "float32",
    "double precision": "float64",
    "boolean": "bool",
    "text": "string",
    "varchar": "string",
    "char": "string",
    "uuid": "string",
    "json": "string",
    "jsonb": "string",
    "bytea": "binary",
    "date": "date32",
    "time": "time64[us]",
    "timestamp": "timestamp[us]",
    "timestamptz": "timestamp[us, UTC]",
}
KINDS = tuple(_KINDS)
# A source column of a Postgres enum type: carried as its label (text); only the source DDL and contract see it.
ENUM = "enum"

_ALIASES = {
    "int2": "smallint",
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "decimal": "numeric",
    "float4": "real",
    "float8": "double precision",
    "double": "double precision",
    "bool": "boolean",
    "character varying": "varchar",
    "character": "char",
    "bpchar": "char",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "time without time zone": "time",
}

_TYPE_RE = re.compile(r"^\s*([a-z][a-z0-9 ]*?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")

MAX_CHAR_LENGTH = 10_485_760  # Postgres' limit for varchar(n) and char(n)
INTEGER_KINDS = ("smallint", "integer", "bigint")
# Kinds Postgres has no btree equality for: they cannot be (part of) a primary key.
UNKEYABLE_KINDS = ("json",)

SUPPORTED_TYPES = sorted(set(_KINDS) | set(_ALIASES))


class PgTypeError(ValueError):
    """A column type the spec declares that bankflow cannot carry exactly (`hint`: what to write instead)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class PgType:
    """A parsed Postgres column type: `numeric(18,2)` → kind numeric, precision 18, scale 2.

    For time kinds `precision` is the fractional digits of the source (None: 6, microseconds); bankflow
    carries microseconds whatever it is, so only the source DDL and the contract read it."""

    kind: str
    precision: int | None = None
    scale: int | None = None
    length: int | None = None

    @property
    def sql(self) -> str:
        """The type in Postgres DDL."""
        if self.kind == "numeric":
            return "numeric" if self.precision is None else f"numeric({self.precision},{self.scale})"
        if self.kind in TIME_KINDS and self.precision is not None:
            return f"{self.kind}({self.precision})"
        if self.kind in ("varchar", "char") and self.length is not None:
            return f"{self.kind}({self.length})"
        return self.kind

    def fill(self, template: str) -> str:
        """A type template with this type's precision, scale and length (`NUMBER({p},{s})` → `NUMBER(18,2)`)."""
        length = self.length if self.length is not None else (1 if self.kind == "char" else None)
        if length is None:
            template = template.replace("({n})", "")
        return template.format(p=self.precision, s=self.scale, n=length)

    @property
    def arrow(self) -> str:
        """The Arrow type, as a string `bankflow.lake.arrow_schema` understands."""
        return self.fill(_KINDS[self.kind])

    @property
    def is_exact_number(self) -> bool:
        return self.kind in ("smallint", "integer", "bigint", "numeric")


_ARRAY_RE = re.compile(r"(\[\s*\d*\s*\]\s*$)|(^\s*_)|(^\s*array\b)|(\barray\s*$)")
# timestamp(3) with time zone → timestamptz(3): Postgres writes the precision in the middle
_ZONED_RE = re.compile(r"^\s*(timestamp|time)\s*\(\s*(\d+)\s*\)\s*(with|without)\s+time\s+zone\s*$")
TIME_KINDS = ("time", "timestamp", "timestamptz")
MAX_TIME_PRECISION = 6  # microseconds: what bankflow carries (and Postgres' own maximum)
MAX_SOURCE_NUMERIC_PRECISION = 1000  # Postgres' limit for numeric(p,s)
EXACT_NUMERIC_PRECISION = 38  # decimal128, DECIMAL(38,s), NUMBER(38,s)
NUMERIC_CARRY_HINT = ("add carry_as: text (exact: the value is carried as its decimal text) or carry_as: "
                      "numeric(38,10) (a decimal; a value that does not fit it exactly becomes a dead letter)")
ARRAY_HINT = "leave the column out of the spec, or keep it as jsonb in the source (to_jsonb(col))"


def _normalise_text(text: str) -> str:
    lowered = re.sub(r"\s+", " ", text.strip().lower())
    if match := _ZONED_RE.match(lowered):
        kind, precision, zone = match.groups()
        if kind == "timestamp" and zone == "with":
            kind = "timestamptz"
        elif zone == "with":
            kind = "time with time zone"  # timetz: refused below as an unknown type
        return f"{kind}({precision})"
    return lowered


def _parse(text: str, max_precision: int) -> PgType:
    if _ARRAY_RE.search(text.strip().lower()):
        raise PgTypeError(f"type {text!r} is an array: bankflow cannot carry array columns exactly yet", ARRAY_HINT)
    match = _TYPE_RE.match(_normalise_text(text))
    if not match:
        raise PgTypeError(f"unknown column type {text!r}", f"use one of: {', '.join(SUPPORTED_TYPES)}")
    name, first, second = match.group(1).strip(), match.group(2), match.group(3)
    name = re.sub(r"\s+", " ", name)
    kind = _ALIASES.get(name, name)
    if kind not in _KINDS:
        raise PgTypeError(f"unknown column type {text!r}", f"use one of: {', '.join(SUPPORTED_TYPES)}")
    if kind == "numeric":
        return _numeric(text, first, second, max_precision)
    if kind in ("varchar", "char"):
        if second is not None:
            raise PgTypeError(f"type {text!r} takes one length", f"e.g. {kind}(3)")
        if first is not None and not 1 <= int(first) <= MAX_CHAR_LENGTH:
            raise PgTypeError(f"type {text!r}: a length must be 1..{MAX_CHAR_LENGTH} (Postgres' limit)",
                              f"e.g. {kind}(255), or text for unbounded strings")
        return PgType(kind, length=int(first) if first is not None else None)
    if kind in TIME_KINDS and first is not None and second is None:
        if not 0 <= int(first) <= MAX_TIME_PRECISION:
            raise PgTypeError(f"type {text!r}: a precision must be 0..{MAX_TIME_PRECISION}",
                              f"write {kind} (microseconds, what bankflow carries) or {kind}(0..6)")
        # (6) is what an unconstrained one carries: one spelling for both, so they compare equal
        return PgType(kind, precision=None if int(first) == MAX_TIME_PRECISION else int(first))
    if first is not None:
        raise PgTypeError(f"type {text!r} takes no parameters", f"write {kind} without (…)")
    return PgType(kind)


def _numeric(text: str, first: str | None, second: str | None, max_precision: int) -> PgType:
    if first is None:
        if max_precision <= EXACT_NUMERIC_PRECISION:
            raise PgTypeError(f"type {text!r} needs a precision and scale: an unconstrained numeric has no exact "
                              "decimal image downstream",
                              "write numeric(precision,scale), e.g. numeric(18,2); for a source column that is "
                              "numeric without precision write type: numeric and " + NUMERIC_CARRY_HINT)
        return PgType("numeric")
    precision, scale = int(first), int(second or 0)
    if not 1 <= precision <= max_precision:
        if max_precision <= EXACT_NUMERIC_PRECISION:
            raise PgTypeError(f"numeric precision must be 1..38 (got {precision}) to fit decimal128",
                              "use a precision of at most 38, e.g. numeric(38,10); for a wider source column "
                              f"keep type: {text} and " + NUMERIC_CARRY_HINT)
        raise PgTypeError(f"numeric precision must be 1..{max_precision} (got {precision})",
                          "Postgres' numeric(p,s) takes a precision of 1..1000")
    if not 0 <= scale <= precision:
        raise PgTypeError(f"numeric scale {scale} exceeds precision {precision}",
                          "the scale counts digits after the point and cannot exceed the precision")
    return PgType("numeric", precision=precision, scale=scale)


def parse_pg_type(text: str) -> PgType:
    """Parse a type bankflow carries (lake, raw) as written in a spec; reject what would lose precision.

    `numeric` needs an explicit precision (≤ 38) and scale: an unconstrained numeric has no exact Arrow or
    Snowflake image, and guessing one is how money turns into floats (a spec column declares such a source
    column with `carry_as`, see `parse_source_type`). Times keep microseconds: `timestamptz(3)` is accepted
    and carried as timestamp[us].
    """
    return _parse(text, EXACT_NUMERIC_PRECISION)


def parse_source_type(text: str) -> PgType:
    """A column's type as the source has it: also `numeric` without precision or wider than 38 (the spec
    column then says how it is carried, `carry_as`) and `enum` (a Postgres enum type, carried as its label)."""
    if text.strip().lower() == ENUM:
        return PgType(ENUM)
    return _parse(text, MAX_SOURCE_NUMERIC_PRECISION)


def has_exact_image(pg_type: PgType) -> bool:
    """False for a source numeric that no decimal128 holds exactly (unconstrained, or precision above 38)."""
    return pg_type.kind != "numeric" or (pg_type.precision is not None
                                         and pg_type.precision <= EXACT_NUMERIC_PRECISION)


# CDC metadata columns every raw table carries after the source columns (name, PgType).
CDC_COLUMNS: tuple[tuple[str, PgType], ...] = (
    ("_op", PgType("varchar", length=1)),
    ("_lsn", PgType("bigint")),
    ("_tx_id", PgType("bigint")),
    ("_source_ts", PgType("timestamptz")),
    ("_file", PgType("text")),
)
CDC_COLUMN_NAMES = tuple(name for name, _ in CDC_COLUMNS)
