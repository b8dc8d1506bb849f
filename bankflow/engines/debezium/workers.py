"""Several Kafka consumer processes committing in the spec's group, and their supervision: spawn N workers,
collect what they report, replace one that dies (it replays its predecessor's orphans to the same keys), stop
them all on a signal or when asked, and add up their results.

Workers are spawned (not forked: librdkafka's threads do not survive a fork) and report through a queue:
("progress", index, pid, info) now and then, ("result", index, pid, ConsumeResult.to_dict()) at the end. A
worker that ends without a result, or with a non-zero exit code, is a failure; it is restarted unless the
run is stopping or the restart limit is reached, and every failure is listed in the summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as queue_mod
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bankflow.engines.debezium.consumer import consume_to_lake, topic_partitions
from bankflow.errors import BankflowError
from bankflow.spec.loader import ResolvedSpec
from bankflow.stages.base import Progress
from bankflow.stopping import stop_on_signals

log = logging.getLogger(__name__)

_SUMMED = ("events", "tombstones", "dead_letters", "rows", "bytes", "commits", "orphans_replayed",
           "skipped_replayed", "dropped_partial")
Assignment = list[tuple[str, int]] | None  # a worker's static (topic, partition)s, or None: it subscribes


def _worker_main(index: int, resolved: ResolvedSpec, follow: bool, queue: Any, progress: bool,
                 assignment: Assignment) -> None:
    """Child process body: SIGTERM stops the loop cleanly (flush + commit), the result goes to `queue`.

    The parent stops workers with SIGTERM rather than a shared multiprocessing.Event: setting such an event
    blocks forever once a process that waited on it was killed with SIGKILL. SIGINT is ignored: a Ctrl-C in
    the terminal reaches the whole process group, and the parent, which gets it too, stops its workers; a
    second SIGTERM (the parent giving up) makes the worker give up too.
    """
    from bankflow.log import configure, configure_worker

    configure_worker(f"worker{index}")  # the parent CLI's level and format (a spawned process has no handler)
    if os.environ.get("BANKFLOW_CONSUME_DEBUG"):
        configure(verbose=2, prefix=f"worker{index} %(process)d ")
        import faulthandler

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def report(info: dict[str, Any]) -> None:
        queue.put(("progress", index, os.getpid(), info))

    with stop_on_signals(threading.Event(), (signal.SIGTERM,)) as stop:
        _stop_with_parent(stop)
        with partition_locks(resolved, assignment or [], stop):
            result = consume_to_lake(resolved, follow=follow, stop=stop, progress=report if progress else None,
                                     assignment=assignment)
    queue.put(("result", index, os.getpid(), result.to_dict()))


def _stop_with_parent(stop: threading.Event, interval: float = 0.5) -> None:
    """A worker whose supervisor died (kill -9) stops cleanly (flush + commit) instead of running on beside the
    next supervisor's workers: a daemon thread watches the parent process."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(interval):
            if os.getppid() != parent:
                log.warning("the supervisor (pid %d) is gone: stopping", parent)
                stop.set()
                return

    threading.Thread(target=watch, name="bankflow-parent-watch", daemon=True).start()


LOCK_WAIT = 120.0  # seconds a worker waits for a partition's previous owner to flush, commit and let go


