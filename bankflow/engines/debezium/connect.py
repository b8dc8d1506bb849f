"""bankflow's one Kafka Connect REST client (urllib only: `plan` must work without extra dependencies).

The pipeline registers and watches its connector with it, `plan` and `status` read the live config and state,
and the test harness's worker (tests/harness/connect.py) uses it for every REST call it makes.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from bankflow.errors import BankflowError, StageError

_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class ConnectUnreachable(StageError):
    """Kafka Connect's REST API did not answer."""


def _parse(raw: bytes) -> Any:
    """A response body: JSON when it is JSON, else its text (Jetty's own error pages are HTML); None when empty."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """(the URL without `user:password@`, (user, password) or None): credentials never travel in the host name."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return bare, (urllib.parse.unquote(user), urllib.parse.unquote(password))


class ConnectClient:
    """`auth`: (user, password) sent as HTTP basic auth on every request. Credentials written into the URL
    (`http://user:password@host`) are taken out of it and sent the same way."""

    def __init__(self, url: str, timeout: float = 10.0, auth: tuple[str, str] | None = None):
        bare, in_url = _split_userinfo(url)
        self.url = bare.rstrip("/")
        self.timeout = timeout
        credentials = auth or in_url
        self._headers = dict(_HEADERS)
        if credentials is not None:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"

    def __repr__(self) -> str:  # never the credentials
        return f"ConnectClient({self.url!r})"

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(HTTP status, parsed body) for any answer; ConnectUnreachable when nothing answers."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _parse(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _parse(exc.read())
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectUnreachable(f"cannot reach Kafka Connect at {self.url}: {reason}") from None

    def _expect(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        """The parsed body of an answer whose status is in `ok`; any other status raises StageError."""
        status, payload = self._request(method, path, body)
        if status not in ok:
            raise StageError(f"Kafka Connect {method} {path} answered {status}: {payload}")
        return payload

    # ------------------------------------------------------------ the worker

    def server_info(self) -> dict[str, Any]:
        """`GET /`: the worker's version, commit and Kafka cluster id."""
        info = self._expect("GET", "/")
        if not isinstance(info, dict):
            raise StageError(f"Kafka Connect at {self.url} answered GET / with {info!r}, not its version")
        return info

    def ready(self) -> bool:
        """True once the REST API answers `GET /` (a readiness probe: never raises)."""
        try:
            self.server_info()
        except BankflowError:
            return False
        return True

    def plugins(self) -> list[dict[str, Any]]:
        """The connector plugins installed on the worker (`class`, `type`, `version` each)."""
        return list(self._expect("GET", "/connector-plugins"))

    def connectors(self) -> list[str]:
        """Names of the connectors the worker (or cluster) runs."""
        return [str(name) for name in self._expect("GET", "/connectors")]

    # ------------------------------------------------------------ one connector

    def connector_config(self, name: str) -> dict[str, str] | None:
        status, body = self._request("GET", f"/connectors/{_quote(name)}/config")
        if status == 404:
            return None
        if status != 200:
            raise StageError(f"Kafka Connect GET config of {name!r} answered {status}: {body}")
        return dict(body)

    def validate(self, connector_class: str, config: dict[str, str]) -> dict[str, list[str]]:
        """Per-field errors from Connect's validate endpoint (empty when the config is valid)."""
        short = connector_class.rsplit(".", 1)[-1]
        status, body = self._request("PUT", f"/connector-plugins/{_quote(short)}/config/validate", config)
        if status != 200:
            raise StageError(f"Kafka Connect validate answered {status}: {body}")
        errors: dict[str, list[str]] = {}
        for item in body.get("configs", []):
            value = item.get("value", {})
            if value.get("errors"):
                errors[value.get("name", "?")] = list(value["errors"])
        return errors

    def put_config(self, name: str, config: dict[str, str]) -> bool:
        """Create or update; True when created."""
        status, body = self._request("PUT", f"/connectors/{_quote(name)}/config", config)
        if status not in (200, 201):
            raise StageError(f"Kafka Connect rejected connector {name!r} ({status}): {body}")
        return status == 201

    def status(self, name: str) -> dict[str, Any] | None:
        """The connector's and its tasks' states; None when no connector has that name."""
        status, body = self._request("GET", f"/connectors/{_quote(name)}/status")
        if status == 404:
            return None
        return body if isinstance(body, dict) else {"error": f"answered {status}: {body}"}

    def offsets(self, name: str) -> list[dict[str, Any]] | None:
        """The connector's committed source offsets (Connect ≥ 3.6, KIP-875); None when unavailable."""
        status, body = self._request("GET", f"/connectors/{_quote(name)}/offsets")
        if status != 200 or not isinstance(body, dict):
            return None
        return [item.get("offset") or {} for item in body.get("offsets", [])]

    def delete(self, name: str) -> bool:
        """Delete a connector: its tasks stop and close their replication connection (the slot stays).

        True when it was deleted, False when there was none of that name; any other answer raises StageError.
        """
        status, body = self._request("DELETE", f"/connectors/{_quote(name)}")
        if status == 404:
            return False
        if status not in (200, 202, 204):
            raise StageError(f"Kafka Connect DELETE of connector {name!r} answered {status}: {body}")
        return True

    def wait_running(self, name: str, timeout: float = 60.0, interval: float = 0.5) -> dict[str, Any]:
        """Wait until the connector and all its tasks are RUNNING; a FAILED one raises with its trace summary."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            last = self.status(name)
            if last and _running(name, last):
                return last
            if time.monotonic() >= deadline:
                raise StageError(f"connector {name!r} not RUNNING after {timeout:.0f}s (last status: {last})")
            time.sleep(interval)


def _running(name: str, status: dict[str, Any]) -> bool:
    """True when the connector and its tasks (at least one) run; raises StageError when one of them FAILED."""
    connector = status.get("connector", {})
    tasks = status.get("tasks", [])
    failed = [t for t in tasks if t.get("state") == "FAILED"]
    if connector.get("state") == "FAILED" or failed:
        trace = str((failed[0] if failed else connector).get("trace", ""))
        summary = "\n".join(trace.splitlines()[:6])
        raise StageError(f"connector {name!r} FAILED:\n{summary}")
    return bool(tasks) and connector.get("state") == "RUNNING" and all(t.get("state") == "RUNNING" for t in tasks)
