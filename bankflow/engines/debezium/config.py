"""The spec's `cdc: {engine: debezium}`: the connector on Kafka Connect and how bankflow reaches it."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from bankflow.engines.base import CdcConfig, EngineCapabilities
from bankflow.errors import BankflowError
from bankflow.spec.base import SpecValueError, check_topic_name

if TYPE_CHECKING:
    from bankflow.engines.debezium.connect import ConnectClient
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
        signal_table=True,
    )

    engine: Literal["debezium"] = "debezium"
    connector: str = "bankflow"
    connect_url: str = Field("http://127.0.0.1:8083", description="Kafka Connect's REST API, without credentials "
                             "(they go in connect_user and connect_password)")
    connect_user: str | None = Field(None, description="HTTP basic auth user for Kafka Connect's REST API")
    connect_password: str | None = Field(None, json_schema_extra={"secret": True},
                                         description="HTTP basic auth password, e.g. ${CONNECT_PASSWORD}")
    connect_database_host: str | None = Field(
        None, description="the source host as Kafka Connect reaches it (e.g. a compose service name); "
        "default source.host")
    max_batch_size: int = Field(8192, ge=1)
    reregister_interval_s: float = Field(
        10.0, gt=0, description="apply --follow: how often to check that Kafka Connect still has the connector "
                                "(a restarted standalone worker forgets it) and register it again")
    poll_interval_ms: int = Field(10, ge=1)
    backfill_chunk_rows: int = Field(
        10_000, ge=1, le=1_000_000,
        description="rows per chunk of a backfill (tables new to the spec, `bankflow backfill`): Debezium's "
                    "incremental.snapshot.chunk.size")
    backfill_timeout_s: float = Field(
        3600.0, gt=0, description="how long a catch-up apply waits for Debezium to finish a backfill")

    @property
    def notification_topic(self) -> str:
        """Where Debezium reports backfill progress (`notification.sink.topic.name`)."""
        return f"{self.topic_prefix}._bankflow_notifications"

    @field_validator("connector")
    @classmethod
    def _connector(cls, value: str) -> str:
        return check_topic_name(value)

    @field_validator("connect_url")
    @classmethod
    def _connect_url(cls, value: str) -> str:
        # Never echo the value: it may hold a password.
        if "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise SpecValueError(
                "connect_url carries credentials (user:password@): they would be shown wherever the URL is and "
                "sent to the resolver as part of the host name",
                "remove them from the URL and set cdc.connect_user and cdc.connect_password "
                "(e.g. connect_password: ${CONNECT_PASSWORD}): bankflow sends them as HTTP basic auth")
        return value

    @model_validator(mode="after")
    def _connect_auth(self) -> DebeziumCdc:
        if self.connect_password and not self.connect_user:
            raise SpecValueError("connect_password is set without connect_user",
                                 "set cdc.connect_user too: HTTP basic auth needs both", at=("connect_password",))
        return self

    def connect_client(self, timeout: float = 10.0) -> ConnectClient:
        """The REST client for this spec's Kafka Connect, with its basic auth when the spec has credentials."""
        from bankflow.engines.debezium.connect import ConnectClient

        auth = (self.connect_user, self.connect_password or "") if self.connect_user else None
        return ConnectClient(self.connect_url, timeout=timeout, auth=auth)

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
