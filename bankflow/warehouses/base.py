"""What a warehouse is to bankflow: a spec model that declares its capabilities, builds its dialect and connects.

The interface is small on purpose. Everything the rest of bankflow needs from a warehouse goes through:

- `WarehouseConfig`: the spec's `warehouse:` mapping for one `type` (pydantic, no client import). It declares
  `capabilities`, builds its `dialect()`, opens its adapter with `connect()` (the client library is imported
  only there) and renders its dbt profile output.
- `Dialect`: pure SQL text for that warehouse: identifier quoting, string literals, the Postgres → warehouse type
  map, raw-table DDL, setup statements and load statements, from Jinja templates in the variant's `templates/`.
- `WarehouseAdapter` (`bankflow.warehouses.adapter`): the live connection: load + ledger, column reconciliation.

Callers read `capabilities` instead of asking which warehouse this is; see `bankflow/warehouses/__init__.py` for
the registry and what to add for a new warehouse.
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from bankflow.spec.base import StrictModel, check_source_name, is_plain_name
from bankflow.spec.types import CDC_COLUMNS, PgType

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import Table, Transform
    from bankflow.warehouses.adapter import WarehouseAdapter

REDACTED = "****"
_TYPE_TEXT = re.compile(r"^([A-Z_]+)(?:\((\d+)(?:,(\d+))?\))?$")
FILES_PLACEHOLDER = "<files pending in the lake>"


@dataclass(frozen=True)
class WarehouseCapabilities:
    """What a warehouse can do, as the load stage, `plan`, `validate` and `verify` read it."""

    # Rows and their ledger entries commit in one transaction: a crash between the two cannot happen.
    atomic_ledger: bool
    # Days the warehouse itself remembers loaded files (a second guard when `atomic_ledger` is false); 0 = none.
    load_metadata_days: int
    # Lake URL schemes the warehouse can load from (`file` needs the warehouse on this machine).
    lake_schemes: frozenset[str]
    # At most this many files per load statement (Snowflake's FILES = (…) limit).
    files_per_statement: int = 1000
    # One process at a time has the warehouse open while it writes (DuckDB's file lock): `bankflow run` answers
    # `bankflow query` itself, so people can read while it loads and transforms (bankflow.query).
    one_process_at_a_time: bool = False

    def exactly_once(self) -> str:
        """How this warehouse loads each file once, in words (the load stage reports it)."""
        if self.atomic_ledger:
            return "ledger rows commit in the same transaction as the loaded rows"
        guard = (f"; the warehouse's own load metadata ({self.load_metadata_days} days) guards a crash in between"
                 if self.load_metadata_days else "")
        return "ledger rows are written after each load statement commits" + guard


class Dialect(ABC):
    """SQL text for one warehouse. Pure: no connection, so renderers and golden tests use it directly."""

    name: ClassVar[str]
    # Postgres type kind → this warehouse's type; `{p}`, `{s}`, `{n}` are filled from the PgType.
    type_map: ClassVar[Mapping[str, str]]

    def __init__(self, config: WarehouseConfig):
        self.config = config

    # -- names and literals
    @abstractmethod
    def quote(self, name: str) -> str:
        """One of bankflow's own identifiers (schema, database, stage, ledger …), validated and quoted as this
        warehouse resolves it."""

    def fold(self, name: str) -> str:
        """What this warehouse makes of an unquoted identifier (the case it stores it in)."""
        return name

    def spell(self, name: str) -> str:
        """A source table or column name as this warehouse stores it: a plain name (`is_plain_name`) as it
        folds an unquoted one, so dbt SQL can write it bare; any other name exactly as the source has it, so dbt
        writes it double-quoted exactly as in Postgres (`"KycStatus"`, `"order"`)."""
        return self.fold(name) if is_plain_name(name) else name

    def quote_name(self, name: str) -> str:
        """A source table or column name, spelled (`spell`) and quoted: one identifier whatever it holds."""
        return '"' + self.spell(check_source_name(name)).replace('"', '""') + '"'

    def qualify(self, *parts: str) -> str:
        return ".".join(self.quote(part) for part in parts)

    def string_literal(self, value: str) -> str:
        """A single-quoted literal (standard SQL: a quote is doubled, a backslash is a plain character)."""
        return "'" + value.replace("'", "''") + "'"

    @abstractmethod
    def raw_table(self, table: Table) -> str:
        """The qualified raw table of a spec table."""

    @abstractmethod
    def ledger_table(self) -> str:
        """The qualified table of bankflow's ledger of loaded files."""

    # -- types
    def column_type(self, pg_type: PgType) -> str:
        return pg_type.fill(self.type_map[pg_type.kind])

    def normalise_type(self, text: str) -> str:
        """A type as the catalog reports it, in the form `column_type` writes (for drift checks)."""
        return text.upper().replace(" ", "")

    def type_compatible(self, current: str, wanted: str) -> bool:
        current, wanted = self.normalise_type(current), self.normalise_type(wanted)
        return current == wanted or current.split("(")[0] == wanted.split("(")[0] == "VARCHAR"

    # Whether ALTER … SET DATA TYPE may raise a decimal's scale (DuckDB rewrites the column; Snowflake only
    # raises the precision of a NUMBER and refuses a scale change).
    widens_decimal_scale: ClassVar[bool] = False
    _DECIMALS: ClassVar[tuple[str, ...]] = ("DECIMAL", "NUMERIC", "NUMBER")
    _INTEGER_DIGITS: ClassVar[dict[str, int]] = {"SMALLINT": 5, "INTEGER": 10, "BIGINT": 19}

    def _number_shape(self, text: str) -> tuple[int, int] | None:
        """(integer digits, scale) of an exact number type as this warehouse writes it, else None."""
        match = _TYPE_TEXT.match(self.normalise_type(text))
        if not match:
            return None
        name, first, second = match.groups()
        if name in self._INTEGER_DIGITS:
            return self._INTEGER_DIGITS[name], 0
        if name in self._DECIMALS and first is not None:
            scale = int(second or 0)
            return int(first) - scale, scale
        return None

    def widens_in_place(self, current: str, wanted: PgType) -> bool:
        """Whether raw's `current` column type can become `wanted` by ALTER without losing a value."""
        target = self.column_type(wanted)
        if self.type_compatible(current, target):
            return True
        old, new = self._number_shape(current), self._number_shape(target)
        if old is None or new is None:
            return False
        if new[1] != old[1] and not self.widens_decimal_scale:
            return False
        return new[0] >= old[0] and new[1] >= old[1]

    def widen_column_statement(self, table: Table, column: str, wanted: PgType) -> str:
        return (f"ALTER TABLE {self.raw_table(table)} ALTER COLUMN {self.quote(column)} "
                f"SET DATA TYPE {self.column_type(wanted)}")

    # -- statements
    def render(self, template: str, **context: object) -> str:
        from bankflow.render.templating import render_package_template

        return render_package_template(type(self).__module__.rsplit(".", 1)[0], template, **context)

    def raw_table_ddl(self, table: Table) -> str:
        columns = [{"name": self.quote_name(name), "type": self.column_type(pg_type)}
                   for name, pg_type in raw_columns(table)]
        return self.render("raw_table.sql.j2", table=self.raw_table(table), columns=columns)

    def add_column_statement(self, table: Table, column: str, pg_type: PgType) -> str:
        return self.render("add_column.sql.j2", table=self.raw_table(table), column=self.quote_name(column),
                           type=self.column_type(pg_type))

    @abstractmethod
    def setup_statements(self, resolved: ResolvedSpec, *, reveal: bool) -> list[str]:
        """Schema (and stage, file format …) and raw tables, all idempotent."""

    @abstractmethod
    def load_statement(self, table: Table, files: Sequence[str] | None) -> str:
        """One load statement for `files` (as the adapter names them); None renders a placeholder list."""

    @abstractmethod
    def ledger_ddl(self) -> str:
        """CREATE TABLE IF NOT EXISTS for the ledger."""

    # Ledger columns added after its first release, as (name, type): `ledger_migrations` adds them to a ledger
    # created before them. `load_seq` is raw's commit position (each load chunk takes max + 1; old rows null =
    # 0), `raw_file` the `_file` value the file's rows carry in raw (what dbt joins the ledger on).
    ledger_added_columns: ClassVar[tuple[tuple[str, str], ...]] = (("load_seq", "BIGINT"), ("raw_file", "VARCHAR"))

    def ledger_migrations(self) -> list[str]:
        """ALTER TABLE … ADD COLUMN IF NOT EXISTS for each added ledger column (idempotent)."""
        return [f"ALTER TABLE {self.ledger_table()} ADD COLUMN IF NOT EXISTS {self.quote(name)} {kind}"
                for name, kind in self.ledger_added_columns]

    def file_list(self, files: Sequence[str] | None) -> str:
        return FILES_PLACEHOLDER if files is None else ", ".join(self.string_literal(f) for f in files)


