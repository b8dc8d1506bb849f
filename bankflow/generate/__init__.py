"""Workload generation: run a pipeline's workload module (inserts, updates, deletes) against its source.

The library part is generic (options, result counts, the runner, COPY helpers); what a workload does to
which tables is the workload module's business (see ``pipelines/workloads/banking.py``).
"""

from bankflow.generate.contract import ProgressCallback, WorkloadError, WorkloadOptions, WorkloadResult
from bankflow.generate.runner import load_workload, run_workload

__all__ = [
    "ProgressCallback",
    "WorkloadError",
    "WorkloadOptions",
    "WorkloadResult",
    "load_workload",
    "run_workload",
]
