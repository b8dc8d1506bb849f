"""The Debezium engine: the Postgres connector on Kafka Connect, Kafka topics, bankflow's consumers into the lake."""
