"""Kafka → Parquet throughput: bankflow's consumer against seed-style consumers, on a local Tansu broker.

    .venv/bin/python benchmarks/bench_kafka_consume.py --events 1000000

All consumers read the same Debezium-shaped events (JsonConverter, schemas disabled, 550 bytes each) and write
Parquet to the same lake: by default moto's S3 server, run as a child process so that only the consumer's own
CPU is counted (`--lake file` uses a local directory instead).

(a) bankflow: `consume_to_lake`, pinned to the partition (static assignment, as `run_workers` does).
(b) seed, as the seeds' consumer/kafka_to_minio.py does it (SEEDS.md): kafka-python with auto-commit,
    `json.loads` per message, keep `payload.after`, a pandas DataFrame per 50 records written with fastparquet
    to a local file, `boto3.upload_file` to the lake, delete the local file (their per-record print is left out).
(c) seed, light: the same per-message work on confluent-kafka with auto-commit, pyarrow Parquet straight into
    the lake directory, no upload: the most generous reading of "seed style".

The seed consumers run on a subset (`--seed-events`) and their rates are extrapolated. Figures: events/s
(wall), events/s per core (CPU time of this process, librdkafka's threads included, from getrusage), peak RSS,
and the RSS bankflow had at each quarter of the backlog (bounded: it must not grow with the backlog). Every
figure carries the load average: the machine is shared, and Tansu runs on the same two cores.
`--profile FILE` writes a cProfile of the bankflow run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bankflow.spec.loader import load_spec
from tests.harness.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from tests.harness.tansu import TansuBroker

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
  url: {lake}
  {endpoint}
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


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def seed_faithful(bootstrap: str, topic: str, limit: int, s3: S3Server | None, bucket: str,
                  lake_dir: Path, work_dir: Path) -> tuple[int, float, float]:
    """The seeds' consumer/kafka_to_minio.py: kafka-python, auto-commit, pandas + fastparquet, boto3 upload."""
    import warnings

    import fastparquet  # noqa: F401  (imported before the clock starts, as in a long-running seed process)
    import pandas as pd
    from kafka import KafkaConsumer

    # kafka-python 3 prefers Deserializer objects; the seeds pass a lambda, and so does this copy of them
    warnings.filterwarnings("ignore", message="value_deserializer", category=DeprecationWarning)
    # pandas 3 warns on every fastparquet write; printing 400 warnings would only slow the seed down further
    warnings.filterwarnings("ignore", message="The 'fastparquet' engine is deprecated")

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=True, group_id=f"seed-{uuid.uuid4().hex[:6]}",
                             value_deserializer=lambda x: json.loads(x.decode("utf-8")),  # as the seeds
                             session_timeout_ms=6000, heartbeat_interval_ms=1000,
                             consumer_timeout_ms=20_000)  # the benchmark's own bound on waiting, not the seeds'

    client = s3.client() if s3 is not None else None
    table = topic.split(".")[-1]
    buffer: list[dict[str, Any]] = []

    def write_to_lake(records: list[dict[str, Any]]) -> None:
        df = pd.DataFrame(records)
        date_str = datetime.now().strftime("%Y-%m-%d")
        file_path = work_dir / f"{table}_{date_str}.parquet"
        df.to_parquet(file_path, engine="fastparquet", index=False)
        key = f"seed/{table}/date={date_str}/{table}_{datetime.now().strftime('%H%M%S%f')}.parquet"
        if client is not None:
            client.upload_file(str(file_path), bucket, key)
        else:
            (lake_dir / key).parent.mkdir(parents=True, exist_ok=True)
            os.replace(file_path, lake_dir / key)
        if file_path.exists():
            os.remove(file_path)

    n = 0
    t0, c0 = time.monotonic(), _cpu()
    for message in consumer:
        if n == 0:  # start the clock at the first message (after the group join)
            t0, c0 = time.monotonic(), _cpu()
        value = message.value
        record = value.get("payload", value).get("after")  # the seeds read payload.after (schemas enabled)
        if record:
            buffer.append(record)
        n += 1
        if len(buffer) >= 50:
            write_to_lake(buffer)
            buffer = []
        if n >= limit:
            break
    if buffer:
        write_to_lake(buffer)
    wall, cpu = time.monotonic() - t0, _cpu() - c0
    consumer.close()
    return n, wall, cpu


