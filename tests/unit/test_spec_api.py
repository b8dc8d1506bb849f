"""The library API (load_spec, render, SpecError) and the loader: overlays, interpolation, .env, dbt selectors."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

import bankflow
from bankflow.cli import main
from bankflow.errors import Issue
from bankflow.spec.checks import dbt_nodes, selector_matches
from bankflow.spec.loader import load_spec
from tests.specs.support import BANKING, BANKING_STACK_ENV, INVENTORY, MINIMAL, REPO, SPECS, copy_spec


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    return copy_spec(MINIMAL, tmp_path)


def edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the public API

def test_public_api() -> None:
    resolved = bankflow.load_spec(INVENTORY)
    assert isinstance(resolved, bankflow.ResolvedSpec)
    assert resolved.env == "local"  # the spec's default_env
    artifacts = bankflow.render(resolved)
    assert sorted(artifacts.files) == ["dbt/profiles.yml", "source/setup.sql", "topology.json",
                                       "warehouse/duckdb/load.sql", "warehouse/duckdb/setup.sql"]
    importlib.import_module("bankflow.plan")  # imports the render package: bankflow.render(...) must still work
    importlib.import_module("bankflow.render.warehouse")  # a submodule import must not rebind bankflow.render

    assert bankflow.render(resolved) == artifacts  # callable again, and deterministic
    assert isinstance(artifacts, bankflow.Artifacts)


def test_spec_error_issues_are_what_the_cli_prints(minimal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(minimal, "type: text}", "type: money}")
    edit(minimal, "url: file://lake", "url: ftp://lake")
    with pytest.raises(bankflow.SpecError) as caught:
        bankflow.load_spec(minimal)
    issues = caught.value.issues
    assert all(isinstance(i, Issue) for i in issues)
    assert [(i.line, i.field) for i in issues] == [(13, "tables[0].columns[1].type"), (19, "lake.url")]
    assert str(caught.value) == "\n".join(i.format() for i in issues)
    assert isinstance(caught.value, bankflow.BankflowError)
    assert main(["validate", str(minimal)]) == 1
    assert capsys.readouterr().err == "".join(i.format(one_line=True) + "\n" for i in issues)


def test_issue_formats() -> None:
    issue = Issue("p.yaml", 3, 5, "lake.url", "bad url", "use s3://")
    assert issue.format() == "p.yaml:3:5: error: lake.url: bad url\n    hint: use s3://"
    assert issue.format_github() == "::error file=p.yaml,line=3,col=5,title=bankflow::lake.url: bad url (hint: use s3://)"
    warning = Issue("p.yaml", None, None, "", "careful", severity="warning")
    assert warning.format() == "p.yaml: warning: careful"
    assert warning.to_dict()["severity"] == "warning"


def test_warnings_are_on_the_resolved_spec(minimal: Path) -> None:
    edit(minimal, "heartbeat_interval_ms: 5000", "heartbeat_interval_ms: 0")
    resolved = bankflow.load_spec(minimal)
    assert [(w.severity, w.field, w.line) for w in resolved.warnings] == [
        ("warning", "cdc.heartbeat_interval_ms", 17)]


# ---------------------------------------------------------------- environments

def test_default_env_and_overlays() -> None:
    local = load_spec(BANKING, environ={})
    assert local.env == "local"
    assert local.spec.warehouse.type == "duckdb" and local.spec.cdc.engine == "builtin"
    assert local.spec.source.embedded is True and local.spec.source.port == 0
    stack = load_spec(BANKING, env="stack", environ=BANKING_STACK_ENV)
    assert stack.spec.warehouse.type == "snowflake" and stack.spec.cdc.engine == "debezium"
    assert stack.spec.source.port == 5433 and stack.spec.source.host == "pg.example.internal"
    # Merged key by key: what the overlay does not mention comes from the base.
    assert stack.spec.source.database == "bank" and stack.spec.cdc.slot == "bankflow_banking"
    assert stack.spec.lake.layout == local.spec.lake.layout == "{table}/date={date}"
    assert stack.spec.lake.url == "s3://bank-lake/banking"
    # A new warehouse `type` replaces the whole variant: no DuckDB `path` leaks into the Snowflake model.
    assert not hasattr(stack.spec.warehouse, "path")


def test_no_env_without_default_env_uses_the_base(minimal: Path) -> None:
    resolved = load_spec(minimal, environ={})
    assert resolved.env is None and resolved.spec.cdc.engine == "builtin"
    assert load_spec(minimal, env="stack", environ={}).spec.cdc.engine == "debezium"


def test_unknown_env_from_the_api(minimal: Path) -> None:
    with pytest.raises(bankflow.SpecError) as caught:
        load_spec(minimal, env="prod", environ={})
    (issue,) = caught.value.issues
    assert (issue.line, issue.field, issue.message, issue.hint) == (
        28, "environments", "no environment named 'prod'", "choose one of: stack")


# ---------------------------------------------------------------- interpolation and .env

def test_interpolation(minimal: Path) -> None:
    edit(minimal, "  schema: shop\n", "  schema: shop\n  host: ${DB_HOST:-localhost}\n  password: ${DB_PASSWORD}\n")
    resolved = load_spec(minimal, environ={"DB_PASSWORD": "hunter2-secret"})
    source = resolved.spec.source
    assert source.host == "localhost"  # the default
    assert source.password == "hunter2-secret"
    assert resolved.env_refs == {"source.host": "DB_HOST", "source.password": "DB_PASSWORD"}
    assert resolved.secrets == ("hunter2-secret",)
    assert resolved.redact("x hunter2-secret y") == "x **** y"
    # $$ escapes a dollar: the text stays literal (and is then no valid identifier)
    edit(minimal, "  schema: shop\n", "  schema: shop\n  user: u$${DB_USER}\n")
    with pytest.raises(bankflow.SpecError) as caught:
        load_spec(minimal, environ={"DB_PASSWORD": "x", "DB_USER": "admin"})
    (issue,) = caught.value.issues
    assert (issue.line, issue.field) == (8, "source.user")
    assert "'u${DB_USER}' is not a valid identifier" in issue.message


def test_dotenv_next_to_the_spec_and_the_environment_wins(minimal: Path) -> None:
    edit(minimal, "  schema: shop\n", "  schema: shop\n  password: ${DB_PASSWORD}\n  host: ${DB_HOST}\n")
    (minimal.parent / ".env").write_text(
        "# comment\nexport DB_PASSWORD='from-dotenv'\nDB_HOST=dotenv-host\n\n", encoding="utf-8")
    resolved = load_spec(minimal, environ={"DB_HOST": "env-host"})
    assert resolved.spec.source.password == "from-dotenv"
    assert resolved.spec.source.host == "env-host"


def test_empty_default_means_unset() -> None:
    stack = load_spec(BANKING, env="stack", environ={**BANKING_STACK_ENV, "SNOWFLAKE_PRIVATE_KEY_PATH": ""})
    assert stack.spec.warehouse.private_key_path is None  # ${SNOWFLAKE_PRIVATE_KEY_PATH:-} → not set


def test_relative_paths_are_from_the_spec_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = load_spec(INVENTORY)
    assert resolved.state_dir == SPECS / ".state" / "inventory"
    assert resolved.resolve_path(resolved.spec.lake.url) == SPECS / ".state" / "inventory" / "lake"
    banking = load_spec(BANKING)
    assert banking.resolve_path(banking.spec.warehouse.path) == REPO / ".bankflow" / "banking" / "warehouse.duckdb"


def test_check_dbt_false_skips_the_project(minimal: Path) -> None:
    edit(minimal, "project_dir: minimal_dbt", "project_dir: elsewhere")
    assert load_spec(minimal, environ={}, check_dbt=False).spec.transform is not None
    with pytest.raises(bankflow.SpecError):
        load_spec(minimal, environ={})


def test_snapshot_step_without_snapshots(minimal: Path) -> None:
    edit(minimal, "    - {command: run, select: [staging]}\n",
         "    - {command: run, select: [staging]}\n    - {command: snapshot}\n")
    with pytest.raises(bankflow.SpecError) as caught:
        load_spec(minimal, environ={})
    (issue,) = caught.value.issues
    assert (issue.line, issue.field) == (28, "transform.steps[1]")
    assert "no snapshots" in issue.message and issue.hint


# ---------------------------------------------------------------- dbt selectors, read from the project files

@pytest.mark.parametrize(("selector", "matches"), [
    ("staging", True), ("marts", True), ("history", True), ("stg_accounts", True), ("+fact_transactions", True),
    ("fact_transactions+", True), ("2+dim_customers", True), ("stg_*", True), ("path:models/marts", True),
    ("models/staging", True), ("customers_snapshot", True), ("resource_type:snapshot", True),
    ("banking_dbt", True), ("tag:nightly", True), ("staging,stg_accounts", True),
    ("stagin", False), ("dim_customer", False), ("path:models/nope", False), ("resource_type:seed", False),
    ("staging,nope", False),
])
def test_banking_selectors(selector: str, matches: bool) -> None:
    nodes = dbt_nodes(REPO / "banking_dbt")
    assert selector_matches(selector, nodes, "banking_dbt") is matches


def test_inventory_dbt_nodes() -> None:
    nodes = dbt_nodes(SPECS / "inventory_dbt")
    assert {n.split("|")[0] for n in nodes["model"]} == {"stg_products", "stg_stock_levels", "product_stock"}
    assert nodes["snapshot"] == set()


def test_a_copied_spec_resolves_its_own_dbt_project(tmp_path: Path) -> None:
    spec = copy_spec(INVENTORY, tmp_path)
    shutil.rmtree(tmp_path / "inventory_dbt" / "models" / "marts")
    with pytest.raises(bankflow.SpecError) as caught:
        load_spec(spec)
    assert [(i.field, i.message.split(" matches")[0]) for i in caught.value.issues] == [
        ("transform.steps[1].select", "selector 'marts'"), ("transform.steps[1].select", "selector 'product_stock'")]
