"""The Airflow DAG `plan` renders (bankflow/render/airflow.py), in both modes (`stages`, `run`): tasks, commands,
order, schedule and dag_id, and hostile strings from the spec that stay data.

Airflow's own loader (DagBag) is in tests/integration/test_airflow_dagbag.py, with apache-airflow in a venv of
its own (its pins collide with bankflow's); here the rendered file is read as Python instead. `ast.parse` proves
it is valid Python; the AST gives the `DAG(...)` arguments, each `BashOperator(...)` and the `>>` chain as
literals; each command is rendered the way Airflow renders a templated field (a Jinja sandbox with the default
delimiters) and then run by bash with a stand-in `bankflow` that prints the arguments it was given. Finally the
file is executed against stand-ins for `airflow.sdk` and the standard provider, which record the DAG, its tasks
and their dependencies.
"""

from __future__ import annotations

import ast
import json
import shlex
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2.sandbox
import pytest

from bankflow.errors import SpecError
from bankflow.plan import plan
from bankflow.render.airflow import (
    RUN_RETRIES,
    bankflow_command,
    render_dag,
    render_dag_text,
    render_run_dag_text,
)
from bankflow.spec.loader import load_spec
from bankflow.stages.base import STAGE_ORDER
from tests.specs.support import BANKING, BANKING_STACK_ENV, MINIMAL, SECRETS, copy_spec

TASKS = [*STAGE_ORDER, "verify"]
HOSTILE = "it's \"quoted\" $(touch pwned) `touch pwned2` ${HOME} {{ 7 * 7 }} {% raw %} {# c #} \\ ;|&\nnext line"


@dataclass
class Dag:
    """What the rendered file declares, read from its AST."""

    docstring: str
    imports: dict[str, list[str]]  # module -> names
    kwargs: dict[str, Any]  # DAG(...) keyword arguments that are literals
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # variable -> BashOperator literal kwargs
    chain: list[str] = field(default_factory=list)  # variables in `a >> b >> c` order

    @property
    def task_ids(self) -> list[str]:
        return [self.tasks[var]["task_id"] for var in self.chain]

    def command(self, task_id: str) -> str:
        return next(t["bash_command"] for t in self.tasks.values() if t["task_id"] == task_id)


def literal_kwargs(call: ast.Call) -> dict[str, Any]:
    """The keyword arguments that are literals (`doc_md=__doc__`, `start_date=datetime(...)` are not)."""
    out = {}
    for keyword in call.keywords:
        try:
            out[str(keyword.arg)] = ast.literal_eval(keyword.value)
        except ValueError:
            out[str(keyword.arg)] = ast.unparse(keyword.value)
    return out


