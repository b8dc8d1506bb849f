"""Kafka → lake on the real harness (Tansu broker, moto S3): exactly once through crashes and rebalances."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from bankflow.lake.deadletter import DeadLetterStore
from bankflow.lake.filesystem import lake_filesystem
from bankflow.spec.loader import ResolvedSpec, load_spec
from tests.harness.s3 import S3Server
from tests.harness.tansu import TansuBroker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("accounts", "transfers")


def write_spec(tmp_path: Path, broker: TansuBroker, s3: S3Server, *, max_rows: int = 1000,
               partitions: int = 1) -> tuple[Path, str]:
    """A debezium-engine spec on the broker and a fresh moto bucket; returns (path, topic prefix)."""
    tag = uuid.uuid4().hex[:8]
    bucket = f"lake-{tag}"
    s3.create_bucket(bucket)
    prefix = f"t{tag}"
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: consume_test
        state_dir: state
        source: {{type: postgres, database: bank, schema: bank}}
        tables:
          - name: accounts
            primary_key: [id]
            replica_identity: full
            columns:
              - {{name: id, type: bigint, nullable: false}}
              - {{name: owner, type: text, nullable: false}}
              - {{name: balance, type: "numeric(18,2)", nullable: false}}
              - {{name: updated_at, type: timestamptz, nullable: false}}
              - {{name: closed_at, type: timestamptz}}
          - name: transfers
            primary_key: [id]
            replica_identity: full
            columns:
              - {{name: id, type: bigint, nullable: false}}
              - {{name: account_id, type: bigint, nullable: false}}
              - {{name: amount, type: "numeric(18,2)", nullable: false}}
              - {{name: created_at, type: timestamptz, nullable: false}}
        cdc: {{engine: debezium, topic_prefix: {prefix}}}
        kafka: {{bootstrap_servers: "{broker.bootstrap_servers}", group: g{tag}, partitions: {partitions}}}
        lake:
          url: s3://{bucket}/lake
          s3_endpoint: {s3.endpoint_url}
          s3_key: test-access-key
          s3_secret: test-secret-key
          flush: {{max_rows: {max_rows}, max_bytes: 67108864, max_seconds: 600}}
        warehouse: {{type: duckdb, path: wh.duckdb}}
        """))
    return path, prefix


def _ts(us: int) -> str:
    """Debezium's timestamptz rendering: ISO with microseconds and Z."""
    seconds, micros = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def make_events(n: int, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """(table, Debezium event) pairs: snapshot reads, inserts, updates, deletes; LSNs strictly increasing."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    base_us = 1_767_225_600_000_000  # 2026-01-01
    live: dict[int, dict[str, Any]] = {}
    for i in range(n):
        lsn = 1_000_000 + 16 * i
        ts = base_us + 1_000 * i + 7
        source = {"lsn": lsn, "txId": 500 + i // 3, "ts_us": ts, "ts_ms": ts // 1000}
        if i % 4 == 3:
            row = {"id": i, "account_id": rng.randint(1, 50), "amount": f"{rng.randint(-10**6, 10**6) / 100:.2f}",
                   "created_at": _ts(ts)}
            out.append(("transfers", {"before": None, "after": row, "op": "c", "source": source}))
            continue
        choice = rng.random()
        if i < 20 or not live or choice < 0.4:
            row = {"id": i, "owner": f"owner-{i}", "balance": f"{rng.randint(0, 10**8) / 100:.2f}",
                   "updated_at": _ts(ts), "closed_at": None}
            live[i] = row
            out.append(("accounts", {"before": None, "after": row, "op": "r" if i < 20 else "c", "source": source}))
        elif choice < 0.85:
            key = rng.choice(list(live))
            before = live[key]
            row = {**before, "balance": f"{rng.randint(0, 10**8) / 100:.2f}", "updated_at": _ts(ts)}
            live[key] = row
            out.append(("accounts", {"before": before, "after": row, "op": "u", "source": source}))
        else:
            key = rng.choice(list(live))
            before = live.pop(key)
            before = {**before, "closed_at": _ts(ts)}
            out.append(("accounts", {"before": before, "after": None, "op": "d", "source": source}))
    return out


def produce(broker: TansuBroker, prefix: str, events: list[tuple[str, dict[str, Any]]],
            partitions: int = 1, extra: list[tuple[str, bytes | None]] = ()) -> None:  # type: ignore[assignment]
    """Batching producer; keyed by id so a row's history stays in one partition."""
    from confluent_kafka import Producer

    for table in TABLES:
        broker.create_topic(f"{prefix}.bank.{table}", partitions=partitions)
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 20,
                         "batch.size": 1 << 20, "acks": "all", "enable.idempotence": True})
    for table, event in events:
        row = event["after"] or event["before"]
        producer.produce(f"{prefix}.bank.{table}", key=str(row["id"]).encode(), value=orjson.dumps(event))
        producer.poll(0)
    for table, value in extra:
        producer.produce(f"{prefix}.bank.{table}", key=b"1", value=value)
    assert producer.flush(30) == 0


