"""Kafka → lake consumers (the `debezium` engine's stream stage).

Kept import-light: `bankflow validate` never imports confluent_kafka or pyarrow; use `bankflow.consume.kafka`.
"""
