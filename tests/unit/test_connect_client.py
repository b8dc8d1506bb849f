"""ConnectClient against a scripted HTTP server: the answers Kafka Connect gives, and none at all; basic auth."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bankflow.cli import main
from bankflow.engines.debezium.connect import ConnectClient, ConnectUnreachable
from bankflow.errors import SpecError, StageError
from bankflow.process import free_port
from bankflow.spec.loader import load_spec
from tests.specs.support import MINIMAL, copy_spec

RUNNING = {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "RUNNING"}]}


class _Script:
    """(method, path) → (status, body); each call is recorded."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.headers: list[dict[str, str]] = []  # each call's request headers

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
            script.headers.append(dict(self.headers.items()))
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


# ---------------------------------------------------------------- basic auth

CONNECT_PASSWORD = "connect-S3CRET-5e6f7a"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_is_sent_on_every_request(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    authed = ConnectClient(client.url, timeout=5.0, auth=("bankflow", CONNECT_PASSWORD))
    script.on("GET", "/", (200, {"version": "4.3.0"}))
    authed.server_info()
    authed.status("bf")
    assert [h.get("Authorization") for h in script.headers] == [_basic("bankflow", CONNECT_PASSWORD)] * 2
    client.server_info()
    assert "Authorization" not in script.headers[-1]  # no credentials: no header
    assert CONNECT_PASSWORD not in repr(authed)


def test_userinfo_in_a_url_becomes_basic_auth_never_the_host(connect: tuple[ConnectClient, _Script]) -> None:
    client, script = connect
    port = client.url.rsplit(":", 1)[1]
    with_userinfo = ConnectClient(f"http://bankflow:{CONNECT_PASSWORD.replace('-', '%2D')}@127.0.0.1:{port}")
    assert with_userinfo.url == f"http://127.0.0.1:{port}"
    with_userinfo.status("bf")
    assert script.headers[-1]["Authorization"] == _basic("bankflow", CONNECT_PASSWORD)
    gone = ConnectClient(f"http://bankflow:{CONNECT_PASSWORD}@127.0.0.1:{free_port()}", timeout=1.0)
    with pytest.raises(ConnectUnreachable) as exc:
        gone.status("x")
    assert CONNECT_PASSWORD not in str(exc.value) and "bankflow:" not in str(exc.value)


def _stack_spec(tmp_path: Path, cdc: str) -> Path:
    """tests/specs/minimal.yaml with a Debezium `stack` environment whose cdc has the given extra lines."""
    spec = copy_spec(MINIMAL, tmp_path)
    text = spec.read_text(encoding="utf-8")
    stack = "  stack:\n    cdc:\n      engine: debezium\n"
    assert stack in text
    port = free_port()  # nothing listens: the source is down
    overlay = (f"  stack:\n    source: {{port: {port}}}\n    kafka: {{bootstrap_servers: '127.0.0.1:{free_port()}'}}\n"
               f"    cdc:\n      engine: debezium\n" + "".join(f"      {line}\n" for line in cdc.splitlines()))
    spec.write_text(text.replace(stack, overlay), encoding="utf-8")
    return spec


def test_connect_url_with_credentials_is_refused_with_a_hint(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = _stack_spec(tmp_path, f"connect_url: http://bankflow:{CONNECT_PASSWORD}@127.0.0.1:8083")
    with pytest.raises(SpecError) as exc:
        load_spec(spec, env="stack", environ={})
    [issue] = exc.value.issues
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if "connect_url" in text)
    assert (issue.line, issue.field) == (line, "cdc.connect_url")
    assert "connect_user" in issue.hint and "connect_password" in issue.hint
    for argv in (["validate", str(spec), "--env", "stack"], ["validate", str(spec), "--env", "stack", "--json"],
                 ["plan", str(spec), "--env", "stack", "--offline"]):
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert CONNECT_PASSWORD not in captured.out + captured.err, argv
        assert "connect_url carries credentials" in captured.out + captured.err


def test_connect_password_needs_a_user(tmp_path: Path) -> None:
    spec = _stack_spec(tmp_path, "connect_password: ${CONNECT_PASSWORD}")
    with pytest.raises(SpecError, match="connect_password is set without connect_user"):
        load_spec(spec, env="stack", environ={"CONNECT_PASSWORD": CONNECT_PASSWORD})


def test_spec_credentials_reach_connect_as_basic_auth_and_no_output(
        connect: tuple[ConnectClient, _Script], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    client, script = connect
    spec = _stack_spec(tmp_path, f"connect_url: {client.url}\nconnect_user: bankflow\n"
                                 "connect_password: ${CONNECT_PASSWORD}")
    monkeypatch.setenv("CONNECT_PASSWORD", CONNECT_PASSWORD)
    resolved = load_spec(spec, env="stack")
    assert CONNECT_PASSWORD in resolved.secrets
    script.on("GET", "/connectors/bankflow/status", (200, RUNNING))
    out = tmp_path / "plan"
    outputs = []
    for argv in (["status", str(spec), "--env", "stack"], ["status", str(spec), "--env", "stack", "--json"],
                 ["plan", str(spec), "--env", "stack", "--out", str(out)],
                 ["plan", str(spec), "--env", "stack", "--json"],
                 ["validate", str(spec), "--env", "stack", "--json"], ["schema"]):
        main(argv)
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)
    assert "RUNNING" in outputs[0] and '"RUNNING"' in outputs[1]  # status did ask the scripted Connect
    assert any(path == "/connectors/bankflow/config" for _, path, _ in script.calls)  # and plan too (live diff)
    assert script.headers and all(h.get("Authorization") == _basic("bankflow", CONNECT_PASSWORD)
                                  for h in script.headers)
    written = [p.read_text(encoding="utf-8", errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5
    for text in outputs + written:
        assert CONNECT_PASSWORD not in text
