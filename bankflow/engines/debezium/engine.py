"""The Debezium engine: connector on Kafka Connect, a catch-up barrier, and bankflow's Kafka consumers."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from bankflow.engines.base import CdcEngine, EngineRun
from bankflow.engines.debezium.config import DebeziumCdc, debezium_cdc
from bankflow.errors import StageError
from bankflow.stages.base import RunContext

log = logging.getLogger(__name__)


class DebeziumEngine(CdcEngine):
    @property
    def cdc(self) -> DebeziumCdc:
        return debezium_cdc(self.spec)

    def run(self, ctx: RunContext) -> EngineRun:
        from bankflow.engines.debezium.catchup import keep_registered, register_connector, wait_for_debezium
        from bankflow.engines.debezium.consumer import consume_to_lake

        started = time.monotonic()

        def progress(info: dict[str, Any]) -> None:
            events = int(info.get("events", 0))
            rate = events / max(time.monotonic() - started, 1e-6)
            ctx.progress.update("cdc", f"{events:,} events ({rate:,.0f}/s), {info.get('files', 0)} files")

        details: dict[str, Any] = {"connector": register_connector(ctx)}
        backfills = self._start_backfills(ctx)
        scanned: dict[str, int] = {}
        if not ctx.follow:  # a catch-up run: first make sure Kafka holds everything committed so far
            if backfills:
                scanned = self._wait_for_backfills(ctx, backfills)
            details["caught_up"] = wait_for_debezium(ctx)
        keeper_stop = threading.Event()
        if ctx.follow:  # months of running: a Connect worker that restarts and forgets the connector is normal
            keep_registered(ctx, keeper_stop, interval=self.cdc.reregister_interval_s)
            if backfills:
                self._finish_backfills_while_following(ctx, backfills, keeper_stop)
        try:
            if ctx.follow and ctx.workers > 1:  # `bankflow run --workers N`: N processes, one consumer group
                summary = self._follow_with_workers(ctx)
            else:
                outcome = consume_to_lake(self.resolved, follow=ctx.follow, stop=ctx.stop, progress=progress)
                if outcome.stopped is not None:
                    raise StageError(outcome.stopped)
                summary = outcome.to_dict()
        finally:
            keeper_stop.set()
        files = summary.pop("files", [])
        details.update(summary)
        if backfills and not ctx.follow:
            from bankflow.engines.debezium.backfill import coverage_of, finish

            deletes = finish(self.resolved, ctx.source_connect_kwargs(), coverage_of(self.resolved), backfills,
                             scanned)
            details["backfills"] = sorted(r["table"] for r in backfills)
            details["backfill_rows"] = sum(scanned.values())
            details["backfill_deletes"] = sum(deletes.values())
        return EngineRun(events=int(summary.get("events", 0)),
                         files=len(files) if isinstance(files, list) else int(files), details=details)

    def _follow_with_workers(self, ctx: RunContext) -> dict[str, Any]:
        """The consumers as `consume --workers N` runs them (a worker that dies is replaced), stopped by the
        run's stop; a worker that stopped on an error (an emptied topic) fails the stage as one consumer would."""
        from bankflow.engines.debezium.workers import run_workers

        summary = run_workers(self.resolved, workers=ctx.workers, follow=True, progress=False, stop=ctx.stop)
        stopped = summary.pop("stopped", [])
        if stopped:
            raise StageError("; ".join(stopped))
        if not ctx.stop.is_set():  # following, the supervisor only returns when stopped or out of restarts
            raise StageError("the consumer workers gave up: " + "; ".join(summary.get("failures") or ["?"]))
        summary.pop("per_worker", None)
        return summary

    # ---- backfills (bankflow.engines.debezium.backfill)

    def _start_backfills(self, ctx: RunContext) -> list[dict[str, Any]]:
        """The backfills this run carries out (tables new to the spec or added back, requests), signalled."""
        from bankflow.engines.debezium.backfill import coverage_of, plan, send_signal
        from bankflow.lake.filesystem import lake_filesystem
        from bankflow.lake.writer import LakeWriter

        resolved = self.resolved
        coverage = coverage_of(resolved)
        writer = LakeWriter(*lake_filesystem(resolved), self.spec.lake)

        def has_files(table: Any) -> bool:
            directory = writer.directory(table=table.name, schema=self.spec.source.schema_name,
                                         topic=self.spec.topic_for(table))
            return bool(coverage.fs.glob(f"{directory}/*.parquet"))

        fresh = not coverage.tables() and not any(has_files(t) for t in self.spec.tables)
        records = plan(resolved, coverage, fresh=fresh, has_files=has_files)
        if records:
            ctx.progress.update("cdc", f"backfilling {', '.join(r['table'] for r in records)}", force=True)
            send_signal(resolved, ctx.source_connect_kwargs(), coverage, records)
        return records

    def _wait_for_backfills(self, ctx: RunContext, records: list[dict[str, Any]]) -> dict[str, int]:
        from bankflow.engines.debezium.backfill import wait_for_backfills

        client = self.cdc.connect_client()
        return wait_for_backfills(self.resolved, records,
                                  progress=lambda text: ctx.progress.update("cdc", text),
                                  check_connector=lambda: client.wait_running(self.cdc.connector, timeout=30.0),
                                  timeout=self.cdc.backfill_timeout_s)

    def _finish_backfills_while_following(self, ctx: RunContext, records: list[dict[str, Any]],
                                          stop: threading.Event) -> threading.Thread:
        """A follow run streams on while Debezium backfills: a thread waits for the backfill, then for the
        consumers to have the table's topic up to where it was then, then sweeps and marks the tables covered."""
        from bankflow.engines.debezium.backfill import coverage_of, finish, wait_consumed

        def watch() -> None:
            try:
                scanned = self._wait_for_backfills(ctx, records)
                topics = [self.spec.topic_for(self.spec.table(r["table"])) for r in records]
                if wait_consumed(self.resolved, topics, stop):
                    finish(self.resolved, ctx.source_connect_kwargs(), coverage_of(self.resolved), records,
                           scanned)
            except Exception as exc:  # the stream goes on; the next apply resumes the backfill from its marker
                log.error("backfill of %s not finished: %s", ", ".join(r["table"] for r in records),
                          self.resolved.redact(str(exc)))

        thread = threading.Thread(target=watch, name="bankflow-debezium-backfill", daemon=True)
        thread.start()
        return thread

    def request_backfill(self, table: str, where: str | None, source_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Record an on-demand backfill of `table`: the next catch-up run signals Debezium and waits for it.
        ``slot_active`` is False: the caller runs that catch-up (consumers share the group, so a running
        `apply --follow` is no obstacle)."""
        from bankflow.engines.debezium.backfill import request

        return {**request(self.resolved, table, where), "slot_active": False}

    def artifacts(self) -> dict[str, str]:
        from bankflow.engines.debezium.connector import render_connector_json

        return {"debezium/connector.json": render_connector_json(self.resolved, reveal=False)}

    def live_diff(self, timeout: float = 3.0) -> tuple[str | None, str | None]:
        """Compare the connector config live on Kafka Connect with the rendered one."""
        import difflib

        from bankflow.engines.debezium.connect import ConnectUnreachable
        from bankflow.engines.debezium.connector import connector_config

        cdc = self.cdc
        client = cdc.connect_client(timeout=timeout)
        try:
            live = client.connector_config(cdc.connector)
        except ConnectUnreachable as exc:
            return None, f"Kafka Connect at {cdc.connect_url} is unreachable ({exc}); rendered offline"
        if live is None:
            return None, f"connector {cdc.connector!r} does not exist on Kafka Connect yet: apply will create it"
        rendered = connector_config(self.resolved, reveal=False)
        live.pop("name", None)
        live_text = json.dumps(dict(sorted(live.items())), indent=2) + "\n"
        rendered_text = json.dumps(dict(sorted(rendered.items())), indent=2) + "\n"
        if live_text == rendered_text:
            return None, f"connector {cdc.connector!r} on Kafka Connect matches the rendered config"
        diff = "".join(difflib.unified_diff(live_text.splitlines(keepends=True),
                                            rendered_text.splitlines(keepends=True),
                                            fromfile="a/connector (live → rendered)",
                                            tofile="b/connector (live → rendered)"))
        return (self.resolved.redact(diff),
                f"connector {cdc.connector!r} on Kafka Connect differs from the rendered config")

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {"connector": self._connector_status(), "consumer": self._consumer_status(), **super().status()}

    @staticmethod
    def needs_attention(status: dict[str, Any]) -> list[str]:
        connector = status.get("connector") or {}
        found = []
        if connector.get("error"):
            found.append(f"Kafka Connect: {connector['error']}")
        elif connector.get("state") != "RUNNING":
            found.append(f"connector {connector.get('name')} is {connector.get('state')}")
        found += [f"connector {connector.get('name')} task {t.get('id')} is {t.get('state')}"
                  + (f": {t['trace']}" if t.get("trace") else "")
                  for t in connector.get("tasks") or [] if t.get("state") != "RUNNING"]
        if (status.get("consumer") or {}).get("error"):
            found.append(status["consumer"]["error"])
        return found

    def _connector_status(self) -> dict[str, Any]:
        """The connector's state and its tasks' states, as Kafka Connect reports them."""
        from bankflow.engines.debezium.connect import ConnectUnreachable

        cdc = self.cdc
        info: dict[str, Any] = {"name": cdc.connector, "url": cdc.connect_url}
        try:
            body = cdc.connect_client(timeout=5.0).status(cdc.connector)
        except ConnectUnreachable as exc:
            info["error"] = str(exc)
            return info
        if body is None:
            info["state"] = "NOT REGISTERED"
            return info
        info["state"] = body.get("connector", {}).get("state")
        info["tasks"] = [{"id": t.get("id"), "state": t.get("state"),
                          **({"trace": str(t["trace"]).splitlines()[0]} if t.get("trace") else {})}
                         for t in body.get("tasks", [])]
        return info

    def _consumer_status(self, timeout: float = 5.0) -> dict[str, Any]:
        """Per topic: the group's committed offsets against the high watermarks, i.e. what the lake is missing."""
        resolved = self.resolved
        info: dict[str, Any] = {"group": resolved.spec.kafka.group, "topics": {}}
        try:
            from confluent_kafka import Consumer, TopicPartition

            from bankflow.engines.debezium.consumer import consumer_config, topic_partitions

            found, missing = topic_partitions(resolved, timeout=timeout)
            consumer = Consumer(consumer_config(resolved), logger=log)  # no subscribe: no rebalance
            try:
                committed = consumer.committed([TopicPartition(t, p) for t, p in found], timeout=timeout)
                for tp in committed:
                    low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
                    offset = tp.offset if tp.offset >= 0 else low  # nothing committed: the group starts earliest
                    topic = info["topics"].setdefault(tp.topic, {"partitions": 0, "committed": 0, "end": 0,
                                                                 "lag": 0})
                    topic["partitions"] += 1
                    topic["committed"] += offset
                    topic["end"] += high
                    topic["lag"] += max(high - offset, 0)
            finally:
                consumer.close()
            for topic in missing:
                info["topics"][topic] = None  # Debezium creates a topic with the table's first event
        except Exception as exc:
            detail = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)  # KafkaError
            info["error"] = resolved.redact(f"cannot read from Kafka at {resolved.spec.kafka.bootstrap_servers}: "
                                            f"{detail.strip()}")
        return info

    @staticmethod
    def format_status(status: dict[str, Any]) -> list[str]:
        lines = []
        connector = status.get("connector")
        if connector:
            if connector.get("error"):
                lines.append(f"  connector  {connector['name']}: {connector['error']}")
            else:
                tasks = ", ".join(f"task {t['id']} {t['state']}" + (f" ({t['trace']})" if t.get("trace") else "")
                                  for t in connector.get("tasks", []))
                lines.append(f"  connector  {connector['name']}: {connector['state']}"
                             + (f"; {tasks}" if tasks else ""))
        consumer = status.get("consumer")
        if consumer:
            if consumer.get("error"):
                lines.append(f"  consumer   group {consumer['group']}: {consumer['error']}")
            for topic, info in consumer.get("topics", {}).items():
                if info is None:
                    lines.append(f"  consumer   {topic}: no topic yet")
                else:
                    lines.append(f"  consumer   {topic}: committed {info['committed']:,} of {info['end']:,}, "
                                 f"lag {info['lag']:,} ({info['partitions']} partition(s))")
        return lines + CdcEngine.format_status(status)

    def consume(self, *, workers: int, follow: bool, progress: bool) -> dict[str, Any]:
        from bankflow.engines.debezium.workers import run_workers

        return run_workers(self.resolved, workers=workers, follow=follow, progress=progress)
