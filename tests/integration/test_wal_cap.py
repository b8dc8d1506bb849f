"""The embedded source caps the WAL an idle slot retains (source.max_slot_wal_keep_size): `status` warns half way
to the cap and when the slot is past it, and once the cap invalidates the slot it exits 4 naming the fix; `apply`
fails with the same line (no traceback), and the fix (`down --drop-slot`, apply again) snapshots the tables again
(issue 15, item 3).

A real embedded PostgreSQL, its cap lowered from 64MB to 1MB while it runs (a reload, no restart); unrelated WAL
(another database, pg_switch_wal and a checkpoint: WAL segments are 16 MB) invalidates the idle slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bankflow.cli import main
from bankflow.source.embedded import EmbeddedPostgres, EmbeddedSource
from bankflow.spec.loader import load_spec

pytestmark = pytest.mark.integration

SPEC = """\
version: 1
name: walcap
state_dir: state
source: {{type: postgres, embedded: true, port: 0, database: shop, schema: shop,
         max_slot_wal_keep_size: {cap}}}
tables:
  - name: items
    primary_key: [id]
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: label, type: text}}
cdc: {{engine: builtin, topic_prefix: walcap, slot: walcap, publication: walcap}}
lake: {{url: "file://lake", layout: "{{table}}/date={{date}}"}}
warehouse: {{type: duckdb, path: state/wh.duckdb}}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Any]]:
    monkeypatch.chdir(tmp_path)

    def write(cap: str) -> str:
        path = tmp_path / "pipeline.yaml"
        path.write_text(SPEC.format(cap=cap), encoding="utf-8")
        return str(path)

    try:
        yield tmp_path, write
    finally:
        EmbeddedPostgres(tmp_path / "state" / "postgres").destroy()


def status(spec: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["status", spec, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_cap_invalidates_an_idle_slot_and_status_and_apply_say_what_to_do(
        project: tuple[Path, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _, write = project
    spec = write("64MB")
    server = EmbeddedSource(load_spec(spec))
    server.connect_kwargs(start=True)
    pg = server.server
    assert pg.execute("SHOW max_slot_wal_keep_size") == [("64MB",)]
    pg.execute("CREATE SCHEMA shop; CREATE TABLE shop.items (id bigint PRIMARY KEY, label text); "
               "INSERT INTO shop.items SELECT i, 'item ' || i FROM generate_series(1, 3) i", dbname="shop")
    assert main(["apply", spec]) == 0, capsys.readouterr().err
    code, document = status(spec, capsys)
    assert code == 0, document["attention"]
    assert document["source"]["slot"]["wal_status"] == "reserved" and document["warnings"] == []

    # ~40 MB of unrelated WAL: the idle slot keeps it, over half way to the cap: a warning
    pg.execute("CREATE TABLE IF NOT EXISTS junk (n int, pad text)")
    for _ in range(5):
        pg.execute("INSERT INTO junk SELECT i, repeat('x', 1000) FROM generate_series(1, 8000) i")
    code, document = status(spec, capsys)
    assert code == 0, document["attention"]
    slot = document["source"]["slot"]
    assert slot["retained_bytes"] > 40_000_000 and slot["retained_bytes"] > slot["safe_wal_size"] > 0
    assert document["warnings"] == [
        f"slot walcap retains {slot['retained_bytes']:,} bytes of WAL: {slot['safe_wal_size']:,} more and "
        "max_slot_wal_keep_size invalidates it (start the stream: bankflow run or apply)"], document["warnings"]

    # a smaller cap reaches the running server without a restart
    pid = pg.server_pid()
    spec = write("1MB")
    assert main(["apply", spec, "--stages", "source", "-q"]) == 0
    deadline = time.monotonic() + 10
    while pg.execute("SHOW max_slot_wal_keep_size") != [("1MB",)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pg.execute("SHOW max_slot_wal_keep_size") == [("1MB",)] and pg.server_pid() == pid

    # unrelated WAL while nothing reads the slot: a few 16 MB segments, then a checkpoint
    for attempt in range(30):
        for _ in range(4):
            pg.execute("INSERT INTO junk SELECT i, repeat('x', 100) FROM generate_series(1, 100) i")
            pg.execute("SELECT pg_switch_wal()")
        if attempt == 0:  # past the cap, before the checkpoint that removes the WAL: a warning, not attention
            code, document = status(spec, capsys)
            assert document["source"]["slot"]["wal_status"] == "unreserved"
            assert code == 0, document["attention"]
            assert document["warnings"] == [
                "slot walcap retains more WAL than max_slot_wal_keep_size allows: the next checkpoint may "
                "invalidate it (start the stream: bankflow run or apply)"], document["warnings"]
        pg.execute("CHECKPOINT")
        if pg.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walcap'") == [("lost",)]:
            break
    else:
        pytest.fail("the slot was never invalidated")
    pg.execute("INSERT INTO shop.items VALUES (4, 'after the loss')", dbname="shop")

    code, document = status(spec, capsys)
    assert code == 4
    lost = ("slot walcap was invalidated: WAL it needed was removed (max_slot_wal_keep_size); run `bankflow down "
            "--drop-slot` and apply again: the tables are snapshotted again")
    assert document["attention"] == [lost], document["attention"]
    assert document["source"]["slot"]["retained_bytes"] is None  # restart_lsn is gone with the WAL
    assert main(["status", spec]) == 4
    assert f"needs attention: {lost}" in capsys.readouterr().out

    # the stream cannot read a lost slot: one line naming the fix, no traceback
    assert main(["apply", spec, "--stages", "source,cdc"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "traceback in" not in err, err
    assert "[cdc      ] FAILED" in err and err.rstrip().endswith(lost), err  # the stage's error is the message

    # the fix: drop the slot, apply again; the tables are snapshotted again, row 4 with them
    assert main(["down", spec, "--drop-slot", "-q"]) == 0
    assert main(["apply", spec, "-q"]) == 0
    code, document = status(spec, capsys)
    assert code == 0, document["attention"]
    assert document["source"]["slot"]["wal_status"] == "reserved"
    assert document["warehouse"]["tables"]["items"]["rows"] >= 4
    ids = {r[0] for r in pg.execute("SELECT id FROM shop.items", dbname="shop")}
    assert ids == {1, 2, 3, 4}
