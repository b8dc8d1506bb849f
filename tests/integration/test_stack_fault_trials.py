"""Randomized fault trials on the real broker (Tansu, moto S3), at least ten each (issue 14, item 5): the
`consume` supervisor killed with -9 and a new consume started; a topic emptied or recreated under the consumer,
stopped or running. Each trial prints its seed. The lake is checked for each change exactly once (no duplicate
(key, _lsn, op)); an emptied topic must stop the consumer with a clear error, never be skipped silently.
(Kafka Connect killed with -9 under a running pipeline: `test_connect_kill_trials`.)"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bankflow.lake.filesystem import lake_filesystem
from bankflow.spec.loader import ResolvedSpec, load_spec
from tests.harness.s3 import S3Server
from tests.harness.tansu import TansuBroker
from tests.integration.test_kafka_consume import (
    _WORKERS_CHILD,
    ROOT,
    assert_exactly_once,
    make_events,
    produce,
    write_spec,
)

pytestmark = pytest.mark.integration

TRIALS = 10

_FOLLOW_CHILD = """
import sys
from bankflow.engines.debezium import consumer
from bankflow.spec.loader import load_spec
consumer.LOG_CHECK_EVERY = 0.5
result = consumer.consume_to_lake(load_spec(sys.argv[1]), follow=True)
print(result.stopped)
sys.exit(3 if result.stopped else 0)
"""


def lake_files(resolved: ResolvedSpec) -> int:
    fs, root = lake_filesystem(resolved)
    fs.invalidate_cache()
    return sum(1 for p in fs.find(root) if p.endswith(".parquet")) if fs.exists(root) else 0


@pytest.mark.timeout(900)
def test_supervisor_kill_9_then_a_new_consume_trials(tmp_path: Path, tansu_broker: TansuBroker,
                                                     s3_server: S3Server) -> None:
    from bankflow.engines.debezium.workers import run_workers

    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=100, partitions=2)
    events = make_events(TRIALS * 600, seed=seed % 1000)
    resolved = load_spec(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sent = 0
    for trial in range(TRIALS):
        more = rng.randint(300, 900)
        produce(tansu_broker, prefix, events[sent:sent + more], partitions=2)
        sent += more
        before = lake_files(resolved)
        proc = subprocess.Popen([sys.executable, "-c", _WORKERS_CHILD, str(path)], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            target = before + rng.randint(1, 4)
            deadline = time.monotonic() + 90
            while proc.poll() is None and lake_files(resolved) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
            assert proc.poll() is None, f"trial {trial} (seed {seed}): the follow run ended by itself"
            os.kill(proc.pid, signal.SIGKILL)  # the supervisor only: its workers must notice and go
            proc.wait()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"trial {trial} (seed {seed}): the workers outlived their supervisor by a minute")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    produce(tansu_broker, prefix, events[sent:], partitions=2)
    out = run_workers(resolved, workers=2, follow=False, progress=False)
    assert not out["failures"], out["failures"]
    assert_exactly_once(resolved, events)


def _recreate(broker: TansuBroker, topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    broker.create_topic(topic, partitions=1)


@pytest.mark.timeout(900)
def test_a_topic_emptied_under_the_consumer_never_goes_unnoticed_trials(
        tmp_path: Path, tansu_broker: TansuBroker, s3_server: S3Server) -> None:
    """Stopped or running, a new log shorter or longer than what was read: every trial stops with the error."""
    from bankflow.engines.debezium.consumer import consume_to_lake

    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    outcomes: list[tuple[str, str]] = []
    for trial in range(TRIALS):
        directory = tmp_path / f"trial{trial}"
        directory.mkdir()
        path, prefix = write_spec(directory, tansu_broker, s3_server, max_rows=50)
        topic = f"{prefix}.bank.accounts"
        events = make_events(rng.randint(100, 400), seed=trial)
        produce(tansu_broker, prefix, events)
        resolved = load_spec(path)
        read = sum(1 for t, _ in events if t == "accounts")
        later = [e for e in make_events(rng.choice([0, read // 2, read * 2]), seed=1000 + trial)
                 if e[0] == "accounts"]
        running = rng.random() < 0.5
        if running:  # a follow consumer in its own process, as `bankflow consume --follow` runs
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.Popen([sys.executable, "-c", _FOLLOW_CHILD, str(path)], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, text=True, start_new_session=True)
            try:
                deadline = time.monotonic() + 60
                while lake_files(resolved) < 2 and time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.05)
                time.sleep(1.0)  # caught up and committed
                _recreate(tansu_broker, topic)
                produce(tansu_broker, prefix, later)
                try:
                    out, _ = proc.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"trial {trial} (seed {seed}, running, {len(later)} new vs {read} read): the "
                                "consumer went on past an emptied topic")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            # librdkafka's metadata cache may crash the process when a topic it holds is deleted (seen with
            # Tansu); otherwise the consumer stops with the error. Either way the next consume must say why.
            assert proc.returncode != 0 or "emptied or recreated" in out, out
        else:
            assert consume_to_lake(resolved).stopped is None
            _recreate(tansu_broker, topic)
            produce(tansu_broker, prefix, later)
        stopped = consume_to_lake(resolved).stopped
        mode = "running" if running else "stopped"
        where = f"trial {trial} (seed {seed}, {mode}, {len(later)} new vs {read} read)"
        assert stopped is not None, f"{where}: not noticed"
        assert topic in stopped and "emptied or recreated" in stopped, f"{where}: {stopped}"
        assert "Way forward" in stopped, f"{where}: {stopped}"
        outcomes.append(("running" if running else "stopped", "longer" if len(later) > read else "shorter"))
    print(sorted(set(outcomes)))
