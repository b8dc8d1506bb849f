"""ConnectClient against a scripted HTTP server: the answers Kafka Connect gives, and none at all."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bankflow.engines.debezium.connect import ConnectClient, ConnectUnreachable
from bankflow.errors import StageError
from bankflow.process import free_port

RUNNING = {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "RUNNING"}]}


class _Script:
    """(method, path) → (status, body); each call is recorded."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.calls: list[tuple[str, str, Any]] = []

    def on(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.answers[(method, path)] = list(answers)

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        queue = self.answers.get((method, path), [(404, {"error_code": 404, "message": "not found"})])
        return queue.pop(0) if len(queue) > 1 else queue[0]  # the last answer repeats


@pytest.fixture()
def connect() -> Iterator[tuple[ConnectClient, _Script]]:
    script = _Script()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            script.calls.append((self.command, self.path, body))
            status, payload = script.answer(self.command, self.path)
            raw = b"" if payload is None else (payload.encode() if isinstance(payload, str)
                                              else json.dumps(payload).encode())
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_PUT = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield ConnectClient(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5.0), script
    finally:
        server.shutdown()
        server.server_close()


def test_server_info_plugins_and_readiness(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    script.on("GET", "/", (200, {"version": "4.3.0", "commit": "abc", "kafka_cluster_id": "x"}))
    script.on("GET", "/connector-plugins", (200, [{"class": "a.B", "type": "source", "version": "1"}]))
    script.on("GET", "/connectors", (200, ["one", "two"]))
    assert client.ready()
    assert client.server_info()["version"] == "4.3.0"
    assert client.plugins() == [{"class": "a.B", "type": "source", "version": "1"}]
    assert client.connectors() == ["one", "two"]


def test_ready_is_false_while_the_worker_starts_or_is_gone(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    script.on("GET", "/", (503, "<html>starting</html>"))  # Jetty's own error page: not JSON
    assert client.ready() is False
    with pytest.raises(StageError, match="answered 503: <html>starting</html>"):
        client.server_info()
    gone = ConnectClient(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    assert gone.ready() is False
    with pytest.raises(ConnectUnreachable, match=r"cannot reach Kafka Connect at http://127\.0\.0\.1:"):
        gone.status("x")


def test_connector_lifecycle(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    assert client.connector_config("bf") is None
    assert client.status("bf") is None
    assert client.delete("bf") is False  # nothing of that name: not an error
    script.on("PUT", "/connectors/bf/config", (201, {"name": "bf"}), (200, {"name": "bf"}))
    assert client.put_config("bf", {"k": "v"}) is True
    assert client.put_config("bf", {"k": "v"}) is False
    assert script.calls[-1] == ("PUT", "/connectors/bf/config", {"k": "v"})
    script.on("GET", "/connectors/bf/config", (200, {"name": "bf", "k": "v"}))
    assert client.connector_config("bf") == {"name": "bf", "k": "v"}
    script.on("DELETE", "/connectors/bf", (204, None))
    assert client.delete("bf") is True
    script.on("DELETE", "/connectors/bf", (409, {"message": "rebalance in progress"}))
    with pytest.raises(StageError, match="DELETE of connector 'bf' answered 409"):
        client.delete("bf")


def test_wait_running_waits_for_every_task(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    script.on("GET", "/connectors/bf/status",
              (404, None),
              (200, {"connector": {"state": "RUNNING"}, "tasks": []}),  # no task yet is not running
              (200, {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "UNASSIGNED"}]}),
              (200, RUNNING))
    assert client.wait_running("bf", timeout=10, interval=0.01) == RUNNING


def test_wait_running_raises_a_failed_tasks_trace(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    trace = "org.apache.kafka.connect.errors.ConnectException: no slot\n\tat one\n" + "\tat more\n" * 20
    script.on("GET", "/connectors/bf/status",
              (200, {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "FAILED", "trace": trace}]}))
    with pytest.raises(StageError, match=r"connector 'bf' FAILED:\norg\.apache\.kafka") as exc:
        client.wait_running("bf", timeout=10, interval=0.01)
    assert len(str(exc.value).splitlines()) == 7  # the first six lines of the trace


def test_wait_running_gives_up_with_the_last_status(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    script.on("GET", "/connectors/bf/status",
              (200, {"connector": {"state": "PAUSED"}, "tasks": [{"id": 0, "state": "PAUSED"}]}))
    with pytest.raises(StageError, match=r"not RUNNING after 0s .*PAUSED"):
        client.wait_running("bf", timeout=0.05, interval=0.01)


def test_names_are_quoted_into_paths(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    client.status("a b/c")
    assert script.calls[-1][:2] == ("GET", "/connectors/a%20b%2Fc/status")
