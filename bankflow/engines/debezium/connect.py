"""A small Kafka Connect REST client (urllib only: `plan` must work without extra dependencies)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from bankflow.errors import StageError


class ConnectUnreachable(StageError):
    """Kafka Connect's REST API did not answer."""


class ConnectClient:
    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = raw.decode(errors="replace")
            return exc.code, payload
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectUnreachable(f"cannot reach Kafka Connect at {self.url}: {reason}") from None

    def connector_config(self, name: str) -> dict[str, str] | None:
        status, body = self._request("GET", f"/connectors/{urllib.parse.quote(name)}/config")
        if status == 404:
            return None
        if status != 200:
            raise StageError(f"Kafka Connect GET config of {name!r} answered {status}: {body}")
        return dict(body)

    def validate(self, connector_class: str, config: dict[str, str]) -> dict[str, list[str]]:
        """Per-field errors from Connect's validate endpoint (empty when the config is valid)."""
        short = connector_class.rsplit(".", 1)[-1]
        status, body = self._request("PUT", f"/connector-plugins/{short}/config/validate", config)
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
        status, body = self._request("PUT", f"/connectors/{urllib.parse.quote(name)}/config", config)
        if status not in (200, 201):
            raise StageError(f"Kafka Connect rejected connector {name!r} ({status}): {body}")
        return status == 201

    def status(self, name: str) -> dict[str, Any] | None:
        status, body = self._request("GET", f"/connectors/{urllib.parse.quote(name)}/status")
        return None if status == 404 else body

    def offsets(self, name: str) -> list[dict[str, Any]] | None:
        """The connector's committed source offsets (Connect ≥ 3.6, KIP-875); None when unavailable."""
        status, body = self._request("GET", f"/connectors/{urllib.parse.quote(name)}/offsets")
        if status != 200 or not isinstance(body, dict):
            return None
        return [item.get("offset") or {} for item in body.get("offsets", [])]

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/connectors/{urllib.parse.quote(name)}")

    def wait_running(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the connector and all its tasks are RUNNING; a FAILED task raises with its trace summary."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.status(name)
            if last:
                tasks = last.get("tasks", [])
                states = [last.get("connector", {}).get("state")] + [t.get("state") for t in tasks]
                failed = [t for t in tasks if t.get("state") == "FAILED"]
                if last.get("connector", {}).get("state") == "FAILED" or failed:
                    trace = (failed[0] if failed else last["connector"]).get("trace", "")
                    summary = "\n".join(trace.splitlines()[:6])
                    raise StageError(f"connector {name!r} FAILED:\n{summary}")
                if tasks and all(s == "RUNNING" for s in states):
                    return last
            time.sleep(0.5)
        raise StageError(f"connector {name!r} not RUNNING after {timeout:.0f}s (last status: {last})")
