-- Setup of the source warehouse_ops.inv for pipeline inventory
-- (rendered by `bankflow plan`; the source needs wal_level = logical)

-- grants the replication user needs (for a DBA to give)
ALTER ROLE "inventory_reader" WITH REPLICATION;
GRANT USAGE ON SCHEMA "inv" TO "inventory_reader";
GRANT SELECT ON "inv"."products", "inv"."stock_levels" TO "inventory_reader";

-- replica identity, as the spec declares it (for a DBA to run, or add replica_identity to source.manage)
ALTER TABLE "inv"."products" REPLICA IDENTITY FULL;
ALTER TABLE "inv"."stock_levels" REPLICA IDENTITY FULL;

-- heartbeat table: keeps the slot advancing while the tables are idle (for a DBA to run, or add heartbeat to source.manage)
CREATE TABLE IF NOT EXISTS "inv"."_bankflow_heartbeat" (id integer PRIMARY KEY, beat_at timestamptz NOT NULL);
GRANT SELECT, INSERT, UPDATE ON "inv"."_bankflow_heartbeat" TO "inventory_reader";

-- signal table: Debezium reads backfill requests (incremental snapshots) from it and writes its watermarks (for a DBA to run, or add signal to source.manage)
CREATE TABLE IF NOT EXISTS "inv"."_bankflow_signal" (id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048));
GRANT SELECT, INSERT, DELETE ON "inv"."_bankflow_signal" TO "inventory_reader";

-- publication: exactly the spec's tables and the signal table (for a DBA to run, or add publication to source.manage)
CREATE PUBLICATION "inv_pub" FOR TABLE "inv"."products", "inv"."stock_levels", "inv"."_bankflow_signal";

-- replication slot (for a DBA to run, or add slot to source.manage)
-- bankflow then reads the tables' existing rows while it streams (a backfill with watermarks:
-- SELECT on the tables, pg_logical_emit_message), and never drops a slot it did not create
SELECT pg_create_logical_replication_slot('inv_slot', 'pgoutput');
