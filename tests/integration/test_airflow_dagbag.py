"""The DAGs `bankflow plan` writes, loaded by Airflow itself: apache-airflow 3.3's DagBag (what the DAG processor
runs) imports each file, DagSerialization serializes it and checks it against Airflow's schema (what the scheduler
reads), and the tasks, their order, their commands as Airflow renders them, the schedule and the retry and
timeout settings are read back from Airflow's objects.

Airflow lives in a venv of its own (`make airflow-venv`: .venv-airflow, pinned by .ci/airflow-constraints.txt),
since its pins collide with bankflow's; these tests run its python in a subprocess (BANKFLOW_AIRFLOW_PYTHON
overrides the path) with AIRFLOW_HOME in a temporary directory. Parsing needs no metadata database.

The `run` task is also executed with Airflow's own BashOperator against a stand-in `bankflow` on PATH: started,
then stopped with the operator's on_kill (what Airflow's task runner calls on SIGTERM), which signals the
command's process group; the stand-in is bash's direct replacement (`exec`), sees SIGTERM, and its exit code
decides the try: 0 succeeds, 4 fails it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.specs.support import BANKING_STACK_ENV, REPO, SECRETS, copy_spec

AIRFLOW_PYTHON = Path(os.environ.get("BANKFLOW_AIRFLOW_PYTHON", REPO / ".venv-airflow" / "bin" / "python"))
STAGES = ["source", "cdc", "load", "transform", "verify"]
CASES = [("stages", "local"), ("stages", "stack"), ("run", "local"), ("run", "stack")]
# Set in Airflow's environment: the stages' tasks take it, the run task's explicit execution_timeout=None does not.
DEFAULT_TIMEOUT_SECONDS = 3600

LOADER = r'''
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization

def seconds(delta):
    return None if delta is None else delta.total_seconds()

out = {}
for folder in sys.argv[2:]:
    bag = DagBag(dag_folder=folder)
    dags = {}
    for dag_id, dag in bag.dags.items():
        serialized = json.loads(json.dumps(DagSerialization.to_dict(dag)))  # what the scheduler reads
        DagSerialization.validate_schema(serialized)
        timetable = serialized["dag"]["timetable"]
        tasks = {}
        for task in dag.tasks:
            tasks[task.task_id] = {
                "operator": type(task).__module__ + "." + type(task).__name__,
                "command": task.render_template(task.bash_command, {}),  # the Jinja pass Airflow makes
                "upstream": sorted(task.upstream_task_ids), "downstream": sorted(task.downstream_task_ids),
                "retries": task.retries, "retry_delay": seconds(task.retry_delay),
                "backoff": float(task.retry_exponential_backoff), "max_retry_delay": seconds(task.max_retry_delay),
                "execution_timeout": seconds(task.execution_timeout),
                "max_active_tis_per_dag": task.max_active_tis_per_dag,
                "skip_on_exit_code": list(task.skip_on_exit_code), "do_xcom_push": task.do_xcom_push,
            }
        dags[dag_id] = {
            "file": dag.fileloc, "timetable": timetable["__type"], "timetable_args": timetable["__var"],
            "max_active_runs": dag.max_active_runs, "catchup": dag.catchup,
            "dagrun_timeout": seconds(dag.dagrun_timeout), "tags": sorted(dag.tags),
            "tasks": tasks, "order": [t.task_id for t in dag.topological_sort()],
        }
    out[folder] = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": dags}
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
'''

STOPPER = r'''
import os, sys, threading, time
from airflow.dag_processing.dagbag import DagBag

[dag] = DagBag(dag_folder=sys.argv[1]).dags.values()
task = dag.get_task("run")
task.bash_command = task.render_template(task.bash_command, {})
started = sys.argv[2]
result = {}

def execute():
    try:
        result["returned"] = task.execute(context={})
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"

thread = threading.Thread(target=execute)
thread.start()
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not open(started).read():
    time.sleep(0.05)
task.on_kill()  # what the task runner does on SIGTERM: SIGTERM to the command's process group
thread.join(60)
print("RESULT", result, flush=True)
print("PID", os.getpid(), flush=True)
'''

FAKE_BANKFLOW = r'''#!{python}
"""A stand-in for `bankflow run`: records its arguments and process ids, then waits for SIGTERM."""
import json, os, signal, sys, time

def stop(signum, frame):
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps({{"signal": signum, "pid": os.getpid()}}) + "\n")
    sys.exit(int(os.environ["FAKE_EXIT"]))

signal.signal(signal.SIGTERM, stop)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid(), "ppid": os.getppid()}}) + "\n")
print("bankflow run: streaming", flush=True)
time.sleep(120)
sys.exit(99)
'''


def airflow_python() -> Path:
    if not AIRFLOW_PYTHON.exists():
        pytest.fail(f"{AIRFLOW_PYTHON} is missing: these tests load the DAGs with Airflow's own DagBag, from a venv "
                    "of its own; create it with `make airflow-venv` (or point BANKFLOW_AIRFLOW_PYTHON at a python "
                    "with apache-airflow 3.3 installed)", pytrace=False)
    return AIRFLOW_PYTHON


def airflow_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Airflow's environment: its home in `tmp`, nothing from the machine's Airflow (if any) or bankflow's venv."""
    home = tmp / "airflow_home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DEFAULT_TASK_EXECUTION_TIMEOUT": str(DEFAULT_TIMEOUT_SECONDS), **extra}