def lake_rows(resolved: ResolvedSpec) -> list[dict[str, Any]]:
    fs, root = lake_filesystem(resolved)
    fs.invalidate_cache()
    rows: list[dict[str, Any]] = []
    for path in sorted(fs.find(root)):
        if path.endswith(".parquet"):
            with fs.open(path, "rb") as handle:
                rows.extend(pq.read_table(handle).to_pylist())
    return rows


def expected_row(event: dict[str, Any]) -> tuple[Any, ...]:
    image = event["before"] if event["op"] == "d" else event["after"]
    return (image["id"], event["op"], event["source"]["lsn"])


def committed(resolved: ResolvedSpec, prefix: str, partitions: int = 1) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": resolved.spec.kafka.bootstrap_servers,
                         "group.id": resolved.spec.kafka.group, "enable.auto.commit": False})
    try:
        tps = [TopicPartition(f"{prefix}.bank.{t}", p) for t in TABLES for p in range(partitions)]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def assert_exactly_once(resolved: ResolvedSpec, events: list[tuple[str, dict[str, Any]]]) -> list[dict]:
    rows = lake_rows(resolved)
    seen = [(r["id"], r["_op"], r["_lsn"]) for r in rows]
    assert len(seen) == len(set(seen)), "duplicate rows in the lake"
    assert sorted(seen) == sorted(expected_row(e) for _, e in events)
    return rows


# ---------------------------------------------------------------- catch-up run


def test_consume_to_lake_exactly_once(tmp_path: Path, tansu_broker: TansuBroker, s3_server: S3Server) -> None:
    from bankflow.engines.debezium.consumer import consume_to_lake

    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=700)
    events = make_events(3000)
    produce(tansu_broker, prefix, events[:2000])
    produce(tansu_broker, prefix, events[2000:], extra=[("accounts", None), ("accounts", b"{not json")])
    resolved = load_spec(path)
    reports: list[dict[str, Any]] = []
    result = consume_to_lake(resolved, progress=reports.append).to_dict()

    assert result["events"] == 3001 and result["tombstones"] == 1 and result["dead_letters"] == 1
    assert len(result["files"]) == len(set(result["files"])) >= 5
    assert reports and reports[-1]["events"] == 3001
    rows = assert_exactly_once(resolved, events)
    # batches are cut at exactly max_rows, wherever that falls in a consume() batch; only each topic's last is short
    per_file = Counter(r["_file"] for r in rows)
    assert max(per_file.values()) == 700
    assert sum(1 for n in per_file.values() if n != 700) <= 2

    # values survive exactly: decimals, timestamptz microseconds, nulls, the image a delete carries
    by_key = {(r["id"], r["_op"], r["_lsn"]): r for r in rows}
    for table, event in events[::97]:
        image = event["before"] if event["op"] == "d" else event["after"]
        row = by_key[expected_row(event)]
        amount = "amount" if table == "transfers" else "balance"
        assert row[amount] == Decimal(image[amount])
        stamp = image["created_at" if table == "transfers" else "updated_at"]
        assert row["created_at" if table == "transfers" else "updated_at"].strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ") == stamp
        assert row["_tx_id"] == event["source"]["txId"]
        assert row["_file"].endswith(".parquet")

    fs, root = lake_filesystem(resolved)
    dead = DeadLetterStore(fs, root, resolved.spec.lake.dead_letter).read_all()
    assert len(dead) == 1
    n_accounts = sum(1 for t, _ in events if t == "accounts")
    assert dead[0]["position"] == {"partition": 0, "offset": n_accounts + 1}
    assert dead[0]["table"] == "accounts" and "malformed JSON" in dead[0]["reason"]
    assert dead[0]["event"] == "{not json"

    ends = {(f"{prefix}.bank.accounts", 0): n_accounts + 2,
            (f"{prefix}.bank.transfers", 0): len(events) - n_accounts}
    assert committed(resolved, prefix) == ends

    again = consume_to_lake(resolved).to_dict()
    assert again["events"] == 0 and again["files"] == []
    assert committed(resolved, prefix) == ends

    # files written but offsets not committed (a crash between the two): the replay rewrites the same keys
    rewind(resolved, list(ends))
    replay = consume_to_lake(resolved).to_dict()
    assert replay["orphans_replayed"] == len(result["files"])
    assert sorted(replay["files"]) == sorted(result["files"])
    assert_exactly_once(resolved, events)
    assert len(DeadLetterStore(fs, root, resolved.spec.lake.dead_letter).read_all()) == 1
    assert committed(resolved, prefix) == ends


