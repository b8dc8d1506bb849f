"""Wall time of every stage of a full `bankflow apply` on the `local` environment, and peak RSS.

    python benchmarks/bench_apply.py --transactions 1000000

Generates the workload into a fresh embedded PostgreSQL (bulk mode), then runs apply once (source → cdc → load →
transform) and verify. Everything lives in a temporary state dir that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the state dir")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bankflow-bench-apply-"))
    os.environ["BANKFLOW_STATE_DIR"] = str(state)
    import bankflow
    from bankflow.pipeline import Pipeline

    spec = bankflow.load_spec(REPO / "pipelines" / "banking.yaml", env="local")
    pipeline = Pipeline(spec)
    try:
        pipeline.apply(stages=["source"], progress=False)
        started = time.perf_counter()
        generated = pipeline.generate(seed=1, transactions=args.transactions, progress=False)
        generate_seconds = time.perf_counter() - started
        print(f"peak RSS after generate: {peak_rss_mb():.0f} MB", flush=True)
        report = pipeline.apply(progress=False)
        verify_started = time.perf_counter()
        verified = pipeline.verify()
        verify_seconds = time.perf_counter() - verify_started
        print(f"generate: {generated['inserted']} inserted rows in {generate_seconds:.1f}s")
        print(f"{'stage':<10} {'seconds':>8} {'events':>10} {'rows':>10} {'files':>6} {'peak RSS after':>15}")
        for stage in report.stages:
            print(f"{stage.name:<10} {stage.seconds:8.2f} {stage.events:10,} {stage.rows:10,} {stage.files:6,} "
                  f"{stage.details.get('peak_rss_mb', 0):12,} MB")
        cdc = next(s for s in report.stages if s.name == "cdc")
        print(f"apply total: {report.seconds:.2f}s  (cdc → parquet {cdc.events / max(cdc.seconds, 1e-9):,.0f} "
              f"events/s)  ok={report.ok}")
        print(f"verify: {verify_seconds:.2f}s ok={verified.ok} (peak RSS after verify {peak_rss_mb():.0f} MB)")
        print(f"peak RSS: {peak_rss_mb():.0f} MB")
    finally:
        pipeline.down(drop_slot=True)
        from bankflow.source.embedded import EmbeddedPostgres

        EmbeddedPostgres(state / "postgres").destroy()
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
