"""Kafka → Parquet throughput: bankflow's consumer against a seed-style consumer, on a local Tansu broker.

    .venv/bin/python benchmarks/bench_kafka_consume.py --events 1000000

(a) `consume_to_lake` into a file:// lake; (b) the seed style: per-message `json.loads`, keep `payload.after`,
a pandas DataFrame per 50 records, one Parquet file per flush. (b) runs on a subset (`--seed-events`) and is
extrapolated as a rate. Figures: events/s (wall), events/s per core (CPU time from getrusage), peak RSS.

The events are produced by a child process, so the peak RSS is the consumer's alone. bankflow is pinned to the
partition (static assignment, as `run_workers` does) and the seed consumer's clock starts at its first message,
so neither figure includes Tansu's JoinGroup wait (half the session timeout); `--subscribe` uses the group
instead. `--profile FILE` writes a cProfile of the bankflow run. The load average is printed with every figure:
the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bankflow.services.tansu import TansuBroker
from bankflow.spec.loader import load_spec

SPEC = """\
version: 1
name: bench
state_dir: state
source: {{type: postgres, database: bank, schema: banking}}
tables:
  - name: transactions
    primary_key: [id]
    replica_identity: full
    columns:
      - {{name: id, type: bigint, nullable: false}}
      - {{name: account_id, type: bigint, nullable: false}}
      - {{name: txn_type, type: text, nullable: false}}
      - {{name: amount, type: "numeric(18,2)", nullable: false}}
      - {{name: related_account_id, type: bigint}}
      - {{name: status, type: text, nullable: false}}
      - {{name: created_at, type: timestamptz, nullable: false}}
cdc: {{engine: debezium, topic_prefix: {prefix}}}
kafka: {{bootstrap_servers: "{bootstrap}", group: {group}}}
lake:
  url: file://{lake}
  flush: {{max_rows: 200000, max_bytes: 134217728, max_seconds: 60}}
