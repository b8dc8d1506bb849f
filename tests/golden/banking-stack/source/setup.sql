-- Setup of the source bank.banking for pipeline banking
-- (rendered by `bankflow plan`; the source needs wal_level = logical)

-- grants the replication user needs (for a DBA to give)
ALTER ROLE "cdc_reader" WITH REPLICATION;
GRANT USAGE ON SCHEMA "banking" TO "cdc_reader";
GRANT SELECT ON "banking"."customers", "banking"."accounts", "banking"."transactions" TO "cdc_reader";

-- replica identity, as the spec declares it (bankflow runs this)
ALTER TABLE "banking"."customers" REPLICA IDENTITY FULL;
ALTER TABLE "banking"."accounts" REPLICA IDENTITY FULL;
ALTER TABLE "banking"."transactions" REPLICA IDENTITY FULL;

-- heartbeat table: keeps the slot advancing while the tables are idle (bankflow runs this)
CREATE TABLE IF NOT EXISTS "banking"."_bankflow_heartbeat" (id integer PRIMARY KEY, beat_at timestamptz NOT NULL);
GRANT SELECT, INSERT, UPDATE ON "banking"."_bankflow_heartbeat" TO "cdc_reader";

-- signal table: Debezium reads backfill requests (incremental snapshots) from it and writes its watermarks (bankflow runs this)
CREATE TABLE IF NOT EXISTS "banking"."_bankflow_signal" (id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048));
GRANT SELECT, INSERT, DELETE ON "banking"."_bankflow_signal" TO "cdc_reader";

-- publication: exactly the spec's tables and the signal table (bankflow runs this)
CREATE PUBLICATION "bankflow_banking" FOR TABLE "banking"."customers", "banking"."accounts", "banking"."transactions", "banking"."_bankflow_signal";

-- replication slot (bankflow runs this): the CDC engine creates it on the first apply
-- and takes the initial snapshot in the slot's exported snapshot
-- SELECT pg_create_logical_replication_slot('bankflow_banking', 'pgoutput');
