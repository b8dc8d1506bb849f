"""The built-in engine: bankflow reads Postgres logical replication (pgoutput) itself, no Kafka in between."""
