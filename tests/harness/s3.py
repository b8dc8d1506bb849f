"""A real S3 HTTP endpoint from moto's server, for s3fs, DuckDB and fakesnow in tests and benchmarks (test-only)."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bankflow.process import ServiceError, free_port, log_tail, spawn, terminate, wait_for_port

ACCESS_KEY = "test-access-key"  # moto takes any; 8+ characters, as bankflow requires of secrets
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"


class S3Server:
    """moto's S3 server on 127.0.0.1; state is gone when it stops.

    By default a thread of this process (ThreadedMotoServer). `child_process=True` runs it as a child process
    instead, so benchmarks measure the CPU of the client alone, not the server's share of it.
    """

    def __init__(self, port: int | None = None, *, child_process: bool = False, log_dir: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.child_process = child_process
        self.log_dir = log_dir
        self._server: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise ServiceError("S3 server has no port yet; call start() first")
        return f"http://{self.host}:{self.port}"

    def is_running(self) -> bool:
        return self._server is not None or (self._proc is not None and self._proc.poll() is None)

    def start(self, timeout: float = 30.0) -> S3Server:
        if self.is_running():
            return self
        t0 = time.monotonic()
        if self.port is None:
            self.port = free_port(self.host)
        log_path: Path | None = None
        if self.child_process:
            log_path = (self.log_dir or Path(tempfile.gettempdir())) / f"moto-s3-{self.port}.log"
            code = f"from moto.server import main; main(['-H', '{self.host}', '-p', '{self.port}'])"
            self._proc = spawn([sys.executable, "-c", code], log_path)
        else:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
            self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
            self._server.start()
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            log = f":\n{log_tail(log_path)}" if log_path is not None else ""
            raise ServiceError(f"moto S3 server did not listen on {self.host}:{self.port} within {timeout:.0f}s{log}")
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options (also what pandas/pyarrow ``storage_options`` want)."""
        return {"key": ACCESS_KEY, "secret": SECRET_KEY,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION}}

    def filesystem(self, **kwargs: Any) -> Any:
        """A fresh s3fs.S3FileSystem pointed at this server (not fsspec's shared instance cache)."""
        import s3fs

        return s3fs.S3FileSystem(**{**self.storage_options(), "skip_instance_cache": True, **kwargs})

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def create_bucket(self, name: str) -> None:
        """Create a bucket; an existing one is fine."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
