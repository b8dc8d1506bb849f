"""The pipeline as an Airflow DAG (Airflow 3: `airflow.sdk`, the standard provider's `BashOperator`).

For those who keep their scheduler: `plan` writes `airflow/<dag_id>.py`, in one of two shapes (`airflow.mode`):
- `stages` (default): the pipeline's stages as tasks in order (`source`, `cdc`, `load`, `transform`; no transform
  task for a spec without `transform:`), each one `bankflow apply SPEC --env E --stages STAGE --json`, then
  `bankflow verify SPEC --env E --json`, on the schedule of the spec's `airflow:` section;
- `run`: one long-lived task, `exec bankflow run SPEC --env E`, which streams, loads and transforms until Airflow
  stops it with SIGTERM. Its schedule is `@continuous` (unless the spec sets one): Airflow starts the next run as
  soon as one ends, one at a time, so the pipeline stays on after a graceful stop (exit 0) as after a crash whose
  retries ran out; `schedule: None` would leave it off after either until a person triggers it. Each failure is
  retried with exponential backoff (a crashed run resumes from its acknowledged positions and the load ledger:
  nothing lost or loaded twice), never timed out (`execution_timeout=None` overrides a deployment's
  `default_task_execution_timeout`), and at most one instance runs (`max_active_tis_per_dag=1`).
The file names the spec and the environment only: every secret the spec reads stays in the environment of the
Airflow worker, which the tasks inherit.

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
    from bankflow.spec.models import Airflow

VERIFY_TASK = "verify"
RUN_TASK = "run"
DAG_TEMPLATE = "airflow/dag.py.j2"
RUN_DAG_TEMPLATE = "airflow/run_dag.py.j2"
# mode run: restarted as soon as it ends; each failure retried after 30 s, 1 min, 2 min, ... (each up to twice that:
# Airflow's jitter), at most 30 min apart: 8 retries span 1.5 to 2 h before the run fails and the next one starts.
RUN_SCHEDULE = "@continuous"
RUN_RETRIES = 8
RUN_RETRY_DELAY_SECONDS = 30
RUN_MAX_RETRY_DELAY_SECONDS = 30 * 60
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


def run_command(spec_path: str, env: str | None) -> str:
    """The run task's command: `exec` makes `bankflow run` bash's replacement, so the SIGTERM Airflow sends reaches
    it directly and its exit code is the task's."""
    scope = [spec_path] + (["--env", env] if env is not None else [])
    return "exec " + bankflow_command("run", *scope)


def render_run_dag_text(*, dag_id: str, pipeline: str, spec_path: str, env: str | None, schedule: str,
                        retries: int, description: str) -> str:
    """The `run` mode's DAG file from plain values: one long-lived task (each value escaped here)."""
    return render_template(
        RUN_DAG_TEMPLATE, dag_id=repr(dag_id), description=repr(description), schedule=repr(schedule),
        continuous=schedule == RUN_SCHEDULE, retries=repr(int(retries)), tags=repr(["bankflow", pipeline]),
        task_id=repr(RUN_TASK), command=repr(run_command(spec_path, env)),
        retry_delay=repr(RUN_RETRY_DELAY_SECONDS), max_retry_delay=repr(RUN_MAX_RETRY_DELAY_SECONDS))


def run_schedule(airflow: Airflow) -> str:
    """mode run's schedule: the spec's when it names one, else @continuous (the default `@hourly` is the stages'
    cadence; for a task that never ends it would only delay a restart by up to an hour)."""
    return airflow.schedule if "schedule" in airflow.model_fields_set else RUN_SCHEDULE


def run_retries(airflow: Airflow) -> int:
    """mode run's retries: the spec's when it names them, else RUN_RETRIES (a crash must not end the pipeline)."""
    return airflow.retries if "retries" in airflow.model_fields_set else RUN_RETRIES


def render_dag(resolved: ResolvedSpec) -> str:
    """airflow/<dag_id>.py for the resolved spec: its absolute path (a task runs in a temporary directory) and
    its environment, passed to every command explicitly."""
    from bankflow.stages.base import STAGE_ORDER

    spec = resolved.spec
    description = spec.description or f"bankflow pipeline {spec.name}"
    if spec.airflow.mode == "run":
        return render_run_dag_text(
            dag_id=dag_id(resolved), pipeline=spec.name, spec_path=str(resolved.path), env=resolved.env,
            schedule=run_schedule(spec.airflow), retries=run_retries(spec.airflow), description=description)
    stages = [s for s in STAGE_ORDER if s != "transform" or spec.transform is not None]
    return render_dag_text(
        dag_id=dag_id(resolved), pipeline=spec.name, spec_path=str(resolved.path), env=resolved.env,
        schedule=spec.airflow.schedule, retries=spec.airflow.retries, description=description, stages=stages)
