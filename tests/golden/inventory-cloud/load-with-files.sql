COPY INTO "INVENTORY"."LANDING"."PRODUCTS"
  FROM @"INVENTORY"."LANDING"."INV_STAGE"
  FILES = ('products/date=2024-05-01/p0-000000.parquet', 'products/date=2024-05-02/o''brien/p0-1.parquet', 'products/date=2024-05-03/p0-000002.parquet')
  FILE_FORMAT = (FORMAT_NAME = '"INVENTORY"."LANDING"."INV_PARQUET"')
  MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE
  ON_ERROR = ABORT_STATEMENT;

-- stock_levels: no pending files
