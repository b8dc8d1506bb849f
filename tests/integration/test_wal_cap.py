"""The embedded source caps the WAL an idle slot retains (source.max_slot_wal_keep_size), and says so when the cap
invalidates the slot: `status` exits 4 naming the fix, `apply` fails with one line naming it (no traceback), and
the fix (`down --drop-slot`, apply again) snapshots the tables again (issue 15, item 3).

A real embedded PostgreSQL with a 1MB cap; unrelated WAL (another database, pg_switch_wal and a checkpoint: WAL
segments are 16 MB, so the cap is passed as soon as one segment is recycled) invalidates the idle slot.
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
    spec = write("1MB")
    server = EmbeddedSource(load_spec(spec))
    server.connect_kwargs(start=True)
    pg = server.server
    assert pg.execute("SHOW max_slot_wal_keep_size") == [("1MB",)]
    pg.execute("CREATE SCHEMA shop; CREATE TABLE shop.items (id bigint PRIMARY KEY, label text); "
               "INSERT INTO shop.items SELECT i, 'item ' || i FROM generate_series(1, 3) i", dbname="shop")
    assert main(["apply", spec]) == 0, capsys.readouterr().err
    code, document = status(spec, capsys)
    assert code == 0, document["attention"]
    assert document["source"]["slot"]["wal_status"] == "reserved"

    # a changed cap reaches the running server without a restart
    pid = pg.server_pid()
    assert main(["apply", write("2MB"), "--stages", "source", "-q"]) == 0
    deadline = time.monotonic() + 10
    while pg.execute("SHOW max_slot_wal_keep_size") != [("2MB",)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pg.execute("SHOW max_slot_wal_keep_size") == [("2MB",)] and pg.server_pid() == pid
    spec = write("1MB")
    assert main(["apply", spec, "--stages", "source", "-q"]) == 0

    # unrelated WAL while nothing reads the slot: a few 16 MB segments, then a checkpoint
    pg.execute("CREATE TABLE IF NOT EXISTS junk (n int, pad text)")
    for _ in range(30):
        for _ in range(4):
            pg.execute("INSERT INTO junk SELECT i, repeat('x', 100) FROM generate_series(1, 100) i")
            pg.execute("SELECT pg_switch_wal()")
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
