"""The pipeline as an Airflow DAG (Airflow 3: `airflow.sdk`, the standard provider's `BashOperator`).

For those who keep their scheduler: `plan` writes `airflow/<dag_id>.py`, whose tasks are the pipeline's stages in
order (`source`, `cdc`, `load`, `transform`; no transform task for a spec without `transform:`), each one
`bankflow apply SPEC --env E --stages STAGE --json`, then `bankflow verify SPEC --env E --json`, on the schedule of
the spec's `airflow:` section. The file names the spec and the environment only: every secret the spec reads
stays in the environment of the Airflow worker, which the tasks inherit.

Every string from the spec is escaped for where it goes: each command argument is quoted for bash
(`shlex.quote`), then each `{` in it is written as a Jinja expression (Airflow renders `bash_command` as a Jinja
template before bash runs it, so a path holding `{{ ... }}` would otherwise be evaluated), and every value is a
Python literal written by `repr()`; the template receives literals only.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from bankflow.render.templating import render_template

if TYPE_CHECKING:
    from bankflow.spec.loader import ResolvedSpec

VERIFY_TASK = "verify"
DAG_TEMPLATE = "airflow/dag.py.j2"
# A task the command's exit code fails without retrying: a second try of cdc would not count the dead letters
# the first one sent (exit 4) and would pass.
NO_RETRY = frozenset({"cdc"})


def dag_id(resolved: ResolvedSpec) -> str:
    return resolved.spec.airflow.dag_id or f"bankflow_{resolved.spec.name}"


def dag_file_name(resolved: ResolvedSpec) -> str:
    """The DAG's file in the plan directory (the dag_id allows no '/': it stays in airflow/)."""
    return f"airflow/{dag_id(resolved)}.py"


def no_jinja(text: str) -> str:
    """`text` as a Jinja template that renders to `text` itself: each `{` (what opens `{{`, `{%` and `{#`) becomes
    the expression `{{ '{' }}`; nothing else in a template is syntax."""
    return text.replace("{", "{{ '{' }}")


def bankflow_command(*args: str) -> str:
    """A bankflow command line for a BashOperator: each argument quoted for bash, then hidden from Jinja."""
    return " ".join(no_jinja(shlex.quote(arg)) for arg in ("bankflow", *args))


def stage_commands(spec_path: str, env: str | None, stages: list[str]) -> list[tuple[str, str]]:
    """(task_id, bash_command) for every task, in the order they run: the stages, then verify."""
    scope = [spec_path] + (["--env", env] if env is not None else [])
    tasks = [(stage, bankflow_command("apply", *scope, "--stages", stage, "--json")) for stage in stages]
    return [*tasks, (VERIFY_TASK, bankflow_command("verify", *scope, "--json"))]


def render_dag_text(*, dag_id: str, pipeline: str, spec_path: str, env: str | None, schedule: str, retries: int,
                    description: str, stages: list[str]) -> str:
    """The DAG file from plain values (each one escaped here: the template writes only Python literals)."""
    # The task ids are bankflow's stage names, not the spec's text: plain identifiers, also the variables' names.
    commands = stage_commands(spec_path, env, stages)
    for task_id, _ in commands:
        if not task_id.isidentifier():
            raise ValueError(f"task id {task_id!r} is not an identifier")
    tasks = [{"var": task_id, "task_id": repr(task_id), "command": repr(command), "no_retry": task_id in NO_RETRY}
             for task_id, command in commands]
    return render_template(
        DAG_TEMPLATE, dag_id=repr(dag_id), description=repr(description), schedule=repr(schedule),
        retries=repr(int(retries)), tags=repr(["bankflow", pipeline]), tasks=tasks,
        stage_list=", ".join(stages), chain=" >> ".join(task_id for task_id, _ in commands))


def render_dag(resolved: ResolvedSpec) -> str:
    """airflow/<dag_id>.py for the resolved spec: its absolute path (a task runs in a temporary directory) and
    its environment, passed to every command explicitly."""
    from bankflow.stages.base import STAGE_ORDER

    spec = resolved.spec
    stages = [s for s in STAGE_ORDER if s != "transform" or spec.transform is not None]
    return render_dag_text(
        dag_id=dag_id(resolved), pipeline=spec.name, spec_path=str(resolved.path), env=resolved.env,
        schedule=spec.airflow.schedule, retries=spec.airflow.retries,
        description=spec.description or f"bankflow pipeline {spec.name}", stages=stages)
