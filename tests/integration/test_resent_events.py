"""Changes Debezium produces twice (Kafka Connect restarted before it committed its offsets) are kept once: on the
real broker, the copies sit at later offsets of the same partition, and the lake (hence raw) holds each change
once, through consumer crashes and replays too (issue 14, item 5)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bankflow.lake.filesystem import lake_filesystem
from bankflow.spec.loader import load_spec
from tests.harness.s3 import S3Server
from tests.harness.tansu import TansuBroker
from tests.integration.test_kafka_consume import (
    _CHILD,
    ROOT,
    assert_exactly_once,
    make_events,
    produce,
    write_spec,
)

pytestmark = pytest.mark.integration


def test_a_resent_run_of_changes_reaches_the_lake_once(tmp_path: Path, tansu_broker: TansuBroker,
                                                       s3_server: S3Server) -> None:
    from bankflow.engines.debezium.consumer import consume_to_lake

    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=300, partitions=2)
    events = make_events(3000, seed=5)
    produce(tansu_broker, prefix, events[:1800], partitions=2)
    resolved = load_spec(path)
    first = consume_to_lake(resolved).to_dict()  # the originals are in the lake and committed
    assert first["resent_dropped"] == 0
    # Connect restarts from an offset it committed long before: 700 changes again, then the new ones
    produce(tansu_broker, prefix, events[1100:1800] + events[1800:], partitions=2)
    second = consume_to_lake(resolved).to_dict()
    assert second["resent_dropped"] == 700, second
    assert_exactly_once(resolved, events)


@pytest.mark.timeout(600)
def test_resent_changes_stay_single_through_consumer_kills(tmp_path: Path, tansu_broker: TansuBroker,
                                                           s3_server: S3Server) -> None:
    """Copies inside one run and across runs, the consumer killed at random points: every replay rewrites the
    same keys with the same rows (the filter's window is a function of the files before a batch)."""
    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=120, partitions=2)
    events = make_events(3000, seed=23)
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    stream = []
    at = 0
    while at < len(events):  # forward runs with rewinds of up to 300 changes in between
        step = rng.randint(200, 500)
        stream += events[at:at + step]
        at += step
        if at < len(events):
            stream += events[max(0, at - rng.randint(20, 300)):at]
    for start in range(0, len(stream), 500):
        produce(tansu_broker, prefix, stream[start:start + 500], partitions=2)
    resolved = load_spec(path)
    fs, root = lake_filesystem(resolved)

    def files() -> int:
        fs.invalidate_cache()
        return sum(1 for p in fs.find(root) if p.endswith(".parquet")) if fs.exists(root) else 0

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kills = 0
    for _attempt in range(10):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], env=env, cwd=ROOT)
        if kills < 3:
            target = files() + rng.randint(1, 8)
            deadline = time.monotonic() + 60
            while proc.poll() is None and files() < target and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        assert proc.wait(timeout=120) == 0
        break
    assert kills >= 1, f"seed {seed}"
    assert_exactly_once(resolved, events)
