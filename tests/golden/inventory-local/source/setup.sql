-- Setup of the source warehouse_ops.inv for pipeline inventory
-- (rendered by `bankflow plan`; the source needs wal_level = logical)

-- the embedded source: bankflow runs the server and creates its schema and tables
CREATE SCHEMA IF NOT EXISTS "inv";
CREATE TABLE IF NOT EXISTS "inv"."products" (
  "product_id" uuid NOT NULL,
  "sku" varchar(40) NOT NULL,
  "title" text NOT NULL,
  "unit_cost" numeric(38,10) NOT NULL,
  "is_active" boolean NOT NULL,
  "launched_on" date,
  "attributes" jsonb,
  "thumbnail" bytea,
  "weight_grams" integer,
  "updated_at" timestamp NOT NULL,
  PRIMARY KEY ("product_id")
);
ALTER TABLE "inv"."products" REPLICA IDENTITY FULL;
CREATE TABLE IF NOT EXISTS "inv"."stock_levels" (
  "product_id" uuid NOT NULL REFERENCES "inv"."products" ("product_id"),
  "bin_code" smallint NOT NULL,
  "quantity" bigint NOT NULL,
  "ratio" double precision,
  "counted_at" timestamptz NOT NULL,
  PRIMARY KEY ("product_id", "bin_code")
);
ALTER TABLE "inv"."stock_levels" REPLICA IDENTITY FULL;
CREATE TABLE IF NOT EXISTS "inv"."_bankflow_heartbeat" (id integer PRIMARY KEY, beat_at timestamptz NOT NULL);

-- publication: exactly the spec's tables (bankflow runs this)
CREATE PUBLICATION "inv_pub" FOR TABLE "inv"."products", "inv"."stock_levels";

-- replication slot (bankflow runs this): the CDC engine creates it on the first apply
-- and takes the initial snapshot in the slot's exported snapshot
-- SELECT pg_create_logical_replication_slot('inv_slot', 'pgoutput');
