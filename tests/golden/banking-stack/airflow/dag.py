"""A bankflow pipeline as an Airflow DAG, rendered by `bankflow plan` (render it again rather than edit it).

Each task runs one stage of the pipeline with the bankflow CLI, in order: source, cdc, load, transform;
then `verify` reconciles the source with the warehouse. A task fails when its command exits non-zero, and the
tasks after it do not run: `bankflow apply` exits 1 when the stage failed and 4 when it ran but sent events to
the dead-letter store (see `bankflow deadletters`); `bankflow verify` exits 1 on any difference. No exit code
skips a task (`skip_on_exit_code=None`), and the cdc task never retries: a second try would not count the dead
letters of the first and would pass. Every stage is idempotent: the next run catches up from where the last one
stopped.

No secret is in this file: it names the spec file and the environment only. The variables the spec reads
(passwords, keys, URLs) come from the environment of the Airflow worker, which every task inherits; bankflow
must be installed there, on PATH, and the spec must be at the path below.
"""

from __future__ import annotations

import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG(
    dag_id='bankflow_banking',
    description='Core banking tables captured with CDC into raw, modelled by dbt.',
    doc_md=__doc__,
    schedule='@hourly',
    start_date=datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,  # two runs at once would compete for the replication slot, the lake and the warehouse
    default_args={
        "retries": 0,
        "retry_delay": datetime.timedelta(minutes=5),
        "do_xcom_push": False,  # the run report is in the task's log
    },
    tags=['bankflow', 'banking'],
) as dag:
    source = BashOperator(
        task_id='source',
        bash_command='bankflow apply <REPO>/pipelines/banking.yaml --env stack --stages source --json',
        skip_on_exit_code=None,
    )
    cdc = BashOperator(
        task_id='cdc',
        bash_command='bankflow apply <REPO>/pipelines/banking.yaml --env stack --stages cdc --json',
        skip_on_exit_code=None,
        retries=0,  # a second try would not count the first one's dead letters (exit 4) and would pass
    )
    load = BashOperator(
        task_id='load',
        bash_command='bankflow apply <REPO>/pipelines/banking.yaml --env stack --stages load --json',
        skip_on_exit_code=None,
    )
    transform = BashOperator(
        task_id='transform',
        bash_command='bankflow apply <REPO>/pipelines/banking.yaml --env stack --stages transform --json',
        skip_on_exit_code=None,
    )
    verify = BashOperator(
        task_id='verify',
        bash_command='bankflow verify <REPO>/pipelines/banking.yaml --env stack --json',
        skip_on_exit_code=None,
    )

    source >> cdc >> load >> transform >> verify
