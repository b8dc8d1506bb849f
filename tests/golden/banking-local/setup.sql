CREATE SCHEMA IF NOT EXISTS "raw";

CREATE TABLE IF NOT EXISTS "raw"."customers" (
  "id" BIGINT,
  "first_name" VARCHAR,
  "last_name" VARCHAR,
  "email" VARCHAR,
  "created_at" TIMESTAMPTZ,
  "updated_at" TIMESTAMPTZ,
  "_op" VARCHAR,
  "_lsn" BIGINT,
  "_tx_id" BIGINT,
  "_source_ts" TIMESTAMPTZ,
  "_file" VARCHAR
);

CREATE TABLE IF NOT EXISTS "raw"."accounts" (
  "id" BIGINT,
  "customer_id" BIGINT,
  "account_type" VARCHAR,
  "currency" VARCHAR,
  "opening_balance" DECIMAL(18,2),
  "balance" DECIMAL(18,2),
  "status" VARCHAR,
  "created_at" TIMESTAMPTZ,
  "updated_at" TIMESTAMPTZ,
  "closed_at" TIMESTAMPTZ,
  "_op" VARCHAR,
  "_lsn" BIGINT,
  "_tx_id" BIGINT,
  "_source_ts" TIMESTAMPTZ,
  "_file" VARCHAR
);

CREATE TABLE IF NOT EXISTS "raw"."transactions" (
  "id" BIGINT,
  "account_id" BIGINT,
  "txn_type" VARCHAR,
  "amount" DECIMAL(18,2),
  "related_account_id" BIGINT,
  "status" VARCHAR,
  "created_at" TIMESTAMPTZ,
  "_op" VARCHAR,
  "_lsn" BIGINT,
  "_tx_id" BIGINT,
  "_source_ts" TIMESTAMPTZ,
  "_file" VARCHAR
);
