"""Nothing outside pipelines/ and banking_dbt/ knows the banking tables: the library is generic.

`customers` and `accounts` (and `customer_id`, `account_id`) may not appear in library code at all;
`transactions` is also an ordinary word (the workload's `--transactions` option, `self.transactions`, database
transactions), so for it only table-like uses inside string literals are banned: the bare name
("transactions"), a qualified name (banking.transactions, transactions.id) or a derived name (stg_transactions).
Comments and docstrings are prose and are not scanned.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from tests.specs.support import REPO

ALWAYS = re.compile(r"\b(customers|accounts|customer_id|account_id)\b", re.IGNORECASE)
IN_STRINGS = re.compile(
    r"(^transactions$|\w\.transactions\b|\btransactions\.\w|\b(stg|raw|fct|fact|dim|int)_transactions\b|\btxn_type\b)",
    re.IGNORECASE | re.MULTILINE)
PROSE_BEFORE = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.ENCODING)


def string_value(token: str) -> str:
    """The text inside a string token (f-strings: their literal parts and expressions, as written)."""
    try:
        value = ast.literal_eval(token)
        return value if isinstance(value, str) else value.decode("latin-1")
    except (ValueError, SyntaxError):
        quote = re.match(r"^[A-Za-z]*('''|\"\"\"|'|\")", token)
        value = token[quote.end(): len(token) - len(quote.group(1))] if quote else token
        return re.sub(r"\{[^{}]*\}", "", value)  # f-string expressions are code (self.x), not text


def code_without_prose(source: str) -> list[tuple[int, str, bool]]:
    """(line, text, is_string) of every token except comments and docstrings; strings by their value."""
    out = []
    previous = tokenize.NEWLINE
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL):
            continue
        docstring = token.type == tokenize.STRING and previous in PROSE_BEFORE
        previous = token.type
        if docstring:
            continue
        if token.type == tokenize.STRING:
            out.append((token.start[0], string_value(token.string), True))
        elif token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            out.append((token.start[0], token.string, True))
        else:
            out.append((token.start[0], token.string, False))
    return out


def leaks(text: str, is_string: bool) -> list[str]:
    patterns = (ALWAYS, IN_STRINGS) if is_string else (ALWAYS,)
    return [m.group(0) for pattern in patterns for m in pattern.finditer(text)]


def scan(source: str) -> list[tuple[int, str]]:
    return [(line, hit) for line, text, is_string in code_without_prose(source) for hit in leaks(text, is_string)]


def library_files() -> list[Path]:
    files = sorted((REPO / "bankflow").rglob("*.py")) + sorted((REPO / "templates").rglob("*"))
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts]


def test_the_scanner_finds_table_names() -> None:
    sample = ('SQL = "select * from banking.transactions"\n'
              'T = ("customers", x.account_id, "transactions")  # a comment: accounts\n'
              'N = "stg_transactions"\nF = f"x {self.transactions!r}"\n')
    assert [hit for _, hit in scan(sample)] == ["g.transactions", "customers", "account_id", "transactions",
                                                "stg_transactions"]
    prose = ('"""Load customers."""\nrate = "business transactions per second"\nself.transactions = 1\n'
             'db_transactions = 2\nsnowflake_account = "account"\n')
    assert scan(prose) == []


@pytest.mark.parametrize("path", library_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_banking_tables_in_the_library(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        found = scan(source)
    else:
        found = [(n, hit) for n, line in enumerate(source.splitlines(), 1) for hit in leaks(line, True)]
    assert found == [], f"{path.relative_to(REPO)} names banking tables: {found}"
