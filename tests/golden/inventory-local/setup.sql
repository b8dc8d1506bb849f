CREATE SCHEMA IF NOT EXISTS "landing";

CREATE TABLE IF NOT EXISTS "landing"."products" (
  "product_id" UUID,
  "sku" VARCHAR,
  "title" VARCHAR,
  "unit_cost" DECIMAL(38,10),
  "is_active" BOOLEAN,
  "launched_on" DATE,
  "attributes" JSON,
  "thumbnail" BLOB,
  "weight_grams" INTEGER,
  "updated_at" TIMESTAMP,
  "_op" VARCHAR,
  "_lsn" BIGINT,
  "_tx_id" BIGINT,
  "_source_ts" TIMESTAMPTZ,
  "_file" VARCHAR
);

CREATE TABLE IF NOT EXISTS "landing"."stock" (
  "product_id" UUID,
  "bin_code" SMALLINT,
  "quantity" BIGINT,
  "ratio" DOUBLE,
  "counted_at" TIMESTAMPTZ,
  "_op" VARCHAR,
  "_lsn" BIGINT,
  "_tx_id" BIGINT,
  "_source_ts" TIMESTAMPTZ,
  "_file" VARCHAR
);