def rshift_chain(node: ast.expr) -> list[str]:
    """`a >> b >> c` is BinOp(BinOp(a, >>, b), >>, c): its names, left to right."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.RShift):
        return rshift_chain(node.left) + rshift_chain(node.right)
    assert isinstance(node, ast.Name), ast.dump(node)
    return [node.id]


def parse_dag(text: str) -> Dag:
    module = ast.parse(text)  # a SyntaxError here is the first failure a hostile string would cause
    imports = {node.module or "": [a.name for a in node.names] for node in module.body
               if isinstance(node, ast.ImportFrom)}
    [with_dag] = [node for node in module.body if isinstance(node, ast.With)]
    call = with_dag.items[0].context_expr
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "DAG"
    dag = Dag(ast.get_docstring(module) or "", imports, literal_kwargs(call))
    for statement in with_dag.body:
        if isinstance(statement, ast.Assign):
            value = statement.value
            assert isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            assert value.func.id == "BashOperator"
            [target] = statement.targets
            assert isinstance(target, ast.Name)
            dag.tasks[target.id] = literal_kwargs(value)
        else:
            assert isinstance(statement, ast.Expr), ast.dump(statement)
            assert not dag.chain, "one chain"
            dag.chain = rshift_chain(statement.value)
    if not dag.chain and len(dag.tasks) == 1:
        dag.chain = list(dag.tasks)  # one task (mode run): nothing to chain
    assert sorted(dag.chain) == sorted(dag.tasks), "every task is in the chain, once"
    return dag


def airflow_renders(command: str) -> str:
    """What Airflow hands to bash: `bash_command` is a templated field, rendered by a sandboxed Jinja."""
    return jinja2.sandbox.SandboxedEnvironment().from_string(command).render()


def args_of(command: str) -> list[str]:
    return shlex.split(airflow_renders(command))


def apply_args(spec: Path | str, env: str | None, stage: str) -> list[str]:
    scope = [str(spec)] + (["--env", env] if env is not None else [])
    return ["bankflow", "apply", *scope, "--stages", stage, "--json"]


def verify_args(spec: Path | str, env: str | None) -> list[str]:
    return ["bankflow", "verify", str(spec)] + (["--env", env] if env is not None else []) + ["--json"]


def run_args(spec: Path | str, env: str | None) -> list[str]:
    return ["exec", "bankflow", "run", str(spec)] + (["--env", env] if env is not None else [])


def check_tasks(dag: Dag, spec: Path | str, env: str | None, stages: list[str]) -> None:
    assert dag.task_ids == [*stages, "verify"]
    for stage in stages:
        assert args_of(dag.command(stage)) == apply_args(spec, env, stage)
    assert args_of(dag.command("verify")) == verify_args(spec, env)
    for task in dag.tasks.values():
        assert task["skip_on_exit_code"] is None  # no exit code skips a task: 4 (dead letters) fails it
        assert not task["bash_command"].rstrip().endswith((".sh", ".bash"))  # Airflow would read it as a file


# ---------------------------------------------------------------- the banking pipeline


@pytest.mark.parametrize(("env", "variables"), [("local", {}), ("stack", BANKING_STACK_ENV)])
def test_banking_dag_tasks_order_schedule(env: str, variables: dict[str, str]) -> None:
    resolved = load_spec(BANKING, env=env, environ=dict(variables))
    text = render_dag(resolved)
    dag = parse_dag(text)

    assert dag.imports["airflow.sdk"] == ["DAG"]  # Airflow 3's authoring interface
    assert dag.imports["airflow.providers.standard.operators.bash"] == ["BashOperator"]
    assert dag.kwargs["dag_id"] == "bankflow_banking"
    assert dag.kwargs["schedule"] == "@hourly"
    assert dag.kwargs["catchup"] is False and dag.kwargs["max_active_runs"] == 1
    assert dag.kwargs["tags"] == ["bankflow", "banking"]
    assert dag.kwargs["description"] == resolved.spec.description
    assert dag.kwargs["doc_md"] == "__doc__"
    assert dag.chain == TASKS  # the variables are the task ids
    check_tasks(dag, BANKING, env, list(STAGE_ORDER))
    assert "exits 1 when the stage failed and 4 when it ran but sent events to\nthe dead-letter store" in dag.docstring
    assert "No secret is in this file" in dag.docstring
    # Retries: the configured number (default 0), never for cdc (a retry would not see the first try's dead letters).
    assert dag.kwargs["default_args"].startswith("{'retries': 0,")
    assert dag.tasks["cdc"]["retries"] == 0 and "retries" not in dag.tasks["load"]


def test_no_secret_and_no_service_address_in_the_dag() -> None:
    text = render_dag(load_spec(BANKING, env="stack", environ=dict(BANKING_STACK_ENV)))
    for secret in SECRETS:
        assert secret not in text
    for name in ("PGHOST", "CONNECT_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "SNOWFLAKE_ACCOUNT",
                 "SNOWFLAKE_USER"):
        assert BANKING_STACK_ENV[name] not in text, name  # the worker's environment supplies them


def airflow_stand_ins(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Stand-ins for `airflow.sdk.DAG` and the standard provider's BashOperator; the list gets each DAG created."""
    created: list[Any] = []

    class DAG:
        current: Any = None

        def __init__(self, **kwargs: Any):
            self.kwargs, self.tasks = kwargs, []
            created.append(self)

        def __enter__(self) -> DAG:
            DAG.current = self
            return self

        def __exit__(self, *exc: object) -> None:
            DAG.current = None

    class BashOperator:
        def __init__(self, *, task_id: str, bash_command: str, **kwargs: Any):
            self.task_id, self.bash_command, self.kwargs, self.downstream = task_id, bash_command, kwargs, []
            DAG.current.tasks.append(self)

        def __rshift__(self, other: BashOperator) -> BashOperator:
            self.downstream.append(other.task_id)
            return other

    sdk = types.ModuleType("airflow.sdk")
    sdk.DAG = DAG  # type: ignore[attr-defined]
    bash = types.ModuleType("airflow.providers.standard.operators.bash")
    bash.BashOperator = BashOperator  # type: ignore[attr-defined]
    for name in ("airflow", "airflow.providers", "airflow.providers.standard", "airflow.providers.standard.operators"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "airflow.sdk", sdk)
    monkeypatch.setitem(sys.modules, "airflow.providers.standard.operators.bash", bash)
    return created