def rewind(resolved: ResolvedSpec, partitions: list[tuple[str, int]]) -> None:
    """Commit offset 0 for the group, as if nothing had been committed after the files were written."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": resolved.spec.kafka.bootstrap_servers,
                         "group.id": resolved.spec.kafka.group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(t, p, 0) for t, p in partitions], asynchronous=False)
    finally:
        consumer.close()


# ---------------------------------------------------------------- crashes

_CHILD = """
import sys
from bankflow.spec.loader import load_spec
from bankflow.engines.debezium.consumer import consume_to_lake
consume_to_lake(load_spec(sys.argv[1]))
"""


def test_kill_9_mid_stream_replays_exactly_once(tmp_path: Path, tansu_broker: TansuBroker,
                                                s3_server: S3Server) -> None:
    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=150, partitions=2)
    events = make_events(4000, seed=11)
    for start in range(0, len(events), 500):
        produce(tansu_broker, prefix, events[start:start + 500], partitions=2)
    resolved = load_spec(path)
    rng = random.Random(3)
    fs, root = lake_filesystem(resolved)

    def files() -> int:
        fs.invalidate_cache()
        return sum(1 for p in fs.find(root) if p.endswith(".parquet")) if fs.exists(root) else 0

    kills = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], env=env, cwd=ROOT)
        if kills < 2:
            target = files() + rng.randint(1, 6)
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
    assert kills >= 1
    assert_exactly_once(resolved, events)


def test_two_workers_one_killed_exactly_once(tmp_path: Path, tansu_broker: TansuBroker,
                                             s3_server: S3Server) -> None:
    import multiprocessing

    from bankflow.engines.debezium.workers import run_workers

    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=100, partitions=2)
    events = make_events(6000, seed=5)
    for start in range(0, len(events), 1000):
        produce(tansu_broker, prefix, events[start:start + 1000], partitions=2)
    resolved = load_spec(path)
    fs, root = lake_filesystem(resolved)
    out: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: out.update(run_workers(resolved, workers=2, follow=False,
                                                                     progress=False)))
    runner.start()
    killed = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and runner.is_alive():
        fs.invalidate_cache()
        if fs.exists(root) and sum(1 for p in fs.find(root) if p.endswith(".parquet")) >= 4:
            children = multiprocessing.active_children()
            if children:
                killed = children[0].pid
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.02)
    runner.join(timeout=240)
    assert not runner.is_alive()
    assert killed is not None, "the workers finished before one could be killed"
    assert out["restarts"] >= 1
    assert_exactly_once(resolved, events)


def wait_for_lake_files(resolved: ResolvedSpec, proc: subprocess.Popen[str], at_least: int,
                        timeout: float = 90) -> None:
    """Until the follow run `proc` has written `at_least` Parquet files; it must still be running then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        fs, root = lake_filesystem(resolved)
        fs.invalidate_cache()
        if fs.exists(root) and sum(1 for p in fs.find(root) if p.endswith(".parquet")) >= at_least:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the follow run ended by itself"


