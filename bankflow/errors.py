"""Typed errors shared by the library and the CLI (the CLI prints exactly these messages)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Issue:
    """One problem found in a spec, located at file:line:column."""

    file: str
    line: int | None
    column: int | None
    field: str
    message: str
    hint: str = ""
    severity: str = "error"  # or "warning"

    @property
    def location(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"

    def format(self) -> str:
        text = f"{self.location}: {self.severity}: {self.field}: {self.message}" if self.field else (
            f"{self.location}: {self.severity}: {self.message}"
        )
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def format_github(self) -> str:
        kind = "error" if self.severity == "error" else "warning"
        where = f"file={self.file}"
        if self.line is not None:
            where += f",line={self.line},col={self.column or 1}"
        message = f"{self.field}: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")
        return f"::{kind} {where},title=bankflow::{message.replace(chr(10), ' ')}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class BankflowError(Exception):
    """Base of every error bankflow raises on purpose; the CLI prints it without a traceback."""

    exit_code = 1


class SpecError(BankflowError):
    """The spec is invalid: carries every issue found, each with its location."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("\n".join(issue.format() for issue in issues))


class StageError(BankflowError):
    """A pipeline stage failed; the message says which stage and what to do."""


class ServiceError(BankflowError):
    """An embedded or remote service could not be started or reached."""