warehouse: {{type: duckdb, path: wh.duckdb}}
"""


def transaction_event(i: int, rng: random.Random) -> bytes:
    """A Debezium-shaped insert into banking.transactions (JsonConverter, schemas disabled)."""
    ts = 1_767_225_600_000_000 + i * 1000
    seconds, micros = divmod(ts, 1_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"
    after = {"id": i, "account_id": rng.randint(1, 10_000), "txn_type": rng.choice(("deposit", "withdrawal",
             "transfer_out", "transfer_in")), "amount": f"{rng.randint(1, 10**7) / 100:.2f}",
             "related_account_id": rng.randint(1, 10_000) if i % 3 == 0 else None, "status": "posted",
             "created_at": stamp}
    source = {"version": "3.6.0.Final", "connector": "postgresql", "name": "bench", "ts_ms": ts // 1000,
              "ts_us": ts, "ts_ns": ts * 1000, "snapshot": "false", "db": "bank", "schema": "banking",
              "table": "transactions", "txId": 1000 + i // 4, "lsn": 10_000_000 + 64 * i, "xmin": None}
    return orjson.dumps({"before": None, "after": after, "source": source, "transaction": None, "op": "c",
                         "ts_ms": ts // 1000, "ts_us": ts, "ts_ns": ts * 1000})


def produce(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1 << 20,
                         "queue.buffering.max.messages": 1_000_000, "compression.type": "none"})
    rng = random.Random(1)
    t0 = time.monotonic()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, value=transaction_event(i, rng))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return time.monotonic() - t0


def _load() -> str:
    with open("/proc/loadavg") as f:
        return "load " + " ".join(f.read().split()[:3])


def _produce_child(bootstrap: str, topic: str, n: int, out: Any) -> None:
    out.put(produce(bootstrap, topic, n))


def produce_elsewhere(bootstrap: str, topic: str, n: int) -> float:
    """Produce from a child process so the producer's buffers never count in this process's peak RSS."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_produce_child, args=(bootstrap, topic, n, out))
    proc.start()
    seconds = float(out.get())
    proc.join()
    return seconds


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_style(bootstrap: str, topic: str, limit: int, out_dir: Path) -> tuple[int, float, float]:
    """The seed consumer: json.loads per message, payload.after, pandas DataFrame per 50 records → Parquet."""
    import pandas as pd
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"seed-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                         "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    records: list[dict[str, Any]] = []
    n = files = 0
    idle = 0
    t0, c0 = time.monotonic(), _cpu()
    while n < limit and idle < 50:
        msg = consumer.poll(0.1)
        if msg is None or msg.error():
            idle += 1
            continue
        if n == 0:  # start the clock at the first message (after the group join)
            t0, c0 = time.monotonic(), _cpu()
        idle = 0
        payload = json.loads(msg.value())
        after = payload.get("payload", payload).get("after")
        if after is not None:
            records.append(after)
        n += 1
        if len(records) >= 50:
            pd.DataFrame(records).to_parquet(out_dir / f"part-{files:08d}.parquet")
            files += 1
            records = []
            consumer.commit(asynchronous=False)
    if records:
        pd.DataFrame(records).to_parquet(out_dir / f"part-{files:08d}.parquet")
    consumer.close()
    return n, time.monotonic() - t0, _cpu() - c0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed-events", type=int, default=20_000, help="subset for the seed-style consumer")
    parser.add_argument("--subscribe", action="store_true", help="bankflow joins the group (adds the join wait)")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the bankflow run")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed-style consumer")
    args = parser.parse_args()

    from bankflow.consume.kafka import consume_to_lake

    with tempfile.TemporaryDirectory(prefix="bench-consume-") as tmp, TansuBroker() as broker:
        tmpdir = Path(tmp)
        prefix = f"b{uuid.uuid4().hex[:6]}"
        topic = f"{prefix}.banking.transactions"
        broker.create_topic(topic)
        spec_path = tmpdir / "spec.yaml"
        spec_path.write_text(SPEC.format(prefix=prefix, bootstrap=broker.bootstrap_servers, group=f"g{prefix}",
                                         lake=tmpdir / "lake"))
        seconds = produce_elsewhere(broker.bootstrap_servers, topic, args.events)
        print(f"produced {args.events:,} events in {seconds:.1f}s ({args.events / seconds:,.0f}/s) [{_load()}]")

        resolved = load_spec(spec_path)
        assignment = None if args.subscribe else [(topic, 0)]
        rss0 = _peak_rss_mb()
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0, c0 = time.monotonic(), _cpu()
        result = consume_to_lake(resolved, assignment=assignment).to_dict()
        wall, cpu = time.monotonic() - t0, _cpu() - c0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        events = result["events"]
        rss = _peak_rss_mb()
        join = " (includes the ≈3 s group join)" if args.subscribe else ""
        print(f"bankflow:   {events:,} events, {len(result['files'])} files, {wall:.2f}s wall, {cpu:.2f}s CPU "
              f"→ {events / wall:,.0f} events/s, {events / cpu:,.0f} events/s per core, peak RSS {rss:.0f} MB "
              f"(before the run {rss0:.0f} MB){join} [{_load()}]")
        if args.no_seed:
            return 0

        seed_dir = tmpdir / "seed"
        seed_dir.mkdir()
        n, s_wall, s_cpu = seed_style(broker.bootstrap_servers, topic, min(args.seed_events, args.events),
                                      seed_dir)
        print(f"seed style: {n:,} events (subset, rate extrapolated), {s_wall:.2f}s wall, {s_cpu:.2f}s CPU "
              f"→ {n / s_wall:,.0f} events/s, {n / s_cpu:,.0f} events/s per core [{_load()}]")
        print(f"ratio: {(events / wall) / (n / s_wall):,.1f}x wall, {(events / cpu) / (n / s_cpu):,.1f}x per core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
