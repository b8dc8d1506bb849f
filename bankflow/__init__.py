"""bankflow: declarative change-data-capture pipelines.

    import bankflow
    spec = bankflow.load_spec("pipelines/banking.yaml", env="local")
    artifacts = bankflow.render(spec)          # pure: connector JSON, warehouse SQL, topology, dbt profile
    bankflow.Pipeline(spec).apply()            # source → cdc → consume → load → transform

Only the light core is imported here; stages import their heavy dependencies when they run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The renderers' package is loaded before `render` is defined below: Python binds a subpackage as an attribute
# of its parent only when it is first imported, so the function keeps the name `bankflow.render`.
import bankflow.render as _renderers
from bankflow.errors import BankflowError, Issue, ServiceError, SpecError, StageError
from bankflow.spec.loader import ResolvedSpec, load_spec

if TYPE_CHECKING:
    from bankflow.pipeline import Pipeline
    from bankflow.render import Artifacts

__all__ = [
    "Artifacts",
    "BankflowError",
    "Issue",
    "Pipeline",
    "ResolvedSpec",
    "ServiceError",
    "SpecError",
    "StageError",
    "load_spec",
    "render",
]
__version__ = "0.1.0"


def render(spec: ResolvedSpec) -> Artifacts:
    """Every artifact rendered from a spec (secrets redacted), keyed by file name."""
    return _renderers.render_all(spec)


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from bankflow.pipeline import Pipeline

        return Pipeline
    if name == "Artifacts":
        from bankflow.render import Artifacts

        return Artifacts
    raise AttributeError(name)
