"""What a CDC engine is to bankflow: a spec model that declares its capabilities and builds its engine.

- `CdcConfig`: the spec's `cdc:` mapping for one `engine` (pydantic, no client import): the fields every engine
  shares (slot, publication, topic prefix, snapshot mode, heartbeats) plus the variant's own, its
  `capabilities`, spec checks of its own (`check`) and `engine()`, which imports the implementation lazily.
- `CdcEngine`: the running side: the `cdc` stage's work (`run`), the artifacts it adds to a plan, the live
  comparison `plan` makes, its part of `status`, and Kafka consumers where it has them.

Callers read `capabilities` instead of asking which engine this is; the registry is `bankflow/engines/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from bankflow.errors import BankflowError
from bankflow.spec.base import SLOT_RE, SpecValueError, StrictModel, check_topic_name

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec
    from bankflow.spec.models import PipelineSpec
    from bankflow.stages.base import RunContext

SnapshotMode = Literal["initial", "no_data", "always", "never", "when_needed", "initial_only"]


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine does, as `validate`, `plan`, `status`, `consume` and the topology read it."""

    # Change events travel through Kafka topics: there is a consumer group, `consume` runs workers, and
    # `status` reports committed offsets and lag.
    uses_kafka: bool
    # The `cdc.snapshot_mode` values the engine implements.
    snapshot_modes: frozenset[str]
    # How a lake file's key encodes its source position (the topology documents it).
    file_key_scheme: str
    # Where the events come from, in the topology's words.
    event_source: str
    # How messages name the engine ("the built-in engine").
    label: str
    # The source password is handed to another service (which must then receive a reference, not the value).
    passes_source_password: bool = False
    # Why some snapshot modes are missing (said when a spec asks for one).
    snapshot_note: str = ""
    # Backfills go through a signal table on the source (Debezium's incremental snapshots): the source stage
    # creates or checks it and the publication lists it.
    signal_table: bool = False


@dataclass(frozen=True)
class ConfigIssue:
    """A problem an engine finds in the whole spec: `at` is the spec path (`("cdc", "snapshot_mode")`)."""

    at: tuple[str | int, ...]
    message: str
    hint: str = ""
    severity: str = "error"


@dataclass
class EngineRun:
    """What the `cdc` stage reports: events carried, lake files written, and the engine's own details."""

    events: int = 0
    files: int = 0
    details: dict[str, Any] = field(default_factory=dict)


class CdcEngine(ABC):
    """One engine running for one resolved spec."""

    # True when `run` reports, through RunContext.on_durable, the LSN before which every change of every table
    # is in durable lake files: a consistent cut across tables. The built-in engine knows it (it acknowledges
    # the slot there); Debezium's topics, one per table, have no common position.
    reports_durable_position: ClassVar[bool] = False

    def __init__(self, resolved: ResolvedSpec):
        self.resolved = resolved
        self.spec = resolved.spec

    @abstractmethod
    def run(self, ctx: RunContext) -> EngineRun:
        """The `cdc` stage: change events → Parquet in the lake, positions acknowledged only once durable."""

    def artifacts(self) -> dict[str, str]:
        """Files this engine adds to a plan (file name → text, secrets redacted)."""
        return {}

    def live_diff(self, timeout: float = 3.0) -> tuple[str | None, str | None]:
        """(diff, note) of the live deployment against the rendered one; (None, None) when there is none."""
        return None, None

    def status(self) -> dict[str, Any]:
        """This engine's part of `bankflow status` (merged into the status document): at least, per table,
        whether the stream covers it (since when, how) or a backfill is running (`bankflow.source.backfill`)."""
        from bankflow.source.backfill import coverage_status

        try:
            return {"coverage": coverage_status(self.resolved)}
        except Exception as exc:  # an unreadable lake: the lake part of status says so
            return {"coverage": {"error": self.resolved.redact(str(exc))}}

    @staticmethod
    def format_status(status: dict[str, Any]) -> list[str]:
        """Lines for `bankflow status` from this engine's part of the document."""
        lines = []
        for table, info in (status.get("coverage") or {}).items():
            if table == "error":
                lines.append(f"  coverage   {info}")
            elif info.get("state") == "covered":
                lines.append(f"  coverage   {table}: covered since {info.get('since_lsn')} ({info.get('how')})")
            elif info.get("state") == "backfilling":
                lines.append(f"  coverage   {table}: backfilling ({info.get('reason')}), {info.get('rows', 0):,} "
                             f"row(s) in {info.get('chunks', 0)} chunk(s) so far")
            else:
                lines.append(f"  coverage   {table}: not yet (the next run backfills it)")
        return lines

    @staticmethod
    def needs_attention(status: dict[str, Any]) -> list[str]:
        """What in this engine's part of the status document needs a person (status then exits non-zero)."""
        return []

    def consume(self, *, workers: int, follow: bool, progress: bool) -> dict[str, Any]:
        raise BankflowError(f"the {self.spec.cdc.engine} engine has no Kafka consumers: `consume` reads Kafka "
                            "topics, so use an environment whose cdc engine uses Kafka (e.g. engine: debezium)")

    def drop_slot(self, source_kwargs: dict[str, Any]) -> bool:
        """Drop the engine's replication slot (and forget its snapshot); False when there was none."""
        from bankflow.engines.builtin.reader import drop_slot

        return drop_slot(self.resolved, source_kwargs)


