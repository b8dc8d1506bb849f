"""`bankflow init` without a database: the type mapping, the catalog → model step, the pure renderer, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from bankflow.cli import main
from bankflow.scaffold import default_name, init_project
from bankflow.scaffold.introspect import (
    Catalog,
    CatalogColumn,
    CatalogConstraint,
    Unsupported,
    map_type,
    model_from_catalog,
    name_problem,
    source_name_problem,
)
from bankflow.scaffold.render import Project, example_source, render_project, variables
from bankflow.spec.loader import load_spec


@pytest.mark.parametrize(("pg_type", "expected"), [
    ("smallint", "smallint"), ("integer", "integer"), ("bigint", "bigint"),
    ("real", "real"), ("double precision", "double precision"), ("boolean", "boolean"),
    ("numeric(38,10)", "numeric(38,10)"), ("numeric(18,2)", "numeric(18,2)"), ("numeric(5,0)", "numeric(5,0)"),
    ("character varying(200)", "varchar(200)"), ("character varying", "varchar"),
    ("character(3)", "char(3)"), ("text", "text"), ("uuid", "uuid"), ("json", "json"), ("jsonb", "jsonb"),
    ("bytea", "bytea"), ("date", "date"),
    ("time without time zone", "time"), ("time(3) without time zone", "time"),
    ("timestamp without time zone", "timestamp"), ("timestamp(3) without time zone", "timestamp"),
    ("timestamp with time zone", "timestamptz"), ("timestamp(6) with time zone", "timestamptz"),
])
def test_carried_types(pg_type: str, expected: str) -> None:
    assert map_type(pg_type) == (expected, None)


@pytest.mark.parametrize(("pg_type", "typtype", "typcategory", "hint"), [
    ("numeric(10,-2)", "b", "N", "0 ≤ s ≤ p"),
    ("text[]", "b", "A", "jsonb"),
    ("shop.kyc_level[]", "b", "A", "arrays"),
    ("money", "b", "N", "numeric(p,s)"),
    ("interval", "b", "T", "text"),
    ("time with time zone", "b", "D", "timestamptz"),
    ("point", "b", "G", "leave it out"),
    ("inet", "b", "I", "leave it out"),
    ("xml", "b", "U", "text"),
    ("shop.address", "c", "C", "leave it out"),
    ("shop.positive_int", "d", "N", "base type"),
    ('"char"', "b", "Z", "leave it out"),
])
def test_refused_types_name_a_hint(pg_type: str, typtype: str, typcategory: str, hint: str) -> None:
    with pytest.raises(Unsupported) as caught:
        map_type(pg_type, typtype, typcategory)
    assert hint in caught.value.hint and caught.value.reason


def test_enum_is_an_enum_with_its_labels_in_a_comment() -> None:
    spec_type, note = map_type("shop.kyc_level", "e", "E", ("pending", "verified"))
    assert spec_type == "enum" and note is not None and "pending, verified" in note and "label" in note


@pytest.mark.parametrize("pg_type", ["numeric", "numeric(40,2)"])
def test_numeric_without_an_exact_image_is_carried_as_text_with_a_hint(pg_type: str) -> None:
    spec_type, note = map_type(pg_type)
    assert spec_type == pg_type and note is not None and "carried as text" in note and "numeric(38," in note


@pytest.mark.parametrize("name", ["KycStatus", "kyc status", "1st", "_bankflow_x", "_op", "a" * 64, "naïve"])
def test_names_bankflow_makes_up_are_plain(name: str) -> None:
    assert name_problem(name)


@pytest.mark.parametrize(("name", "table", "refused"), [
    ("KycStatus", False, False), ("order", False, False), ("kyc status", True, False), ("naïve", False, False),
    ("_OP", False, True), ("_Bankflow_x", True, True), ("a" * 64, False, True), ('say "hi"', False, True),
    ("a/b", True, True), ("a/b", False, False), ("{{ x }}", False, True), ("tab\tname", False, True),
])
def test_source_names_the_spec_takes(name: str, table: bool, refused: bool) -> None:
    assert bool(source_name_problem(name, table=table)) == refused


def col(table: str, attnum: int, name: str, pg_type: str = "bigint", **kw: object) -> CatalogColumn:
    return CatalogColumn(table, attnum, name, pg_type, kw.pop("not_null", False), **kw)  # type: ignore[arg-type]


def catalog() -> Catalog:
    return Catalog(
        "shop",
        {"orders": "d", "customers": "f", "lines": "f", "notes": "n", "nokey": "f", "Weird": "f", "bad_key": "f"},
        [
            col("customers", 1, "id", not_null=True, identity="a"),
            col("customers", 2, "KycStatus", "text"),
            col("customers", 3, "kyc", "shop.kyc", typtype="e", enum_labels=("a", "b")),
            col("customers", 4, "total", "numeric(10,2)", generated="s"),
            col("orders", 1, "id", not_null=True, default="nextval('shop.orders_id_seq'::regclass)"),
            col("orders", 2, "customer_id"),
            col("lines", 1, "order_id", not_null=True), col("lines", 2, "seq", "integer", not_null=True),
            col("notes", 1, "id"), col("notes", 2, "order_id"), col("notes", 3, "seq", "integer"),
            col("nokey", 1, "x", "text"),
            col("Weird", 1, "id"),
            col("bad_key", 1, "id", "numeric"),
        ],
        [
            CatalogConstraint("customers", "p", (1,)), CatalogConstraint("orders", "p", (1,)),
            CatalogConstraint("orders", "f", (2,), "shop", "customers", ("id",)),
            CatalogConstraint("lines", "p", (1, 2)),
            CatalogConstraint("lines", "f", (1,), "shop", "orders", ("id",)),
            CatalogConstraint("notes", "p", (1,)),
            CatalogConstraint("notes", "f", (2, 3), "shop", "lines", ("order_id", "seq")),
            CatalogConstraint("Weird", "p", (1,)), CatalogConstraint("bad_key", "p", (1,)),
        ],
    )


def test_model_from_catalog() -> None:
    model = model_from_catalog(catalog())
    tables = {t.name: t for t in model.tables}
    assert [t.name for t in model.tables].index("customers") < [t.name for t in model.tables].index("orders") \
        < [t.name for t in model.tables].index("lines")
    assert set(tables) == {"customers", "orders", "lines", "notes", "Weird", "bad_key"}
    assert tables["bad_key"].columns[0].carry_as == "text"
    customers = tables["customers"]
    assert [c.name for c in customers.columns] == ["id", "KycStatus", "kyc"]
    assert customers.columns[0].identity and not customers.columns[0].nullable
    kyc = customers.columns[2]
    assert (kyc.type, kyc.enum_type, kyc.enum_values) == ("enum", "kyc", ["a", "b"]) and "enum" in kyc.comments[0]
    assert not tables["orders"].columns[0].identity and "serial" in tables["orders"].columns[0].comments[0]
    assert tables["orders"].columns[1].references == "customers.id"
    assert tables["orders"].replica_identity == "default"
    assert tables["lines"].primary_key == ["order_id", "seq"] and tables["lines"].columns[0].references == "orders.id"
    notes = tables["notes"].columns[1]
    assert notes.references is None and "composite foreign key" in notes.comments[0]
    assert "NOTHING" in tables["notes"].comments[0] and tables["notes"].replica_identity == "full"
    lines = [o.line() for o in model.omissions]
    assert any('"customers"."total"' in line and "generated" in line for line in lines)
    assert any('table "nokey": no primary key' in line for line in lines)


def test_a_foreign_key_cycle_keeps_one_side() -> None:
    cat = Catalog("s", {"a": "f", "b": "f"},
                  [col("a", 1, "id"), col("a", 2, "b_id"), col("b", 1, "id"), col("b", 2, "a_id")],
                  [CatalogConstraint("a", "p", (1,)), CatalogConstraint("b", "p", (1,)),
                   CatalogConstraint("a", "f", (2,), "s", "b", ("id",)),
                   CatalogConstraint("b", "f", (2,), "s", "a", ("id",))])
    refs = [c.references for t in model_from_catalog(cat).tables for c in t.columns if c.references]
    assert len(refs) == 1


def write(files: dict[str, str], root: Path) -> None:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)


def test_rendered_project_validates_in_both_environments(tmp_path: Path) -> None:
    model = model_from_catalog(catalog())
    model.host, model.port, model.user, model.database = "db.internal", 6543, "app", "appdb"
    files = render_project(Project("shop", model, from_postgres=True))
    write(files, tmp_path)
    spec_text = files["pipelines/shop.yaml"]
    assert "${PGHOST:-db.internal}" in spec_text and "${PGPORT:-6543}" in spec_text
    assert "${PGUSER:-app}" in spec_text and "${PGDATABASE:-appdb}" in spec_text
    assert "password: ${PGPASSWORD}" in spec_text and 'name: "KycStatus"' in spec_text
    assert 'name: "Weird"' in spec_text and "type: \"enum\", enum_type: kyc, values: [a, b]" in spec_text
    assert "carry_as: text" in spec_text
    local = load_spec(tmp_path / "pipelines/shop.yaml", env="local")
    assert local.spec.source.embedded and local.spec.source.database == "appdb"
    assert [t.name for t in local.spec.tables][:1] == ["customers"]
    stack = load_spec(tmp_path / "pipelines/shop.yaml", env="stack", unset="defer")
    assert stack.spec.source.host == "db.internal" and stack.spec.source.port == 6543
    staging = files["dbt/models/staging/stg_lines.sql"]
    # incremental over raw through the shipped macro, on the composite key
    assert "config(materialized='incremental', unique_key=['order_id', 'seq'])" in staging
    assert "latest_version(\n    source('raw', 'lines'),\n    key=['order_id', 'seq']," in staging
    assert "macro latest_version(" in files["dbt/macros/bankflow/change_log.sql"]
    dbt_project = files["dbt/dbt_project.yml"]
    assert "send_anonymous_usage_stats: false" in dbt_project and "raw_schema: raw" in dbt_project
    assert "var('raw_schema')" in files["dbt/models/sources.yml"]
    env_example = files[".env.example"]
    for name, _ in variables(spec_text):
        assert f"# {name}=" in env_example
    assert {"PGPASSWORD", "SNOWFLAKE_ACCOUNT", "BANKFLOW_STATE_DIR"} <= {n for n, _ in variables(spec_text)}
    assert "snapshots/README.md" in " ".join(files) and "dbt/models/marts/README.md" in files


def test_connection_defaults_the_spec_would_refuse_are_left_out(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_from_catalog(catalog())
    model.host, model.user, model.database = "db;rm -rf", "App-User", "my-db"
    write(render_project(Project("shop", model, from_postgres=True)), tmp_path)
    text = (tmp_path / "pipelines/shop.yaml").read_text()
    assert "host: ${PGHOST}" in text and "user: ${PGUSER}" in text and "database: ${PGDATABASE}" in text
    monkeypatch.setenv("PGUSER", "app_user")  # a user or database the spec can name must be given
    monkeypatch.setenv("PGDATABASE", "my_db")
    stack = load_spec(tmp_path / "pipelines/shop.yaml", env="stack", unset="defer")
    assert {"PGHOST", "PGPASSWORD"} <= set(stack.unset) and stack.spec.source.user == "app_user"
    assert load_spec(tmp_path / "pipelines/shop.yaml", env="local").spec.source.database == "shop"


def test_names_that_are_not_identifiers_only_reach_comments() -> None:
    cat = catalog()
    cat.columns.append(col("customers", 5, "evil\nname: injected", "text"))
    text = render_project(Project("shop", model_from_catalog(cat), from_postgres=True))["pipelines/shop.yaml"]
    assert "\nname: injected" not in text and 'evil\\nname: injected' in text


def test_example_project(tmp_path: Path) -> None:
    result = init_project(tmp_path / "new", "demo")
    assert result.written and result.complete
    spec = load_spec(tmp_path / "new/pipelines/demo.yaml", env="local").spec
    assert [t.name for t in spec.tables] == ["orders"] and spec.transform is not None
    assert render_project(Project("demo", example_source("demo"), example=True)) == {
        path: (tmp_path / "new" / path).read_text() for path in result.files}


def test_default_name() -> None:
    assert default_name(Path("/x/My Bank-Project")) == "my_bank_project"
    assert default_name(Path("/x/2024")) == "p_2024"
    assert default_name(Path("/x/---")) == "pipeline"


def test_cli_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "proj"
    assert main(["init", str(target), "--name", "demo", "--json"]) == 0
    assert '"pipelines/demo.yaml"' in capsys.readouterr().out
    assert main(["validate", str(target / "pipelines/demo.yaml")]) == 0
    capsys.readouterr()
    assert main(["init", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--force" in err
    assert main(["init", str(target), "--name", "demo", "--force", "-q"]) == 0
    assert main(["init", str(tmp_path / "b"), "--schema", "s"]) == 2
    assert "--from-postgres" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "c"), "--from-postgres", "postgresql://u@h/d"]) == 2
    assert main(["init", str(tmp_path / "d"), "--name", "Bad"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_init_unreachable_source_is_one_line_without_the_password(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://app:s3cret-Passw0rd@127.0.0.1:1/appdb?connect_timeout=2"
    assert main(["init", str(tmp_path / "p"), "--from-postgres", url, "--schema", "shop"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect" in err and "s3cret-Passw0rd" not in err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_cli_init_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["init", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--from-postgres", "--schema", "--tables", "--allow-partial", "--force", "--name", "--json"):
        assert option in out
