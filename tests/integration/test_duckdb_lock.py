"""DuckDB's file lock: another process (a person's read-only session) holding the warehouse file.

Real processes: a subprocess opens the file read-only and keeps it for a while. A load and a transform started
meanwhile wait for it (one warning naming its PID) and succeed; one held longer than the spec's
`lock_wait_seconds` fails with a clear error naming the process and how to read without blocking, no traceback.
After a transform, this process holds nothing: another process opens the file read-write.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bankflow.errors import StageError
from bankflow.spec.loader import ResolvedSpec, load_spec
from bankflow.stages.base import Progress, RunContext
from bankflow.stages.transform import Transformer
from bankflow.warehouses.duckdb import lock
from tests.fixtures import raw_banking
from tests.integration.test_load_duckdb import COLUMNS, rows, run_load, write_file, write_spec
from tests.integration.test_transform_cycles import banking, database, flush, one_deposit

pytestmark = pytest.mark.integration

duckdb = pytest.importorskip("duckdb")

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[3] == "ro")
con.execute("select 1").fetchall()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
print(repr(time.time()), flush=True)
"""

OPEN_READ_WRITE = "import sys, duckdb; duckdb.connect(sys.argv[1]).execute('create table if not exists probe(i int)')"


@contextmanager
def held(path: Path, seconds: float, mode: str = "ro") -> Iterator[subprocess.Popen[str]]:
    """Another process holding `path` (read-only by default) for `seconds`; its stdout's last line: when it let go."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds), mode], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def released_at(proc: subprocess.Popen[str]) -> float:
    out, _ = proc.communicate(timeout=60)
    return float(out.strip().splitlines()[-1])


def another_process_can_write(path: Path) -> bool:
    done = subprocess.run([sys.executable, "-c", OPEN_READ_WRITE, str(path)], capture_output=True, text=True,
                          timeout=60)
    return done.returncode == 0


def with_lock_wait(resolved: ResolvedSpec, seconds: float) -> ResolvedSpec:
    """The same spec file with `warehouse.lock_wait_seconds` set (DuckDB warehouses written in flow style or
    block style)."""
    text = resolved.path.read_text(encoding="utf-8")
    if "raw_schema: raw}" in text:
        text = text.replace("raw_schema: raw}", f"raw_schema: raw, lock_wait_seconds: {seconds}}}", 1)
    else:
        text = text.replace("  type: duckdb\n", f"  type: duckdb\n  lock_wait_seconds: {seconds}\n", 1)
    resolved.path.write_text(text, encoding="utf-8")
    return load_spec(resolved.path, env=resolved.env, environ={"BANKFLOW_STATE_DIR": str(resolved.state_dir)})


def test_the_holder_is_named_from_duckdbs_own_message(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    duckdb.connect(str(path)).close()
    with held(path, 30) as proc, pytest.raises(duckdb.IOException) as caught:
        duckdb.connect(str(path))
    assert lock.is_lock_conflict(caught.value)
    assert lock.holder_pid(str(caught.value)) == proc.pid
    assert lock.holder(str(caught.value)).startswith(f"PID {proc.pid} (")
    assert not lock.is_lock_conflict(RuntimeError("Catalog Error: Table with name x does not exist"))


def test_a_load_waits_for_a_read_only_session_and_succeeds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    resolved = write_spec(tmp_path, COLUMNS)
    write_file(resolved, "clients/date=2026-11-23/clients-a.parquet", rows(1, 3, 100))
    assert run_load(resolved) == {"files": 1, "rows": 3}
    write_file(resolved, "clients/date=2026-11-23/clients-b.parquet", rows(4, 2, 100))
    path = resolved.state_dir / "warehouse.duckdb"
    caplog.set_level(logging.WARNING, logger="bankflow.warehouses.duckdb.lock")
    with held(path, 3) as proc:
        assert run_load(resolved) == {"files": 1, "rows": 2}
        finished = time.time()
        let_go = released_at(proc)
    assert finished >= let_go  # it really waited for the session to end
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"held by PID {proc.pid}" in warnings[0]
    assert another_process_can_write(path)  # the load let go of the file


def test_a_transform_waits_and_then_lets_go_of_the_file(tmp_path: Path) -> None:
    resolved = banking(tmp_path / "state")
    log = raw_banking.RawBankingLog(seed=23)
    raw_banking.build_initial(log)
    flush(log, resolved)
    path = database(resolved)
    transformer = Transformer(resolved)
    ctx = RunContext(resolved, Progress(False))
    try:
        transformer.run(ctx)
        assert another_process_can_write(path)  # dbt-duckdb's connection was closed with the cycle
        one_deposit(log)
        changed = flush(log, resolved)
        with held(path, 3) as proc:
            result = transformer.run(ctx, changed)
            finished = time.time()
            let_go = released_at(proc)
        assert result.ok and result.rows > 0 and finished >= let_go
        assert result.details["lock_wait_seconds"] >= 1
        assert another_process_can_write(path)
        # a read-write holder in another process (e.g. someone's `duckdb` CLI) is waited for the same way
        one_deposit(log)
        changed = flush(log, resolved)
        with held(path, 2, mode="rw") as proc:
            assert transformer.run(ctx, changed).ok
            released_at(proc)
    finally:
        transformer.close()
    assert another_process_can_write(path)


def test_a_session_held_past_the_bound_is_a_clear_error(tmp_path: Path) -> None:
    """Through the CLI (no traceback, exit code non-zero) for a load, and through the Transformer."""
    (tmp_path / "load").mkdir()
    load_spec_ = with_lock_wait(write_spec(tmp_path / "load", COLUMNS), 1)
    write_file(load_spec_, "clients/date=2026-11-23/clients-a.parquet", rows(1, 3, 100))
    run_load(load_spec_)
    write_file(load_spec_, "clients/date=2026-11-23/clients-b.parquet", rows(4, 2, 100))
    with held(load_spec_.state_dir / "warehouse.duckdb", 60) as proc:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "bankflow", "apply", str(load_spec_.path), "--stages", "load"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        waited = time.monotonic() - started
        assert proc.poll() is None  # still holding: bankflow gave up, it did not outwait the session
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"held by PID {proc.pid}" in output and "still after 1 s" in output and "read_only=True" in output
    assert "Traceback" not in output
    assert waited < 30

    resolved = with_lock_wait(banking(tmp_path / "transform"), 1)
    log = raw_banking.RawBankingLog(seed=29)
    raw_banking.build_initial(log)
    flush(log, resolved)
    transformer = Transformer(resolved)
    try:
        pattern = r"transform: the DuckDB warehouse .* held by PID {pid} .*still after 1 s.*short read-only"
        with held(database(resolved), 60) as proc, pytest.raises(StageError, match=pattern.format(pid=proc.pid)):
            transformer.run(RunContext(resolved, Progress(False)))
    finally:
        transformer.close()
    assert another_process_can_write(database(resolved))
