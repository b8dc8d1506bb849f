"""The pipeline spec: pydantic models for `pipelines/*.yaml`.

Variants that differ in shape carry a discriminator (`warehouse.type`, `cdc.engine`), the same way SQLMesh models
connections; each variant's model lives in its own folder (bankflow/warehouses/<type>/config.py,
bankflow/engines/<engine>/config.py) and the registries there list them. Every model forbids unknown keys so a
typo is an error with a "did you mean", not a silently ignored setting. Cross-field rules that need the whole
spec (topics vs prefix, dbt selectors) live in `checks.py`.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bankflow.engines import ENGINES, BuiltinCdc, CdcSpec
from bankflow.engines.debezium.config import DebeziumCdc
from bankflow.spec.base import (
    LAKE_PLACEHOLDERS,
    MAX_NAME_BYTES,
    TOPIC_RE,
    Identifier,
    SpecValueError,
    StrictModel,
    check_identifier,
    check_source_name,
)
from bankflow.spec.types import (
    CDC_COLUMN_NAMES,
    ENUM,
    INTEGER_KINDS,
    NUMERIC_CARRY_HINT,
    UNKEYABLE_KINDS,
    PgType,
    has_exact_image,
    parse_pg_type,
    parse_source_type,
)
from bankflow.warehouses import WAREHOUSES, WarehouseSpec
from bankflow.warehouses.duckdb.config import DuckDBWarehouse
from bankflow.warehouses.snowflake.config import SnowflakeWarehouse

__all__ = [
    "Airflow", "BuiltinCdc", "Column", "DbtStep", "DebeziumCdc", "DuckDBWarehouse", "Flush", "Generate",
    "Identifier", "Kafka", "Lake", "Monitor", "PipelineSpec", "PostgresSource", "RunLoop", "SnowflakeWarehouse",
    "SpecValueError", "Table", "Transform", "Verify", "VerifyCheck", "check_identifier",
]

# dbt's node selection syntax, one selector per item: `[@][N+]method:value[+N]`, joined by commas (intersection).
_DBT_ATOM = r"@?(?:\d*\+)?(?:[a-z_]+(?:\.[a-z_]+)*:)?[A-Za-z0-9_][A-Za-z0-9_.*/\-]*(?:\+\d*)?"
DBT_SELECTOR_RE = re.compile(rf"{_DBT_ATOM}(?:,{_DBT_ATOM})*")
S3_ENDPOINT_RE = re.compile(r"https?://(?:[^@/\s'\"\\]+@)?[A-Za-z0-9.-]+(?::\d{1,5})?/?")
RESERVED_PREFIX = "_bankflow"


def _not_bankflows(name: str, what: str) -> str:
    """bankflow's own objects (heartbeat table, ledger, verify's helper columns) start with `_bankflow`."""
    if name.lower().startswith(RESERVED_PREFIX):
        raise SpecValueError(f"{what} name {name!r} starts with {RESERVED_PREFIX!r}, which bankflow keeps for its "
                             "own tables and columns", f"rename the {what}")
    return name


# ---------------------------------------------------------------- source

class PostgresSource(StrictModel):
    """The source database. `embedded: true` lets bankflow run the server itself (the `local` environment)."""

    type: Literal["postgres"] = "postgres"
    host: str = "127.0.0.1"
    port: int = Field(5432, ge=0, le=65535, description="0 with embedded: pick a free port once and keep it")
    database: str = "postgres"
    user: str = "postgres"
    password: str = Field("", json_schema_extra={"secret": True})
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    schema_name: str = Field("public", alias="schema")
    embedded: bool = False
    manage: list[Literal["publication", "replica_identity", "heartbeat", "signal", "slot"]] = Field(
        default_factory=list,
        description="what bankflow may create or change on a source it does not run (default: nothing; it then "
                    "checks each prerequisite and stops with the list of what is missing, see plan's "
                    "source/setup.sql). The embedded source manages everything. Tables are never created.")
    max_slot_wal_keep_size: str = Field(
        "4GB", description="embedded source only: the most WAL a replication slot may retain before PostgreSQL "
                           "invalidates it (postgresql.conf max_slot_wal_keep_size; -1 = unlimited). An "
                           "invalidated slot is reported by status and stops cdc with what to do.")

    @field_validator("max_slot_wal_keep_size")
    @classmethod
    def _wal_size(cls, value: str) -> str:
        value = str(value).strip()
        if value != "-1" and not re.fullmatch(r"[1-9][0-9]*(kB|MB|GB|TB)", value):
            raise SpecValueError(f"max_slot_wal_keep_size {value!r} is not a size PostgreSQL reads",
                                 "write a whole number with kB, MB, GB or TB (e.g. 4GB), or -1 for unlimited")
        return value

    @field_validator("database", "user", "schema_name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return check_identifier(value)


# ---------------------------------------------------------------- tables

class Column(StrictModel):
    """A source column. `name` is the source's exact name (any Postgres identifier: `KycStatus`, `order`);
    `type` the source's type; `pg_type` what bankflow carries (the lake's and raw's type)."""

    name: str
    type: str = Field(description="Postgres type, e.g. bigint, numeric(18,2), timestamptz, text, uuid, jsonb; "
                                  "enum (with enum_type); numeric without precision (with carry_as)")
    nullable: bool = True
    identity: bool = Field(False, description="GENERATED BY DEFAULT AS IDENTITY (the source stage creates it)")
    references: str | None = Field(None, description="foreign key target as table.column")
    enum_type: str | None = Field(None, description="type: enum: the Postgres enum type's name (in the source "
                                                    "schema); carried as its label (text)")
    enum_values: list[str] | None = Field(None, alias="values",
                                          description="type: enum: its labels in order (the embedded source "
                                                      "creates the type from them)")
    carry_as: str | None = Field(None, description="type: numeric without an exact decimal image (no precision, "
                                                   "or above 38): text (exact, as a string) or numeric(p,s) "
                                                   "(values that do not fit become dead letters)")

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        check_source_name(value, "column name")
        if value.lower() in CDC_COLUMN_NAMES:
            raise SpecValueError(f"column name {value!r} is reserved for CDC metadata",
                                 f"rename the column: bankflow adds {', '.join(CDC_COLUMN_NAMES)} to every raw table")
        return _not_bankflows(value, "column")

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        return parse_source_type(value).sql

    @field_validator("enum_type")
    @classmethod
    def _enum_type(cls, value: str | None) -> str | None:
        return None if value is None else check_source_name(value, "enum_type")

    @field_validator("enum_values")
    @classmethod
    def _enum_values(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        for index, label in enumerate(value):
            if not label or len(label.encode("utf-8")) > MAX_NAME_BYTES or "\x00" in label:
                raise SpecValueError(f"enum label {label!r} must be 1..{MAX_NAME_BYTES} bytes without NUL",
                                     "list the labels as the source has them (SELECT enum_range(NULL::type))",
                                     at=(index,))
            if label in value[:index]:
                raise SpecValueError(f"enum label {label!r} is listed twice", "list each label once", at=(index,))
        return value

    @field_validator("carry_as")
    @classmethod
    def _carry_as(cls, value: str | None) -> str | None:
        if value is None:
            return value
        carried = parse_pg_type(value)
        if carried.kind not in ("text", "numeric"):
            raise SpecValueError(f"carry_as {value!r} is neither text nor numeric(p,s)", NUMERIC_CARRY_HINT)
        return carried.sql

    @field_validator("references")
    @classmethod
    def _references(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split(".")
        if len(parts) != 2:
            raise SpecValueError(f"references {value!r} must be table.column",
                                 "e.g. references: parent_table.id (a name holding '.' cannot be referenced: "
                                 "leave references out)")
        for part in parts:
            check_source_name(part, "references")
        return value

    @model_validator(mode="after")
    def _carried(self) -> Column:
        source = self.source_type
        if source.kind == ENUM:
            if self.enum_type is None:
                raise SpecValueError(f"column {self.name!r} is an enum without enum_type",
                                     "name the Postgres type, e.g. enum_type: order_status (and its labels in values:)",
                                     at=("type",))
            if self.carry_as is not None:
                raise SpecValueError("an enum is carried as its label: carry_as does not apply",
                                     "remove carry_as", at=("carry_as",))
        elif self.enum_type is not None or self.enum_values is not None:
            key = "enum_type" if self.enum_type is not None else "values"
            raise SpecValueError(f"{key} applies only to type: enum (the column is {self.type})",
                                 f"write type: enum, or remove {key}", at=(key,))
        if self.carry_as is not None and source.kind != "numeric":
            raise SpecValueError(f"carry_as applies only to numeric columns (the column is {self.type})",
                                 "remove carry_as", at=("carry_as",))
        if not has_exact_image(source) and self.carry_as is None:
            raise SpecValueError(f"column {self.name!r} is {self.type}: no decimal128 holds every value of it "
                                 "exactly, so bankflow will not guess how to carry it", NUMERIC_CARRY_HINT,
                                 at=("type",))
        if self.identity and self.pg_type.kind not in INTEGER_KINDS:
            raise SpecValueError(f"column {self.name!r} is {self.type}: an identity column must be an integer",
                                 "use bigint (or integer, smallint) for identity: true, or drop identity",
                                 at=("identity",))
        return self

    @cached_property
    def source_type(self) -> PgType:
        """The type as the source has it (`numeric` without precision, `enum`, `timestamptz(3)`)."""
        return parse_source_type(self.type)

    @cached_property
    def pg_type(self) -> PgType:
        """The type bankflow carries into the lake and raw: an enum as text, a numeric as its `carry_as`.
        Cached: converters ask it per value (the model is frozen, so it cannot go stale)."""
        if self.source_type.kind == ENUM:
            return PgType("text")
        return parse_pg_type(self.carry_as or self.type)


class Table(StrictModel):
    name: str
    columns: list[Column] = Field(min_length=1)
    primary_key: list[str] = Field(min_length=1)
    replica_identity: Literal["default", "full"] = Field(
        "full", description="full: updates and deletes carry the whole before-image"
    )
    topic: str | None = Field(None, description="Kafka topic; default {topic_prefix}.{schema}.{table}")
    raw_table: str | None = Field(None, description="raw table name in the warehouse; default the table name")
    schema_changes: Literal["freeze", "evolve"] = Field(
        "freeze",
        description="what the CDC stage does when the source table's columns change under a running pipeline. "
                    "freeze: stop at the first event in the new shape (exit != 0, nothing past it acknowledged); "
                    "update the spec and apply again to continue from there. evolve: carry the change (raw "
                    "gains added columns, widens retyped ones where the warehouse can, records drops in the "
                    "lake's schema history) and say so")

    @field_validator("name", "raw_table")
    @classmethod
    def _ident(cls, value: str | None) -> str | None:
        """The source's exact name (also a lake directory, so no path syntax in it)."""
        if value is None:
            return None
        return _not_bankflows(check_source_name(value, "table name", path_safe=True), "table")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not TOPIC_RE.match(value):
            raise SpecValueError(f"topic {value!r} is not a valid Kafka topic name",
                                 "use letters, digits, '.', '_' and '-' (max 249)")
        return value

    @model_validator(mode="after")
    def _keys_exist(self) -> Table:
        names = [c.name for c in self.columns]
        folded = [n.lower() for n in names]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise SpecValueError(f"table {self.name!r} declares column {name!r} more than once",
                                     "remove or rename one of the two columns", at=("columns", index, "name"))
            if folded[index] in folded[:index]:
                other = names[folded.index(folded[index])]
                raise SpecValueError(f"table {self.name!r} has columns {other!r} and {name!r}, which differ only "
                                     "in case: DuckDB and Snowflake's loads match column names ignoring case",
                                     "carry only one of them (leave the other out of the spec)",
                                     at=("columns", index, "name"))
        for index, key in enumerate(self.primary_key):
            if key not in names:
                raise SpecValueError(
                    f"primary key column {key!r} is not a column of table {self.name!r}",
                    f"use one of the table's columns: {', '.join(names)}", at=("primary_key", index),
                )
            if self.column(key).pg_type.kind in UNKEYABLE_KINDS:
                raise SpecValueError(f"primary key column {key!r} is {self.column(key).type}, which has no equality",
                                     "key on another column (jsonb, text or a number can be keys)",
                                     at=("primary_key", index))
            if key in self.primary_key[:index]:
                raise SpecValueError(f"primary key lists column {key!r} twice", "list each key column once",
                                     at=("primary_key", index))
        return self

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def raw_name(self) -> str:
        return self.raw_table or self.name


# ---------------------------------------------------------------- cdc, kafka

class Kafka(StrictModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    group: str = "bankflow"
    partitions: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(None, json_schema_extra={"secret": True})


# ---------------------------------------------------------------- lake

class Flush(StrictModel):
    """When a per-table batch becomes a Parquet file: whichever limit is reached first."""

    max_rows: int = Field(100_000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_seconds: float = Field(60.0, gt=0)


class Lake(StrictModel):
    url: str = Field(description="file://path or s3://bucket/prefix (relative file:// paths: from the spec's dir)")
    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint, e.g. MinIO")
    s3_region: str = "us-east-1"
    s3_key: str | None = Field(None, json_schema_extra={"secret": True})
    s3_secret: str | None = Field(None, json_schema_extra={"secret": True})
    layout: str = Field(
        "{table}/date={date}", description=f"path under url per file; placeholders: {', '.join(LAKE_PLACEHOLDERS)}"
    )
    flush: Flush = Field(default_factory=Flush)
    dead_letter: str = Field("_dead_letter", description="path under url for events that fail to convert")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not (value.startswith("file://") or value.startswith("s3://")):
            raise SpecValueError(f"lake url {value!r} must start with file:// or s3://",
                                 "use file://path (relative to the spec) or s3://bucket/prefix")
        scheme, rest = value.split("://", 1)
        if scheme == "s3" and re.search(r"['\"\\\s\x00-\x1f]", rest):
            raise SpecValueError(f"lake url {value!r} holds a quote, backslash, space or control character",
                                 "use letters, digits and - _ . / = in the bucket and prefix")
        if not rest.strip("/"):
            raise SpecValueError(f"lake url {value!r} names no {'bucket' if scheme == 's3' else 'directory'}",
                                 "use file://path (relative to the spec) or s3://bucket/prefix")
        if scheme == "s3" and (rest.startswith("/") or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
                                                                        rest.split("/", 1)[0])):
            raise SpecValueError(f"lake url {value!r} does not start with a valid bucket name",
                                 "write s3://bucket/prefix (bucket: 3-63 lower-case letters, digits, '.', '-')")
        return value.rstrip("/")

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not S3_ENDPOINT_RE.fullmatch(value):
            raise SpecValueError(f"s3_endpoint {value!r} is not an http(s)://host[:port] URL",
                                 "e.g. s3_endpoint: http://127.0.0.1:9000 (keys go in s3_key and s3_secret)")
        return value

    @field_validator("dead_letter")
    @classmethod
    def _dead_letter(cls, value: str) -> str:
        parts = value.strip("/").split("/")
        if value.startswith("/") or ".." in parts or not value.strip("/") or "\\" in value:
            raise SpecValueError(f"dead_letter {value!r} must be a relative path under the lake without '..'",
                                 "e.g. dead_letter: _dead_letter")
        return value.strip("/")

    @field_validator("layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        if value.count("{") != value.count("}") or re.search(r"\{[^}]*\{|\}[^{]*\}", value):
            raise SpecValueError(f"layout {value!r} has unbalanced braces",
                                 'each placeholder is {name}, e.g. layout: "{table}/date={date}"')
        for name in re.findall(r"\{([^}]*)\}", value):
            if name not in LAKE_PLACEHOLDERS:
                raise SpecValueError(
                    f"unknown placeholder {{{name}}} in layout",
                    "known placeholders: " + ", ".join("{" + p + "}" for p in LAKE_PLACEHOLDERS),
                )
        if "{table}" not in value and "{topic}" not in value:
            raise SpecValueError("layout must contain {table} or {topic} so tables never share a directory",
                                 'e.g. layout: "{table}/date={date}"')
        if value.startswith("/") or ".." in value.split("/"):
            raise SpecValueError("layout must be a relative path without '..'",
                                 "the layout is a path under lake.url, e.g. {table}/date={date}")
        return value.strip("/")

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]


# ---------------------------------------------------------------- warehouse

# The variants' tags (pydantic puts them in error locations) and the keys that choose them.
VARIANT_TAGS = frozenset(WAREHOUSES) | frozenset(ENGINES)
VARIANT_KEYS = ("type", "engine")


# ---------------------------------------------------------------- transform, generate, verify

class DbtStep(StrictModel):
    command: Literal["run", "snapshot", "test", "build", "seed"]
    select: list[str] = Field(default_factory=list)
    name: str | None = None

    @field_validator("select", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return value.split() if isinstance(value, str) else value

    @field_validator("select")
    @classmethod
    def _selectors(cls, value: list[str]) -> list[str]:
        """Each item becomes one dbt argument: it must be a selector, never an option (`--target-path=…`)."""
        for index, selector in enumerate(value):
            if not DBT_SELECTOR_RE.fullmatch(selector):
                raise SpecValueError(f"{selector!r} is not a dbt selector",
                                     "write node names, paths or method:value, with optional @, +, N+ and commas "
                                     "(e.g. staging, +marts, tag:daily, path:models/marts)", at=(index,))
        return value

    @property
    def label(self) -> str:
        return self.name or " ".join([self.command, *self.select])


class Transform(StrictModel):
    project_dir: str = Field(description="dbt project directory, relative to the spec's directory")
    target_schema: str = "analytics"
    threads: int = Field(2, ge=1)
    steps: list[DbtStep] = Field(min_length=1)

    @field_validator("target_schema")
    @classmethod
    def _ident(cls, value: str) -> str:
        return check_identifier(value)


class Generate(StrictModel):
    workload: str = Field(description="Python workload module, relative to the spec's directory")


class VerifyCheck(StrictModel):
    """A reconciliation: both queries must return the same rows (order-insensitive)."""

    name: str
    source_sql: str
    warehouse_sql: str


class Verify(StrictModel):
    checks: list[VerifyCheck] = Field(default_factory=list)


# ---------------------------------------------------------------- airflow

# Airflow's schedule presets (a cron expression is the other way to write a schedule).
AIRFLOW_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@once", "@continuous")
CRON_FIELD_RE = re.compile(r"[0-9A-Za-z*?/,#-]+")
DAG_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}")  # Airflow's dag_id characters, 250 at most


class Airflow(StrictModel):
    """The Airflow DAG `plan` renders (airflow/<dag_id>.py): the stages as tasks in order, then verify; or, with
    `mode: run`, one long-lived `bankflow run` task."""

    mode: Literal["stages", "run"] = Field("stages", description="stages: apply's stages as tasks on the schedule; "
                                                                 "run: one long-running `bankflow run` task")

    schedule: str = Field("@hourly", description="a cron expression (5 fields, e.g. '*/15 * * * *') or a preset: "
                                                 + ", ".join(AIRFLOW_PRESETS) + " (mode run: default @continuous)")
    dag_id: str | None = Field(None, description="the DAG's id and file name; default bankflow_<pipeline name>")
    retries: int = Field(0, ge=0, le=10, description="retries of a failed task, 5 minutes apart (not the cdc "
                                                     "task's: a second try would not see the dead letters of "
                                                     "the first, exit 4, and pass); mode run: default 8, "
                                                     "30 s doubling up to 30 min")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        value = " ".join(value.split())
        if value.startswith("@"):
            if value not in AIRFLOW_PRESETS:
                raise SpecValueError(f"schedule {value!r} is not an Airflow preset",
                                     f"use one of {', '.join(AIRFLOW_PRESETS)} or a cron expression")
            return value
        fields = value.split(" ")
        if len(fields) != 5 or not all(CRON_FIELD_RE.fullmatch(f) for f in fields):
            raise SpecValueError(f"schedule {value!r} is neither a cron expression of 5 fields nor a preset",
                                 "write minute hour day-of-month month day-of-week, e.g. schedule: '*/15 * * * *', "
                                 f"or a preset ({', '.join(AIRFLOW_PRESETS)})")
        return value

    @field_validator("dag_id")
    @classmethod
    def _dag_id(cls, value: str | None) -> str | None:
        if value is not None and not DAG_ID_RE.fullmatch(value):
            raise SpecValueError(f"dag_id {value!r} is not a valid Airflow dag_id",
                                 "use letters, digits, '_', '.' and '-' (max 250), starting with a letter, digit "
                                 "or '_'")
        return value

    @model_validator(mode="after")
    def _run_retries(self) -> Airflow:
        """Under @continuous (mode run's default) Airflow starts a new run as soon as one fails: with no retry,
        and so no backoff, a `bankflow run` that cannot start would be restarted at once, in a loop."""
        continuous = self.schedule == "@continuous" or "schedule" not in self.model_fields_set
        if self.mode == "run" and continuous and self.retries == 0 and "retries" in self.model_fields_set:
            raise SpecValueError("mode run on @continuous needs retries: Airflow starts a failed run again at "
                                 "once, so a run that cannot start would restart in a loop",
                                 "set retries: 1 or more (each try waits twice as long as the last, 30 s to 30 "
                                 "min), or remove it (mode run's default is 8)", at=("retries",))
        return self


# ---------------------------------------------------------------- run, monitor

DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | float | int) -> float:
    """Seconds from 30, 2.5, '500ms', '30s', '5m' or '1h'."""
    if isinstance(value, (int, float)):
        return float(value)
    match = DURATION_RE.fullmatch(value.strip())
    if not match:
        raise ValueError(value)
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


class RunLoad(StrictModel):
    """When `bankflow run` loads the lake's new files into raw: whichever limit is reached first, checked every
    `check_seconds`. Each load goes through the same ledger as `apply`'s load stage (each file exactly once)."""

    max_seconds: float = Field(1.0, gt=0, description="load pending files at least this often (seconds)")
    max_rows: int = Field(100_000, ge=1, description="or as soon as this many rows are pending")
    max_bytes: int = Field(64 * 1024 * 1024, ge=1, description="or as soon as this many bytes are pending")
    check_seconds: float = Field(0.25, gt=0, le=60, description="how often the lake is listed for new files")


class RunTransform(StrictModel):
    """When `bankflow run` transforms (the spec's dbt steps): on a cadence, and also when enough changes arrived.
    Never two at once, and never while a load runs; the stream goes on meanwhile."""

    every: str = Field("60s", description="an interval ('30s', '5m', '1h') or a cron expression of 5 fields "
                                          "('*/5 * * * *', UTC)")
    after_changes: int | None = Field(None, ge=1, description="also transform as soon as this many rows were "
                                                              "loaded into raw since the last transform")

    @field_validator("every")
    @classmethod
    def _every(cls, value: str) -> str:
        value = " ".join(str(value).split())
        fields = value.split(" ")
        if len(fields) == 5:
            if not all(CRON_FIELD_RE.fullmatch(f) for f in fields):
                raise SpecValueError(f"every {value!r} is not a cron expression",
                                     "write minute hour day-of-month month day-of-week, e.g. '*/5 * * * *'")
            return value
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise SpecValueError(f"every {value!r} is neither an interval nor a cron expression of 5 fields",
                                 "write an interval such as 30s, 5m or 1h, or a cron expression such as "
                                 "'*/5 * * * *'") from None
        if seconds <= 0:
            raise SpecValueError(f"every {value!r} is not a positive interval", "write e.g. 30s, 5m or 1h")
        return value

    @property
    def cron(self) -> str | None:
        return self.every if len(self.every.split(" ")) == 5 else None

    @property
    def interval_seconds(self) -> float | None:
        return None if self.cron else parse_duration(self.every)


class RunMetrics(StrictModel):
    """The Prometheus endpoint of `bankflow run` (text exposition format at /metrics)."""

    port: int | None = Field(9464, ge=0, le=65535, description="0 picks a free port; null turns it off")
    host: str = Field("127.0.0.1", description="the address to listen on (0.0.0.0 to be scraped from elsewhere)")


class RunLoop(StrictModel):
    """`bankflow run`: one long-running process keeping raw and the marts current while the stream runs."""

    load: RunLoad = Field(default_factory=RunLoad)
    transform: RunTransform = Field(default_factory=RunTransform)
    metrics: RunMetrics = Field(default_factory=RunMetrics)
    workers: int = Field(1, ge=1, le=64, description="consumer processes in the spec's group on Kafka "
                                                     "environments (`bankflow run --workers` overrides it; the "
                                                     "Airflow run task uses this)")


class Monitor(StrictModel):
    """Thresholds `bankflow status` checks (and exits 4 on), and `bankflow run` exports with its metrics. Unset
    means unchecked."""

    max_lag_seconds: float | None = Field(None, gt=0, description="source commit time of the newest change in "
                                                                  "the lake vs now, while the source has changes "
                                                                  "the lake has not")
    max_raw_age_seconds: float | None = Field(None, gt=0, description="how long raw has lacked what the lake or "
                                                                      "the source has (0 while nothing is "
                                                                      "pending: an idle source is no breach)")
    max_mart_age_seconds: float | None = Field(None, gt=0, description="time since the last successful transform")
    max_dead_letters: int | None = Field(None, ge=0, description="pending dead letters allowed (status already "
                                                                 "exits 4 on any; this raises that bar)")
    # WAL retained by the slot: cdc.max_lag_bytes (checked by status since before this section existed)


# ---------------------------------------------------------------- the spec

class PipelineSpec(StrictModel):
    version: Literal[1] = 1
    name: str
    description: str | None = None
    default_env: str | None = Field(None, description="environment used when --env is not given")
    state_dir: str = Field(".bankflow", description="runtime state (embedded services, ledger), relative to the spec")
    source: PostgresSource
    tables: list[Table] = Field(min_length=1)
    cdc: CdcSpec = Field(default_factory=BuiltinCdc)
    kafka: Kafka = Field(default_factory=Kafka)
    lake: Lake
    warehouse: WarehouseSpec
    transform: Transform | None = None
    generate: Generate | None = None
    verify: Verify = Verify()
    airflow: Airflow = Field(default_factory=Airflow)
    run: RunLoop = Field(default_factory=RunLoop)
    monitor: Monitor = Field(default_factory=Monitor)
    environments: dict[str, dict] = Field(
        default_factory=dict, description="overlays merged over the spec by `--env NAME`"
    )

    @field_validator("name")
    @classmethod
    def _ident(cls, value: str) -> str:
        return check_identifier(value, "pipeline name")

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: str) -> str:
        """It names files bankflow writes (the server's config among them): one line of printable text."""
        if re.search(r"[\x00-\x1f\x7f]", value) or not value.strip():
            raise SpecValueError(f"state_dir {value!r} is empty or holds a line break or control character",
                                 "use a plain directory path, e.g. state_dir: .bankflow")
        return value

    @model_validator(mode="after")
    def _names_and_enums(self) -> PipelineSpec:
        """Raw tables differing only in case are one table in DuckDB; the embedded source creates each enum
        type from its labels, so there they are needed (and one type has one list of labels)."""
        raw: dict[str, str] = {}
        labels: dict[str, list[str]] = {}
        for index, table in enumerate(self.tables):
            other = raw.setdefault(table.raw_name.lower(), table.raw_name)
            if other != table.raw_name:
                raise SpecValueError(f"raw tables {other!r} and {table.raw_name!r} differ only in case: DuckDB "
                                     "resolves names ignoring case", "give one of them a raw_table: name",
                                     at=("tables", index, "name"))
            for j, column in enumerate(table.columns):
                if column.enum_type is None:
                    continue
                at = ("tables", index, "columns", j)
                if column.enum_values is None and self.source.embedded:
                    raise SpecValueError(
                        f"column {column.name!r} is enum {column.enum_type!r} without values: the embedded "
                        "source creates the type and needs its labels",
                        "list them in order, e.g. values: [purchase, refund] (SELECT enum_range(NULL::"
                        f"{column.enum_type}) on the source shows them)", at=(*at, "enum_type"))
                known = labels.setdefault(column.enum_type, column.enum_values or [])
                if column.enum_values is not None and known and known != column.enum_values:
                    raise SpecValueError(f"enum {column.enum_type!r} is declared with two different lists of "
                                         "values", "give every column of this type the same values",
                                         at=(*at, "values"))
        return self

    def topic_for(self, table: Table) -> str:
        """Debezium's topic: `{prefix}.{schema}.{table}` with the table's name as is, except that it replaces
        each character Kafka refuses in a topic name with `_` (Debezium's `sanitizedTopicName`, per UTF-16 unit)."""
        if table.topic:
            return table.topic
        return re.sub(r"[^A-Za-z0-9._-]", lambda m: "_" * (2 if ord(m.group()) > 0xFFFF else 1),
                      f"{self.cdc.topic_prefix}.{self.source.schema_name}.{table.name}")

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)

    @cached_property
    def tables_by_topic(self) -> dict[str, Table]:
        return {self.topic_for(t): t for t in self.tables}