def raw_columns(table: Table) -> list[tuple[str, PgType]]:
    """Source columns then CDC columns. Raw is a change log: every column nullable (deletes may carry keys only)."""
    return [(c.name, c.pg_type) for c in table.columns] + list(CDC_COLUMNS)


class WarehouseConfig(StrictModel):
    """The `warehouse:` section for one `type`. Subclasses add `type: Literal[...]` and their own fields."""

    capabilities: ClassVar[WarehouseCapabilities]
    raw_schema: str = "raw"

    def dialect(self) -> Dialect:
        raise NotImplementedError

    def connect(self, resolved: ResolvedSpec, *, read_only: bool = False) -> WarehouseAdapter | None:
        """The live adapter. `read_only`: open nothing that would be created (None when there is nothing yet)."""
        raise NotImplementedError

    def dbt_profile(self, resolved: ResolvedSpec, transform: Transform) -> dict[str, Any]:
        """The dbt output for this warehouse; secrets only as `env_var()` references."""
        raise NotImplementedError

    def dbt_environment(self, resolved: ResolvedSpec) -> dict[str, str]:
        """Variables the dbt profile refers to that bankflow must export (secrets written in the spec itself)."""
        return {}

    @contextlib.contextmanager
    def held_for_transform(self, resolved: ResolvedSpec, what: str = "transform") -> Iterator[float]:
        """Around a dbt cycle: whatever the warehouse needs held (a file lock) for its length, released after;
        yields the seconds spent waiting for it. Most warehouses need nothing."""
        yield 0.0

    def release_dbt(self) -> None:
        """Let go of what dbt's adapter keeps open between invocations (nothing, for most warehouses)."""

    def describe(self) -> str:
        """One line for `plan`."""
        return f"{getattr(self, 'type', '?')}, raw schema {self.raw_schema}"
