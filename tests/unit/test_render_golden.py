"""Golden files for every renderer, for banking (local, stack) and inventory (local, cloud).

Regenerate with `BANKFLOW_UPDATE_GOLDEN=1 pytest tests/unit/test_render_golden.py` and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bankflow.render import render_all
from bankflow.render.airflow import render_dag
from bankflow.render.warehouse import render_load_sql
from bankflow.spec.loader import ResolvedSpec
from tests.specs.support import CASES, GOLDEN, SECRETS, check_golden, load_case, normalise

ARTIFACTS = ("debezium/connector.json", "topology.json", "dbt/profiles.yml", "setup.sql", "load.sql",
             "source/setup.sql", "airflow/dag.py")


def pending_files(resolved: ResolvedSpec) -> dict[str, list[str]]:
    """A concrete file list per table: 3 files for the first (one with a quote in its path), none for the second,
    1001 for the third (two COPY statements: Snowflake takes at most 1000 files per statement)."""
    spec = resolved.spec
    snowflake = spec.warehouse.type == "snowflake"
    root = "" if snowflake else (
        spec.lake.url + "/" if spec.lake.scheme == "s3" else str(resolved.resolve_path(spec.lake.url)) + "/")
    counts = [3, 0, 1001]
    files = {}
    for index, table in enumerate(spec.tables):
        names = [f"{table.name}/date=2024-05-0{1 + n % 3}/p0-{n:06d}.parquet" for n in range(counts[index % 3])]
        if index == 0:
            names[1] = f"{table.name}/date=2024-05-02/o'brien/p0-1.parquet"
        files[table.name] = [root + name for name in names]
    return files


def rendered(case: str) -> dict[str, str]:
    resolved = load_case(case)
    files = render_all(resolved).files
    kind = resolved.spec.warehouse.type
    out = {
        "topology.json": files["topology.json"],
        "dbt/profiles.yml": files["dbt/profiles.yml"],
        "setup.sql": files[f"warehouse/{kind}/setup.sql"],
        "load.sql": files[f"warehouse/{kind}/load.sql"],
        "load-with-files.sql": render_load_sql(resolved, pending_files(resolved)),
        "source/setup.sql": files["source/setup.sql"],
        "airflow/dag.py": render_dag(resolved),  # plan's airflow/<dag_id>.py
    }
    engine_files = set()
    if resolved.spec.cdc.capabilities.uses_kafka:  # the connector is rendered where Kafka Connect runs it
        out["debezium/connector.json"] = files["debezium/connector.json"]
        engine_files.add("debezium/connector.json")
    assert set(files) == {"topology.json", "dbt/profiles.yml", f"warehouse/{kind}/setup.sql",
                          f"warehouse/{kind}/load.sql", "source/setup.sql", *engine_files}
    return {name: normalise(text) for name, text in out.items()}


def case_artifacts() -> list[tuple[str, str]]:
    """(case, artifact) for what each case renders: environments without Kafka Connect have no connector JSON."""
    return [(case, artifact) for case in sorted(CASES) for artifact in [*ARTIFACTS, "load-with-files.sql"]
            if artifact != "debezium/connector.json" or not case.endswith("-local")]


@pytest.mark.parametrize(("case", "artifact"), case_artifacts())
def test_golden(case: str, artifact: str) -> None:
    check_golden(f"{case}/{artifact}", rendered(case)[artifact])


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendering_is_deterministic(case: str) -> None:
    assert rendered(case) == rendered(case)


def test_goldens_hold_no_machine_paths_and_no_secrets() -> None:
    texts = {p: p.read_text(encoding="utf-8") for p in GOLDEN.rglob("*") if p.is_file()}
    assert len(texts) == len(case_artifacts())
    for path, text in texts.items():
        repository = str(Path(__file__).resolve().parents[2])
        assert str(Path.home()) not in text and "/tmp/" not in text and repository not in text, path
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {path}"


def test_golden_chunks_of_at_most_1000_files() -> None:
    text = (GOLDEN / "banking-stack" / "load-with-files.sql").read_text(encoding="utf-8")
    statements = [s for s in text.split(";") if "COPY INTO" in s]
    assert [s.count(".parquet'") for s in statements] == [3, 1000, 1]
    assert "-- accounts: no pending files" in text
