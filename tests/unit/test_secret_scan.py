"""The suite-wide scan (tests/conftest.py) finds a secret in any file the tests wrote, inputs excepted."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import leaked_secrets

SECRET = "scan-S3CRET-5e5e5e"


def test_the_scan_finds_a_secret_in_an_output_file_and_ignores_inputs(tmp_path: Path) -> None:
    (tmp_path / "state" / "logs").mkdir(parents=True)
    (tmp_path / "state" / "logs" / "run.traceback.txt").write_text(f"connect failed: password={SECRET}\n")
    (tmp_path / "state" / "report.json").write_text('{"ok": true}\n')
    (tmp_path / "pipeline.yaml").write_text(f"password: {SECRET}\n")  # the test's own input
    (tmp_path / ".env").write_text(f"PGPASSWORD={SECRET}\n")
    assert leaked_secrets(tmp_path, (SECRET,)) == [f"state/logs/run.traceback.txt: {SECRET}"]


def test_the_scan_reads_binary_files(tmp_path: Path) -> None:
    (tmp_path / "wh.duckdb").write_bytes(b"\x00\x01" + SECRET.encode() + b"\xff")
    assert leaked_secrets(tmp_path, (SECRET,)) == [f"wh.duckdb: {SECRET}"]
