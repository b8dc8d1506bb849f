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
