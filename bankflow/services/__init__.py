"""Embedded services: PostgreSQL for the ``local`` environment; Kafka (Tansu), Kafka Connect and S3 for tests.

Attributes are imported on first use so ``import bankflow.services`` stays cheap and pulls in no client
libraries (confluent_kafka, psycopg2, moto, s3fs are imported inside the methods that need them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bankflow.services._process import ServiceError
    from bankflow.services.connect import KafkaConnectWorker, ensure_jetty12_security_jar
    from bankflow.services.ports import free_port
    from bankflow.services.postgres import EmbeddedPostgres
    from bankflow.services.s3 import S3Server
    from bankflow.services.tansu import TansuBroker

_EXPORTS = {
    "EmbeddedPostgres": "bankflow.services.postgres",
    "TansuBroker": "bankflow.services.tansu",
    "KafkaConnectWorker": "bankflow.services.connect",
    "ensure_jetty12_security_jar": "bankflow.services.connect",
    "S3Server": "bankflow.services.s3",
    "ServiceError": "bankflow.services._process",
    "free_port": "bankflow.services.ports",
}

__all__ = [
    "EmbeddedPostgres",
    "KafkaConnectWorker",
    "S3Server",
    "ServiceError",
    "TansuBroker",
    "ensure_jetty12_security_jar",
    "free_port",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bankflow.services' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