class CdcConfig(StrictModel):
    """The `cdc:` section: what every engine shares. Subclasses add `engine: Literal[...]` and their fields."""

    capabilities: ClassVar[EngineCapabilities]

    topic_prefix: str = "bankflow"
    slot: str = "bankflow"
    publication: str = "bankflow"
    snapshot_mode: SnapshotMode = "initial"
    heartbeat_interval_ms: int = Field(10000, ge=0, description="0 disables heartbeats")
    max_lag_bytes: int | None = Field(
        None, ge=0, description="`bankflow status` exits non-zero when the slot retains more WAL than this "
                                "(bytes between the server's position and what the pipeline has acknowledged)")

    @field_validator("topic_prefix")
    @classmethod
    def _topicish(cls, value: str) -> str:
        return check_topic_name(value)

    @field_validator("slot", "publication")
    @classmethod
    def _slot(cls, value: str) -> str:
        if not SLOT_RE.match(value):
            raise SpecValueError(f"{value!r} is not a valid replication slot or publication name",
                                 "use lower-case letters, digits and underscores (max 63)")
        return value

    @classmethod
    def engine_class(cls) -> type[CdcEngine]:
        """The engine's implementation (imported now, not with the spec)."""
        raise NotImplementedError

    def engine_for(self, resolved: ResolvedSpec) -> CdcEngine:
        return self.engine_class()(resolved)

    def describe(self) -> str:
        """One line for `plan`."""
        return f"{getattr(self, 'engine', '?')}: slot {self.slot}, publication {self.publication}"

    def check(self, spec: PipelineSpec, env_refs: dict[str, str]) -> list[ConfigIssue]:
        """Rules that need the whole spec, read off the capabilities (each engine may add its own)."""
        from bankflow.engines import ENGINES

        issues = []
        modes = self.capabilities.snapshot_modes
        if self.snapshot_mode not in modes:
            others = [name for name, model in ENGINES.items()
                      if self.snapshot_mode in model.capabilities.snapshot_modes]
            issues.append(ConfigIssue(
                ("cdc", "snapshot_mode"),
                f"snapshot_mode {self.snapshot_mode!r} is not supported by the {self.capabilities.label}: "
                + self.capabilities.snapshot_note,
                f"use {', '.join(sorted(modes))} with the {self.capabilities.label}"
                + (f", or set engine: {' or '.join(others)}" if others else "")))
        if (self.capabilities.passes_source_password and spec.source.password
                and "source.password" not in env_refs):
            issues.append(ConfigIssue(
                ("source", "password"), "the source password is written in the spec in clear text",
                "use ${VAR}: the engine's service then receives a reference to the variable, never the password",
                "warning"))
        return issues