def test_the_dag_runs_against_stand_ins_for_airflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Executed (not only parsed): the names it uses exist, one DAG holds five tasks chained in order."""
    created = airflow_stand_ins(monkeypatch)
    text = render_dag(load_spec(BANKING, env="local", environ={}))
    exec(compile(text, "bankflow_banking.py", "exec"), {"__name__": "bankflow_banking"})
    [dag] = created
    assert dag.kwargs["dag_id"] == "bankflow_banking" and dag.kwargs["schedule"] == "@hourly"
    assert dag.kwargs["start_date"].tzinfo is not None and dag.kwargs["doc_md"].startswith("A bankflow pipeline")
    assert [t.task_id for t in dag.tasks] == TASKS
    assert [t.downstream for t in dag.tasks] == [[b] for b in TASKS[1:]] + [[]]


# ---------------------------------------------------------------- mode run: one long-lived task


def banking_run(tmp_path: Path, airflow: str = "airflow:\n  mode: run\n") -> Path:
    """A copy of pipelines/banking.yaml with an `airflow:` section (top level, after the environments)."""
    spec = copy_spec(BANKING, tmp_path)
    spec.write_text(spec.read_text(encoding="utf-8") + airflow, encoding="utf-8")
    return spec


@pytest.mark.parametrize(("env", "variables"), [("local", {}), ("stack", BANKING_STACK_ENV)])
def test_run_mode_one_long_lived_task(tmp_path: Path, env: str, variables: dict[str, str]) -> None:
    spec = banking_run(tmp_path)
    resolved = load_spec(spec, env=env, environ=dict(variables))
    text = render_dag(resolved)
    dag = parse_dag(text)

    assert dag.imports["airflow.sdk"] == ["DAG"]
    assert dag.imports["airflow.providers.standard.operators.bash"] == ["BashOperator"]
    assert dag.task_ids == ["run"]
    assert args_of(dag.command("run")) == run_args(spec.resolve(), env)
    # Restarted as soon as it ends, never two at once, never timed out.
    assert dag.kwargs["schedule"] == "@continuous"
    assert dag.kwargs["catchup"] is False and dag.kwargs["max_active_runs"] == 1
    assert dag.kwargs["dagrun_timeout"] is None
    assert dag.kwargs["dag_id"] == "bankflow_banking" and dag.kwargs["tags"] == ["bankflow", "banking"]
    task = dag.tasks["run"]
    assert task["execution_timeout"] is None and task["max_active_tis_per_dag"] == 1
    assert task["skip_on_exit_code"] is None  # 4 (dead letters) fails the try
    # A crash is retried with exponential backoff: the run resumes from its positions and the ledger.
    assert task["retries"] == RUN_RETRIES == 8
    assert task["retry_delay"] == "datetime.timedelta(seconds=30)"
    assert task["retry_exponential_backoff"] == 2.0
    assert task["max_retry_delay"] == "datetime.timedelta(seconds=1800)"
    assert "verify" not in text and "--stages" not in text
    assert "The schedule is @continuous" in dag.docstring and "No secret is in this file" in dag.docstring
    assert "SIGTERM" in dag.docstring and "pause the DAG first" in dag.docstring
    for secret in SECRETS:
        assert secret not in text
    for name in ("PGHOST", "CONNECT_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT_URL", "SNOWFLAKE_ACCOUNT"):
        assert BANKING_STACK_ENV[name] not in text, name


def test_run_mode_written_by_plan(tmp_path: Path) -> None:
    spec = banking_run(tmp_path)
    resolved = load_spec(spec, env="local", environ={})
    out = tmp_path / "plan"
    result = plan(resolved, out, check_live=False)
    written = (out / "airflow" / "bankflow_banking.py").read_text(encoding="utf-8")
    assert written == result.files["airflow/bankflow_banking.py"] == render_dag(resolved)
    assert parse_dag(written).task_ids == ["run"]


def test_run_mode_honours_an_explicit_schedule_and_retries(tmp_path: Path) -> None:
    spec = banking_run(tmp_path, "airflow:\n  mode: run\n  schedule: '*/10 * * * *'\n  retries: 0\n")
    dag = parse_dag(render_dag(load_spec(spec, env="local", environ={})))
    assert dag.kwargs["schedule"] == "*/10 * * * *"  # a restart on the next tick: no loop without retries
    assert dag.tasks["run"]["retries"] == 0
    assert "The schedule is @continuous" not in dag.docstring and "next tick" in dag.docstring


def test_run_mode_in_one_environment_only(tmp_path: Path) -> None:
    """`mode` is overridable per environment: stages locally, one `run` task on stack."""
    spec = minimal(tmp_path, "    airflow: {mode: run, retries: 3}\n")  # appended under environments.stack
    local = parse_dag(render_dag(load_spec(spec, environ={})))
    assert local.task_ids == [*STAGE_ORDER, "verify"] and local.kwargs["schedule"] == "@hourly"
    stack = parse_dag(render_dag(load_spec(spec, env="stack", environ={})))
    assert stack.task_ids == ["run"] and stack.kwargs["schedule"] == "@continuous"
    assert stack.tasks["run"]["retries"] == 3
    assert args_of(stack.command("run")) == run_args(spec.resolve(), "stack")


@pytest.mark.parametrize("section", ["mode: run\n  retries: 0", "mode: run\n  retries: 0\n  schedule: '@continuous'"])
def test_run_mode_on_continuous_refuses_zero_retries(tmp_path: Path, section: str) -> None:
    spec = minimal(tmp_path, f"airflow:\n  {section}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, environ={})
    [issue] = caught.value.issues
    assert issue.field == "airflow.retries" and "restart in a loop" in issue.message, issue
    assert "retries: 1 or more" in (issue.hint or ""), issue


def test_the_run_dag_runs_against_stand_ins_for_airflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    created = airflow_stand_ins(monkeypatch)
    spec = banking_run(tmp_path)
    text = render_dag(load_spec(spec, env="local", environ={}))
    exec(compile(text, "bankflow_banking.py", "exec"), {"__name__": "bankflow_banking"})
    [dag] = created
    assert dag.kwargs["schedule"] == "@continuous" and dag.kwargs["dagrun_timeout"] is None
    [task] = dag.tasks
    assert task.task_id == "run" and task.downstream == []
    assert task.kwargs["retry_delay"].total_seconds() == 30 and task.kwargs["max_retry_delay"].total_seconds() == 1800
    assert task.kwargs["execution_timeout"] is None


# ---------------------------------------------------------------- the spec's airflow: section


def minimal(tmp_path: Path, extra: str = "", old: str = "", new: str = "") -> Path:
    spec = copy_spec(MINIMAL, tmp_path)
    text = spec.read_text(encoding="utf-8")
    if old:
        assert old in text
        text = text.replace(old, new)
    spec.write_text(text + extra, encoding="utf-8")
    return spec


def test_airflow_section_schedule_dag_id_retries(tmp_path: Path) -> None:
    spec = minimal(tmp_path, "airflow:\n  schedule: '*/15  *   * * 1-5'\n  dag_id: mini.cdc-v2\n  retries: 2\n")
    resolved = load_spec(spec, environ={})
    dag = parse_dag(render_dag(resolved))
    assert dag.kwargs["schedule"] == "*/15 * * * 1-5"  # whitespace normalised
    assert dag.kwargs["dag_id"] == "mini.cdc-v2"
    assert dag.kwargs["default_args"].startswith("{'retries': 2,")
    assert dag.tasks["cdc"]["retries"] == 0
    check_tasks(dag, spec.resolve(), None, list(STAGE_ORDER))  # no environment: no --env

    out = tmp_path / "plan"
    result = plan(resolved, out, check_live=False)
    assert (out / "airflow" / "mini.cdc-v2.py").read_text(encoding="utf-8") == result.files["airflow/mini.cdc-v2.py"]


def test_an_environment_overlay_changes_the_schedule(tmp_path: Path) -> None:
    spec = minimal(tmp_path, "    airflow: {schedule: '@daily'}\n")  # appended under environments.stack
    assert parse_dag(render_dag(load_spec(spec, environ={}))).kwargs["schedule"] == "@hourly"
    stack = parse_dag(render_dag(load_spec(spec, env="stack", environ={})))
    assert stack.kwargs["schedule"] == "@daily"
    check_tasks(stack, spec.resolve(), "stack", list(STAGE_ORDER))


def test_no_transform_section_no_transform_task(tmp_path: Path) -> None:
    transform = "transform:\n  project_dir: minimal_dbt\n  steps:\n    - {command: run, select: [staging]}\n"
    spec = minimal(tmp_path, old=transform)
    dag = parse_dag(render_dag(load_spec(spec, environ={})))
    assert dag.task_ids == ["source", "cdc", "load", "verify"]
    check_tasks(dag, spec.resolve(), None, ["source", "cdc", "load"])


@pytest.mark.parametrize(("section", "field_", "message", "hint"), [
    ("schedule: '@every_minute'", "airflow.schedule", "is not an Airflow preset", "@hourly"),
    ("schedule: '*/5 * * *'", "airflow.schedule", "neither a cron expression of 5 fields nor a preset",
     "minute hour day-of-month month day-of-week"),
    ("schedule: '* * * * * $(id)'", "airflow.schedule", "neither a cron expression", "e.g. schedule:"),
    ("dag_id: \"x'; import os #\"", "airflow.dag_id", "is not a valid Airflow dag_id", "letters, digits"),
    ("dag_id: a/b", "airflow.dag_id", "is not a valid Airflow dag_id", "max 250"),
    ("retries: -1", "airflow.retries", "greater than or equal to 0", ""),
    ("schedul: '@daily'", "airflow", "schedul", "schedule"),
])
def test_bad_airflow_section(tmp_path: Path, section: str, field_: str, message: str, hint: str) -> None:
    spec = minimal(tmp_path, f"airflow:\n  {section}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, environ={})
    [issue] = caught.value.issues
    assert issue.field.startswith(field_) and message in issue.message and hint in (issue.hint or ""), issue


# ---------------------------------------------------------------- hostile strings


def fake_bankflow(tmp_path: Path) -> dict[str, str]:
    """PATH with a `bankflow` that prints its arguments as JSON, so bash's word splitting can be checked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "bankflow"
    script.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n", encoding="utf-8")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home")}


