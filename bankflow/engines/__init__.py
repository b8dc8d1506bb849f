"""The CDC engine registry: the spec's `cdc.engine` → that engine's config model, and through it the engine.

This is the only module that names the engines. Everything else asks the config the spec holds:
`spec.cdc.capabilities`, `spec.cdc.engine_for(resolved)` (see `bankflow.engines.base`).

To add an engine `acme`: a folder `bankflow/engines/acme/` with `config.py` (`AcmeCdc(CdcConfig)` with
`engine: Literal["acme"] = "acme"`, its fields and `capabilities`; `check()` for rules of its own) and
`engine.py` (`AcmeEngine(CdcEngine)`: `run`, and where it has them `artifacts`, `live_diff`, `status`,
`format_status`, `consume`); then add `AcmeCdc` to `CdcSpec` below.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Tag

from bankflow.engines.base import CdcConfig
from bankflow.engines.builtin.config import BuiltinCdc
from bankflow.engines.debezium.config import DebeziumCdc

DEFAULT_ENGINE = "builtin"

ENGINES: dict[str, type[CdcConfig]] = {
    model.model_fields["engine"].default: model for model in (BuiltinCdc, DebeziumCdc)
}


def _engine_of(value: Any) -> str:
    """The discriminator: `engine:` as written, the default when it is left out."""
    if isinstance(value, dict):
        engine = value.get("engine", DEFAULT_ENGINE)
        return engine if engine in ENGINES else str(engine)
    return str(getattr(value, "engine", DEFAULT_ENGINE))


# The spec's `cdc:` section: one of these, chosen by `engine` (default builtin).
CdcSpec = Annotated[
    Annotated[BuiltinCdc, Tag("builtin")] | Annotated[DebeziumCdc, Tag("debezium")],
    Discriminator(_engine_of),
]

__all__ = ["DEFAULT_ENGINE", "ENGINES", "BuiltinCdc", "CdcSpec", "DebeziumCdc"]
