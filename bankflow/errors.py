"""Typed errors shared by the library and the CLI (the CLI prints exactly these messages)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEVERITIES = ("error", "warning", "note")


@dataclass(frozen=True)
class Issue:
    """One problem found in a spec, located at file:line:column.

    severity: "error" (the spec is invalid), "warning" (valid but risky) or "note" (valid; something to know
    before `apply`, e.g. a variable that is not set where the spec is validated).
    """

    file: str
    line: int | None
    column: int | None
    field: str
    message: str
    hint: str = ""
    severity: str = "error"  # or "warning", "note"

    @property
    def location(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"

    def format(self, *, one_line: bool = False) -> str:
        """`file:line:col: severity: field: message`, then the hint indented on the next line (or, with
        `one_line`, in parentheses on the same line: what the CLI prints, one line per issue)."""
        text = f"{self.location}: {self.severity}: {self.field}: {self.message}" if self.field else (
            f"{self.location}: {self.severity}: {self.message}"
        )
        if self.hint:
            hint = " ".join(self.hint.split()) if one_line else self.hint
            text += f" (hint: {hint})" if one_line else f"\n    hint: {hint}"
        return " ".join(text.splitlines()) if one_line else text

    def format_github(self) -> str:
        kind = {"error": "error", "note": "notice"}.get(self.severity, "warning")
        where = f"file={self.file}"
        if self.line is not None:
            where += f",line={self.line},col={self.column or 1}"
        message = (f"{self.field}: " if self.field else "") + self.message + (
            f" (hint: {self.hint})" if self.hint else "")
        return f"::{kind} {where},title=bankflow::{message.replace(chr(10), ' ')}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class BankflowError(Exception):
    """Base of every error bankflow raises on purpose; the CLI prints it without a traceback."""

    exit_code = 1


class UsageError(BankflowError):
    """A command-line option or argument is wrong; the message says which and what to give instead."""

    exit_code = 2


class SpecError(BankflowError):
    """The spec is invalid: carries every issue found, each with its location."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("\n".join(issue.format() for issue in issues))


class StageError(BankflowError):
    """A pipeline stage failed; the message says which stage and what to do."""


class ServiceError(BankflowError):
    """An embedded or remote service could not be started or reached."""
