"""Suite-wide fixtures, and one check over everything the tests wrote: no secret in clear outside its input."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.services"]

# Files that are the tests' inputs (a spec or .env a test writes holds the secret on purpose) or the embedded
# server's own password file: everything else under the test temp dir is output, logs or state.
INPUT_SUFFIXES = (".yaml", ".yml", ".env", ".pgpass")


def leaked_secrets(root: Path, secrets: tuple[str, ...]) -> list[str]:
    """`path: secret` for every file below `root` (inputs excepted) that holds one of `secrets` in clear."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.name.endswith(INPUT_SUFFIXES) or path.name == ".env":
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found.extend(f"{path.relative_to(root)}: {secret}" for secret in secrets if secret.encode() in data)
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_what_the_tests_write(tmp_path_factory: pytest.TempPathFactory) -> object:
    """After the whole session: scan every file the tests wrote under pytest's temp dir for the test secrets."""
    from tests.specs.support import SECRETS

    yield
    root = tmp_path_factory.getbasetemp()
    leaks = leaked_secrets(root, SECRETS)
    assert not leaks, "secrets in clear in files the tests wrote:\n" + "\n".join(leaks[:50])
