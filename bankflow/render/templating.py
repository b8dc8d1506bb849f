"""The Jinja2 environment over the repository's `templates/` directory."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import jinja2


def templates_dir() -> Path:
    """`BANKFLOW_TEMPLATES`, else `templates/` beside the package (the repository layout)."""
    override = os.environ.get("BANKFLOW_TEMPLATES")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "templates"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    # SQL and YAML, not HTML: no autoescape; every value reaching SQL is quoted by the caller.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(name: str, **context: object) -> str:
    return environment().get_template(name).render(**context)