@contextlib.contextmanager
def partition_locks(resolved: ResolvedSpec, assignment: Sequence[tuple[str, int]],
                    stop: threading.Event | None = None, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Fencing for static assignments: an exclusive lock per (topic, partition) under the state dir, held while
    the worker owns it, so two workers (of two supervisors) never consume one partition at once. The OS drops a
    lock when its process dies, whatever killed it. Locks on one machine's file system."""
    import fcntl

    directory = resolved.state_dir / "consume-locks"
    directory.mkdir(parents=True, exist_ok=True)
    handles = []
    try:
        for topic, partition in assignment:
            handle = open(directory / f"{topic}-{partition}.lock", "a+")  # noqa: SIM115 - held until the end
            handles.append(handle)
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                        raise BankflowError(f"{topic}[{partition}] is still owned by another consumer after "
                                            f"{wait:.0f}s (a worker of an earlier consume?): stop it first") from None
                    time.sleep(0.2)
        yield
    finally:
        for handle in handles:
            handle.close()


def _assignments(resolved: ResolvedSpec, workers: int) -> list[Assignment]:
    """One entry per worker: its partitions dealt out round robin when every topic exists, else None for all."""
    if workers == 1:
        return [None]
    found, missing = topic_partitions(resolved)
    if missing:
        log.warning("topics %s do not exist yet: %d workers subscribe and rebalance", missing, workers)
        return [None] * workers
    if not found:
        return [None] * workers
    workers = min(workers, len(found))
    return [found[i::workers] for i in range(workers)]


class _Supervisor:
    """The worker processes of one run and what they reported."""

    def __init__(self, resolved: ResolvedSpec, plan: list[Assignment], *, follow: bool, progress: bool,
                 max_restarts: int) -> None:
        import multiprocessing as mp

        self.resolved = resolved
        self.plan = plan
        self.follow = follow
        self.progress = progress
        self.max_restarts = max_restarts
        self.ctx = mp.get_context("spawn")
        self.queue: Any = self.ctx.Queue()
        self.procs: dict[int, Any] = {}
        self.results: list[dict[str, Any]] = []
        self.reported: set[int] = set()  # pids that sent their result
        self.progress_by_worker: dict[int, dict[str, Any]] = {}
        self.display = Progress(progress)
        self.failures: list[str] = []
        self.restarts = 0
        self.stopping = False
        self.started = time.monotonic()

    def spawn(self, index: int) -> None:
        proc = self.ctx.Process(target=_worker_main, args=(index, self.resolved, self.follow, self.queue,
                                                           self.progress, self.plan[index]),
                                name=f"bankflow-consume-{index}", daemon=False)
        proc.start()
        self.procs[index] = proc

    def stop_all(self) -> None:
        """Ask every live worker to stop cleanly (a second time: to give up)."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    # ---- reports

    def collect(self, timeout: float) -> bool:
        """Take one report off the queue (waiting up to `timeout`); False if none came."""
        try:
            kind, index, pid, payload = self.queue.get(timeout=timeout)
        except queue_mod.Empty:
            return False
        if kind == "result":
            self.results.append({"worker": index, "pid": pid, **payload})
            self.reported.add(pid)
        else:
            self.progress_by_worker[index] = payload
            self._show_progress()
        return True

    def _show_progress(self) -> None:
        if not self.progress:
            return
        reports = self.progress_by_worker.values()
        total = sum(int(p.get("events", 0)) for p in reports)
        files = sum(int(p.get("files", 0)) for p in reports)
        rate = total / max(time.monotonic() - self.started, 1e-6)
        self.display.update("consume", f"{len(self.procs)} workers, {total:,} events ({rate:,.0f}/s), {files} files")

    # ---- supervision

    def reap(self) -> None:
        """Workers that ended: their late result is collected, a failure recorded, and the worker restarted."""
        for index, proc in list(self.procs.items()):
            if proc.is_alive():
                continue
            proc.join()
            while proc.pid not in self.reported and proc.exitcode == 0:  # its result may still be queued
                before = len(self.reported)
                self.collect(1.0)
                if len(self.reported) == before:
                    break
            del self.procs[index]
            if proc.exitcode == 0 and proc.pid in self.reported:
                continue
            self.failures.append(f"worker {index} (pid {proc.pid}) exited with {proc.exitcode}")
            if not self.stopping and self.restarts < self.max_restarts:
                self.restarts += 1
                self.spawn(index)

    def run(self, stops: Sequence[threading.Event]) -> None:
        """Until every worker has ended; any of `stops` set makes them stop cleanly."""
        try:
            for index in range(len(self.plan)):
                self.spawn(index)
            while self.procs:
                if not self.stopping and any(stop.is_set() for stop in stops):
                    self.stop_all()
                self.collect(0.2)
                self.reap()
            while self.collect(0.05):  # results that arrived after the last process ended
                pass
        finally:
            if self.procs:  # interrupted (a second signal, an error): stop, or give up on, what still runs
                self.stop_all()
            for proc in self.procs.values():
                proc.join(timeout=30)

    def summary(self) -> dict[str, Any]:
        total: dict[str, Any] = {"workers": len(self.plan), "restarts": self.restarts, "failures": self.failures,
                                 **dict.fromkeys(_SUMMED, 0), "files": [],
                                 "seconds": round(time.monotonic() - self.started, 3), "per_worker": self.results}
        files: set[str] = set()
        for result in self.results:
            for key in _SUMMED:
                total[key] += int(result.get(key, 0))
            files.update(result.get("files", []))
        total["files"] = sorted(files)
        total["stopped"] = sorted({r["stopped"] for r in self.results if r.get("stopped")})
        return total


def run_workers(resolved: ResolvedSpec, *, workers: int, follow: bool, progress: bool,
                max_restarts: int | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """N consumer processes committing in the spec's group; a worker that dies is replaced (same partitions).

    When the topics exist, partitions are dealt out statically (round robin) instead of through group
    rebalances: Tansu's group coordinator can stall when members join, die and rejoin, and each JoinGroup costs
    half a session timeout there. A replaced worker replays its predecessor's orphan files to the same keys.
    If some topic does not exist yet, workers subscribe and rely on rebalancing (revoke → flush + commit).
    SIGINT/SIGTERM (`bankflow.stopping`) or `stop` stop the workers cleanly; a second signal gives up.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    plan = _assignments(resolved, workers)
    limit = 3 * len(plan) if max_restarts is None else max_restarts
    supervisor = _Supervisor(resolved, plan, follow=follow, progress=progress, max_restarts=limit)
    with stop_on_signals(threading.Event()) as signalled:
        supervisor.run([signalled] if stop is None else [signalled, stop])
    return supervisor.summary()