_WORKERS_CHILD = """
import sys
from bankflow.engines.debezium.workers import run_workers
from bankflow.spec.loader import load_spec
out = run_workers(load_spec(sys.argv[1]), workers=2, follow=True, progress=False)
assert not out["failures"], out["failures"]
print(out["events"], out["dropped_partial"])
"""


def test_ctrl_c_stops_following_workers_cleanly(tmp_path: Path, tansu_broker: TansuBroker,
                                                s3_server: S3Server) -> None:
    """SIGINT to the whole process group (a Ctrl-C in the terminal): the supervisor stops its workers once,
    each flushes and commits its open batches, and the run exits 0 with every event in the lake."""
    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=150, partitions=2)
    events = make_events(2000, seed=17)
    produce(tansu_broker, prefix, events, partitions=2)
    resolved = load_spec(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WORKERS_CHILD, str(path)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_lake_files(resolved, proc, 10)  # the workers are streaming, with partial batches open
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    assert out.split() == [str(len(events)), "0"]
    assert_exactly_once(resolved, events)
    assert sum(committed(resolved, prefix, partitions=2).values()) == len(events)


# ---------------------------------------------------------------- poison messages

POISON_SPEC = """\
version: 1
name: poison_test
state_dir: state
source: {{type: postgres, database: bank, schema: bank}}
tables:
  - name: poison
    primary_key: [id]
    replica_identity: full
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: s, type: smallint}}
      - {{name: i, type: integer}}
      - {{name: d, type: date}}
      - {{name: v, type: "varchar(5)"}}
      - {{name: c, type: "char(2)"}}
      - {{name: amount, type: "numeric(18,2)"}}
      - {{name: created_at, type: timestamptz}}
cdc: {{engine: debezium, topic_prefix: {prefix}}}
kafka: {{bootstrap_servers: "{bootstrap}", group: g{tag}, partitions: 1}}
lake:
  url: s3://{bucket}/lake
  s3_endpoint: {endpoint}
  s3_key: test-access-key
  s3_secret: test-secret-key
  flush: {{max_rows: 1000, max_bytes: 67108864, max_seconds: 600}}
warehouse: {{type: duckdb, path: wh.duckdb}}
"""


def _poison_messages() -> list[tuple[str, bytes]]:
    """(family, value): one poison message per family the decoders once crashed on or let through, and good
    ones between them; the first one's commit time is the one no file key can date."""
    after = {"id": 0, "s": 1, "i": 1, "d": 19_000, "v": "abc", "c": "ab", "amount": "1.00",
             "created_at": "2026-01-01T00:00:00.000000Z"}

    def event(n: int, source: dict[str, Any] | None = None, **columns: Any) -> bytes:
        src = {"lsn": 1000 + n, "txId": 7, "ts_us": 1_767_225_600_000_000 + n, **(source or {})}
        return json.dumps({"before": None, "after": {**after, "id": n, **columns}, "op": "c",
                           "source": src}).encode()

    def nested(n: int, depth: int) -> bytes:
        return event(n)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"

    return [
        ("source.ts_us 2^62, first in the batch", event(0, {"ts_us": 2**62})),
        ("good", event(1)),
        ("smallint 70000", event(2, s=70_000)),
        ("integer 2^40", event(3, i=2**40)),
        ("date 2^40 days", event(4, d=2**40)),
        ("nesting 1000", nested(5, 1000)),
        ("nesting 2000", nested(6, 2000)),
        ("varchar(5) with 6 characters", event(7, v="abcdef")),
        ("char(2) with 3 characters", event(8, c="abc")),
        ("negative LSN", event(9, {"lsn": -1})),
        ("good", event(10)),
        ("source.ts_ms 2^60", event(11, {"ts_us": None, "ts_ms": 2**60})),
        ("numeric of 1000 digits", event(12, amount="9" * 1000)),
        ("good", event(13)),
    ]


def test_poison_messages_become_dead_letters_and_the_consumer_moves_past_them(
        tmp_path: Path, tansu_broker: TansuBroker, s3_server: S3Server) -> None:
    """A message that crashed decoding stopped the consumer at its offset on every restart."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from bankflow.engines.debezium.consumer import consume_to_lake

    tag = uuid.uuid4().hex[:8]
    s3_server.create_bucket(f"lake-{tag}")
    path = tmp_path / "spec.yaml"
    path.write_text(POISON_SPEC.format(prefix=f"p{tag}", bootstrap=tansu_broker.bootstrap_servers, tag=tag,
                                       bucket=f"lake-{tag}", endpoint=s3_server.endpoint_url))
    topic = f"p{tag}.bank.poison"
    tansu_broker.create_topic(topic, partitions=1)
    messages = _poison_messages()
    producer = Producer({"bootstrap.servers": tansu_broker.bootstrap_servers, "acks": "all"})
    for _family, value in messages:
        producer.produce(topic, key=b"1", value=value)
    assert producer.flush(30) == 0

    resolved = load_spec(path)
    result = consume_to_lake(resolved).to_dict()
    poison = [offset for offset, (family, _) in enumerate(messages) if family != "good"]
    assert result["events"] == len(messages) and result["dead_letters"] == len(poison)

    fs, root = lake_filesystem(resolved)
    dead = DeadLetterStore(fs, root, resolved.spec.lake.dead_letter).read_all()
    assert sorted(d["position"]["offset"] for d in dead) == poison
    assert all(d["table"] == "poison" and d["reason"] for d in dead)
    assert sorted(r["id"] for r in lake_rows(resolved)) == [1, 10, 13]

    consumer = Consumer({"bootstrap.servers": tansu_broker.bootstrap_servers, "group.id": f"g{tag}",
                         "enable.auto.commit": False})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    finally:
        consumer.close()
    assert tp.offset == len(messages)  # past every poison message
    again = consume_to_lake(resolved).to_dict()
    assert again["events"] == 0 and again["files"] == []


# ---------------------------------------------------------------- a supervisor killed with -9


def test_workers_die_with_their_supervisor_and_the_next_consume_is_exactly_once(
        tmp_path: Path, tansu_broker: TansuBroker, s3_server: S3Server) -> None:
    """kill -9 of the `consume` supervisor: its workers notice, flush and commit, and exit (they used to run on,
    and the next `consume` started a second set on the same partitions: duplicates in raw). Then a new consume
    catches up exactly once."""
    from bankflow.engines.debezium.workers import run_workers

    path, prefix = write_spec(tmp_path, tansu_broker, s3_server, max_rows=150, partitions=2)
    events = make_events(3000, seed=23)
    produce(tansu_broker, prefix, events, partitions=2)
    resolved = load_spec(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WORKERS_CHILD, str(path)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_lake_files(resolved, proc, 4)
        os.kill(proc.pid, signal.SIGKILL)  # the supervisor only, not its process group
        proc.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)  # someone of the supervisor's session still runs
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the workers outlived their supervisor by a minute")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out = run_workers(resolved, workers=2, follow=False, progress=False)
    assert not out["failures"], out["failures"]
    assert_exactly_once(resolved, events)
    assert sum(committed(resolved, prefix, partitions=2).values()) == len(events)


def test_a_partition_owned_by_another_worker_is_not_consumed_twice(tmp_path: Path) -> None:
    """Fencing: a second owner of a (topic, partition) waits for the lock, and gives up with a clear error."""
    from bankflow.engines.debezium.workers import partition_locks
    from bankflow.errors import BankflowError

    spec = tmp_path / "p.yaml"
    spec.write_text("version: 1\nname: locks\nstate_dir: state\nsource: {database: d, schema: s}\n"
                    "tables:\n  - {name: t, primary_key: [id], columns: [{name: id, type: bigint, nullable: false}]}\n"
                    "lake: {url: file://lake}\nwarehouse: {type: duckdb, path: wh.duckdb}\n")
    resolved = load_spec(spec)
    with partition_locks(resolved, [("x.s.t", 0)]):
        with (pytest.raises(BankflowError, match=r"x\.s\.t\[0\] is still owned by another consumer"),
              partition_locks(resolved, [("x.s.t", 0)], wait=0.5)):
            pass
        with partition_locks(resolved, [("x.s.t", 1)], wait=0.5):  # another partition: free
            pass
    released = threading.Event()
    with partition_locks(resolved, [("x.s.t", 0)], wait=0.5):  # released when its owner let go
        released.set()
    assert released.is_set()