def run_in_bash(command: str, env: dict[str, str], cwd: Path) -> list[str]:
    """The command as an Airflow worker runs it: rendered by Jinja, then `bash -c`."""
    done = subprocess.run(["bash", "-c", airflow_renders(command)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=30, check=True)
    return ["bankflow", *json.loads(done.stdout)]


def test_hostile_strings_stay_data(tmp_path: Path) -> None:
    """Quotes, newlines, `$(...)`, backticks and Jinja syntax in every value: valid Python, each value read back
    exactly, each command one argument per value in bash, and nothing executed."""
    spec_path = f"/srv/{HOSTILE}/spec.yaml"
    text = render_dag_text(dag_id=f"dag{HOSTILE}", pipeline=f"name{HOSTILE}", spec_path=spec_path,
                           env=f"env{HOSTILE}", schedule=f"@hourly{HOSTILE}", retries=1,
                           description=f"desc{HOSTILE}\"\"\"", stages=list(STAGE_ORDER))
    dag = parse_dag(text)
    assert dag.kwargs["dag_id"] == f"dag{HOSTILE}" and dag.kwargs["schedule"] == f"@hourly{HOSTILE}"
    assert dag.kwargs["description"] == f"desc{HOSTILE}\"\"\"" and dag.kwargs["tags"] == ["bankflow", f"name{HOSTILE}"]
    assert HOSTILE not in dag.docstring and "\"\"\"" not in dag.docstring  # no spec text in the docstring
    check_tasks(dag, spec_path, f"env{HOSTILE}", list(STAGE_ORDER))

    env = fake_bankflow(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for stage in STAGE_ORDER:
        assert run_in_bash(dag.command(stage), env, work) == apply_args(spec_path, f"env{HOSTILE}", stage)
    assert run_in_bash(dag.command("verify"), env, work) == verify_args(spec_path, f"env{HOSTILE}")
    assert not list(work.iterdir()), "a command substitution ran"


def test_hostile_strings_stay_data_in_the_run_dag(tmp_path: Path) -> None:
    spec_path = f"/srv/{HOSTILE}/spec.yaml"
    text = render_run_dag_text(dag_id=f"dag{HOSTILE}", pipeline=f"name{HOSTILE}", spec_path=spec_path,
                               env=f"env{HOSTILE}", schedule=f"@continuous{HOSTILE}", retries=2,
                               description=f"desc{HOSTILE}\"\"\"")
    dag = parse_dag(text)
    assert dag.kwargs["dag_id"] == f"dag{HOSTILE}" and dag.kwargs["schedule"] == f"@continuous{HOSTILE}"
    assert dag.kwargs["description"] == f"desc{HOSTILE}\"\"\"" and dag.kwargs["tags"] == ["bankflow", f"name{HOSTILE}"]
    assert HOSTILE not in dag.docstring and "\"\"\"" not in dag.docstring
    assert args_of(dag.command("run")) == run_args(spec_path, f"env{HOSTILE}")
    work = tmp_path / "work"
    work.mkdir()
    assert run_in_bash(dag.command("run"), fake_bankflow(tmp_path), work) == run_args(spec_path, f"env{HOSTILE}")[1:]
    assert not list(work.iterdir()), "a command substitution ran"


@pytest.mark.parametrize("value", ["{", "}", "{{", "}}", "{}}", "{{ '{' }}", "{%- raw %}", "{#", "a{b}c", "${X}",
                                   "'", "\"", "\n", "", "--json", "-e"])
def test_each_argument_is_one_word_after_jinja_and_bash(value: str) -> None:
    assert args_of(bankflow_command("apply", value)) == ["bankflow", "apply", value]


def test_hostile_spec_directory_and_environment_name(tmp_path: Path) -> None:
    """A real spec in a directory whose name is hostile, with a hostile environment name and description."""
    directory = tmp_path / HOSTILE.replace("/", "_")
    directory.mkdir()
    env_name = "st'a\"ck $(touch pwned) {{ 7 * 7 }}"
    spec = minimal(directory)
    description = "d " + HOSTILE.replace("${HOME} ", "")  # ${...} in a spec value is a variable to interpolate
    text = spec.read_text(encoding="utf-8").replace(
        "name: mini\n", "name: mini\ndescription: " + json.dumps(description) + "\n", 1)
    spec.write_text(text + f"  {json.dumps(env_name)}:\n    cdc: {{engine: builtin}}\n", encoding="utf-8")
    resolved = load_spec(spec, env=env_name, environ={})
    dag = parse_dag(render_dag(resolved))
    assert dag.kwargs["description"] == description
    check_tasks(dag, spec.resolve(), env_name, list(STAGE_ORDER))
    work = tmp_path / "work"
    work.mkdir()
    assert run_in_bash(dag.command("cdc"), fake_bankflow(tmp_path), work) == apply_args(spec.resolve(), env_name, "cdc")
    assert not list(work.iterdir())


def test_a_hostile_pipeline_name_is_refused_by_the_spec(tmp_path: Path) -> None:
    spec = minimal(tmp_path, old="name: mini\n", new="name: \"mini'); import os #\"\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec, environ={})
    assert "pipeline name" in str(caught.value)


def test_bash_is_here() -> None:
    assert shutil.which("bash"), "the hostile-string tests run the commands with bash"