def seed_light(bootstrap: str, topic: str, limit: int, out_dir: Path) -> tuple[int, float, float]:
    """Seed style at its cheapest: confluent-kafka, auto-commit, json.loads, pandas per 50 → pyarrow Parquet."""
    import pandas as pd
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"seed-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": True, "fetch.wait.max.ms": 10,
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
    if records:
        pd.DataFrame(records).to_parquet(out_dir / f"part-{files:08d}.parquet")
    wall, cpu = time.monotonic() - t0, _cpu() - c0
    consumer.close()
    return n, wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed-events", type=int, default=20_000, help="subset for the seed-style consumers")
    parser.add_argument("--lake", choices=("s3", "file"), default="s3", help="where every consumer writes")
    parser.add_argument("--subscribe", action="store_true", help="bankflow joins the group (adds the join wait)")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the bankflow run")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed-style consumers")
    args = parser.parse_args()

    from bankflow.engines.debezium.consumer import consume_to_lake

    bucket = "bench-lake"
    with tempfile.TemporaryDirectory(prefix="bench-consume-") as tmp, TansuBroker() as broker, \
            S3Server(child_process=True, log_dir=Path(tmp)) as s3:
        tmpdir = Path(tmp)
        prefix = f"b{uuid.uuid4().hex[:6]}"
        topic = f"{prefix}.banking.transactions"
        broker.create_topic(topic)
        lake_dir = tmpdir / "lake"
        lake_dir.mkdir()
        if args.lake == "s3":
            s3.create_bucket(bucket)
            os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                              AWS_DEFAULT_REGION=REGION)
            lake, endpoint = f"s3://{bucket}/bankflow", f"s3_endpoint: {s3.endpoint_url}"
        else:
            lake, endpoint = f"file://{lake_dir}", ""
        spec_path = tmpdir / "spec.yaml"
        spec_path.write_text(SPEC.format(prefix=prefix, bootstrap=broker.bootstrap_servers, group=f"g{prefix}",
                                         lake=lake, endpoint=endpoint))
        seconds = produce_elsewhere(broker.bootstrap_servers, topic, args.events)
        print(f"produced {args.events:,} events in {seconds:.1f}s ({args.events / seconds:,.0f}/s), "
              f"lake {args.lake} [{_load()}]", flush=True)

        resolved = load_spec(spec_path)
        assignment = None if args.subscribe else [(topic, 0)]
        rss0 = _peak_rss_mb()
        quarters: dict[int, float] = {}

        def progress(info: dict[str, Any]) -> None:
            quarter = min(4, int(info["events"] * 4 / args.events))
            quarters[quarter] = max(quarters.get(quarter, 0.0), _current_rss_mb())

        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0, c0 = time.monotonic(), _cpu()
        result = consume_to_lake(resolved, assignment=assignment, progress=progress).to_dict()
        wall, cpu = time.monotonic() - t0, _cpu() - c0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        events = result["events"]
        rss = _peak_rss_mb()
        join = " (includes the ≈3 s group join)" if args.subscribe else ""
        per_core = events / cpu
        print(f"bankflow:     {events:,} events, {len(result['files'])} files, {wall:.2f}s wall, {cpu:.2f}s CPU "
              f"→ {events / wall:,.0f} events/s, {per_core:,.0f} events/s per core, peak RSS {rss:.0f} MB "
              f"(before the run {rss0:.0f} MB){join} [{_load()}]")
        print("bankflow RSS by quarter of the backlog: "
              + ", ".join(f"{25 * q}%: {mb:.0f} MB" for q, mb in sorted(quarters.items())))
        if args.no_seed:
            return 0

        limit = min(args.seed_events, args.events)
        seeds = [("seed:        ", "as the seeds do it: kafka-python, fastparquet, boto3 upload",
                  lambda: seed_faithful(broker.bootstrap_servers, topic, limit,
                                        s3 if args.lake == "s3" else None, bucket, lake_dir, tmpdir)),
                 ("seed, light: ", "confluent-kafka, pyarrow, no upload",
                  lambda: seed_light(broker.bootstrap_servers, topic, limit, lake_dir))]
        for label, what, run in seeds:
            n, s_wall, s_cpu = run()
            if n == 0:
                print(f"{label}read nothing ({what}) [{_load()}]")
                continue
            print(f"{label}{n:,} events ({what}; subset, rate extrapolated), {s_wall:.2f}s wall, "
                  f"{s_cpu:.2f}s CPU → {n / s_wall:,.0f} events/s, {n / s_cpu:,.0f} events/s per core [{_load()}]")
            print(f"  bankflow / {label.strip(': ')}: {(events / wall) / (n / s_wall):,.1f}x wall, "
                  f"{per_core / (n / s_cpu):,.1f}x per core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