def run_airflow(script: str, args: list[str], tmp: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "airflow_script.py"
    path.write_text(script, encoding="utf-8")
    done = subprocess.run([str(airflow_python()), str(path), *args], env=airflow_env(tmp, **extra), cwd=tmp,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"Airflow's python failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def plan_dag(root: Path, mode: str, env: str) -> tuple[Path, Path]:
    """`bankflow plan --offline` of a copy of pipelines/banking.yaml (with `airflow: {mode: run}` for run):
    (the spec, the plan's airflow/ folder)."""
    case = root / f"{mode}-{env}"
    case.mkdir()
    spec = copy_spec(REPO / "pipelines" / "banking.yaml", case)
    if mode == "run":
        spec.write_text(spec.read_text(encoding="utf-8") + "airflow:\n  mode: run\n", encoding="utf-8")
    out = case / "plan"
    variables = {**os.environ, **(BANKING_STACK_ENV if env == "stack" else {})}
    done = subprocess.run([sys.executable, "-m", "bankflow", "plan", str(spec), "--env", env, "--out", str(out),
                           "--offline", "--quiet"], env=variables, cwd=case, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode in (0, 3), done.stderr  # 3: differs from the (absent) previous plan
    return spec.resolve(), out / "airflow"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, Path, dict[str, Any]]]:
    """Every case planned, then all loaded by one DagBag subprocess: (mode, env) -> (spec, dag file, result)."""
    root = tmp_path_factory.mktemp("airflow_dags")
    planned = {case: plan_dag(root, *case) for case in CASES}
    result = root / "loaded.json"
    run_airflow(LOADER, [str(result), *(str(folder) for _, folder in planned.values())], root)
    bags = json.loads(result.read_text(encoding="utf-8"))
    out = {}
    for case, (spec, folder) in planned.items():
        dag_file = folder / "bankflow_banking.py"  # (beside it, the __pycache__ of its import)
        out[case] = (spec, dag_file, bags[str(folder)])
    return out


def args(command: str) -> list[str]:
    return shlex.split(command)


@pytest.mark.parametrize("env", ["local", "stack"])
def test_the_stages_dag_loads_in_airflow(loaded: dict, env: str) -> None:
    spec, dag_file, bag = loaded[("stages", env)]
    assert bag["import_errors"] == {}
    [(dag_id, dag)] = bag["dags"].items()
    assert dag_id == "bankflow_banking" and dag["file"] == str(dag_file)
    assert dag["timetable"] == "airflow.timetables.trigger.CronTriggerTimetable"
    assert dag["timetable_args"]["expression"] == "0 * * * *"  # @hourly
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False and dag["tags"] == ["bankflow", "banking"]
    tasks = dag["tasks"]
    assert dag["order"] == STAGES and sorted(tasks) == sorted(STAGES)
    for before, task_id, after in zip([None, *STAGES[:-1]], STAGES, [*STAGES[1:], None], strict=True):
        task = tasks[task_id]
        assert task["upstream"] == ([before] if before else []) and task["downstream"] == ([after] if after else [])
        assert task["operator"] == "airflow.providers.standard.operators.bash.BashOperator"
        assert task["skip_on_exit_code"] == [] and task["do_xcom_push"] is False
        assert task["execution_timeout"] == DEFAULT_TIMEOUT_SECONDS  # the deployment's default applies here
    for stage in STAGES[:-1]:
        assert args(tasks[stage]["command"]) == ["bankflow", "apply", str(spec), "--env", env, "--stages", stage,
                                                 "--json"]
    assert args(tasks["verify"]["command"]) == ["bankflow", "verify", str(spec), "--env", env, "--json"]
    assert tasks["cdc"]["retries"] == 0 and tasks["load"]["retry_delay"] == 300


@pytest.mark.parametrize("env", ["local", "stack"])
def test_the_run_dag_loads_in_airflow(loaded: dict, env: str) -> None:
    spec, dag_file, bag = loaded[("run", env)]
    assert bag["import_errors"] == {}
    [(dag_id, dag)] = bag["dags"].items()
    assert dag_id == "bankflow_banking" and dag["file"] == str(dag_file)
    # Started again as soon as a run ends, one run at a time, never timed out.
    assert dag["timetable"] == "airflow.timetables.simple.ContinuousTimetable"  # schedule="@continuous"
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False and dag["dagrun_timeout"] is None
    assert dag["order"] == ["run"]
    task = dag["tasks"]["run"]
    assert task["upstream"] == [] and task["downstream"] == []
    assert args(task["command"]) == ["exec", "bankflow", "run", str(spec), "--env", env]
    assert task["execution_timeout"] is None  # even with the deployment's default_task_execution_timeout set
    assert task["max_active_tis_per_dag"] == 1 and task["skip_on_exit_code"] == []
    assert (task["retries"], task["retry_delay"], task["backoff"], task["max_retry_delay"]) == (8, 30, 2.0, 1800)


def test_no_secret_in_the_dag_files(loaded: dict) -> None:
    for _spec, dag_file, _bag in loaded.values():
        text = dag_file.read_text(encoding="utf-8")
        for secret in SECRETS:
            assert secret not in text, dag_file
        assert BANKING_STACK_ENV["PGHOST"] not in text and BANKING_STACK_ENV["CONNECT_URL"] not in text


@pytest.mark.parametrize("exit_code", [0, 4])
def test_airflow_stops_the_run_task_with_sigterm(loaded: dict, tmp_path: Path, exit_code: int) -> None:
    """Airflow's BashOperator runs the rendered command; on_kill's SIGTERM reaches the `bankflow` process itself
    (exec: bash's pid is bankflow's), which exits cleanly: exit 0 is a successful try, 4 a failed one."""
    spec, dag_file, _bag = loaded[("run", "local")]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bankflow"
    fake.write_text(FAKE_BANKFLOW.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)
    log = tmp_path / "fake.log"
    log.write_text("", encoding="utf-8")
    done = run_airflow(STOPPER, [str(dag_file.parent), str(log)], tmp_path, PATH=f"{bin_dir}:/usr/bin:/bin",
                       FAKE_LOG=str(log), FAKE_EXIT=str(exit_code))
    started, stopped = (json.loads(line) for line in log.read_text(encoding="utf-8").splitlines())
    assert started["argv"] == ["run", str(spec), "--env", "local"]
    assert stopped == {"signal": 15, "pid": started["pid"]}  # SIGTERM, to the process bash became
    [result] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    [airflow_pid] = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PID ")]
    assert started["ppid"] == airflow_pid  # no bash in between: `exec` made bash the bankflow process
    if exit_code == 0:
        assert "returned" in result and "error" not in result, result
    else:
        assert "exit code 4" in result and "AirflowException" in result, result
    assert "Sending SIGTERM signal to process group" in done.stdout + done.stderr
