"""The spec's `cdc: {engine: debezium}`: the connector on Kafka Connect and how bankflow reaches it."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from bankflow.engines.base import CdcConfig, EngineCapabilities
from bankflow.errors import BankflowError
from bankflow.spec.base import check_topic_name

if TYPE_CHECKING:
    from bankflow.engines.debezium.engine import DebeziumEngine
    from bankflow.spec.models import PipelineSpec


class DebeziumCdc(CdcConfig):
    capabilities: ClassVar[EngineCapabilities] = EngineCapabilities(
        uses_kafka=True,
        snapshot_modes=frozenset({"initial", "no_data", "always", "never", "when_needed", "initial_only"}),
        file_key_scheme="{layout}/{topic}-p{partition:05d}-{first_offset:020d}-{last_offset:020d}.parquet  "
                        "(Kafka partition and offset range)",
        event_source="kafka",
        label="Debezium engine",
        passes_source_password=True,
    )

    engine: Literal["debezium"] = "debezium"
    connector: str = "bankflow"
    connect_url: str = "http://127.0.0.1:8083"
    connect_database_host: str | None = Field(
        None, description="the source host as Kafka Connect reaches it (e.g. a compose service name); "
        "default source.host")
    max_batch_size: int = Field(8192, ge=1)
    poll_interval_ms: int = Field(10, ge=1)

    @field_validator("connector")
    @classmethod
    def _connector(cls, value: str) -> str:
        return check_topic_name(value)

    @classmethod
    def engine_class(cls) -> type[DebeziumEngine]:
        from bankflow.engines.debezium.engine import DebeziumEngine

        return DebeziumEngine

    def describe(self) -> str:
        return f"{super().describe()}, connector {self.connector} at {self.connect_url}"


def debezium_cdc(spec: PipelineSpec) -> DebeziumCdc:
    """The spec's `cdc:` as the Debezium model (the engine's own modules only run with it)."""
    if not isinstance(spec.cdc, DebeziumCdc):
        raise BankflowError(f"this needs cdc.engine: debezium (the spec's engine is {spec.cdc.engine})")
    return spec.cdc
