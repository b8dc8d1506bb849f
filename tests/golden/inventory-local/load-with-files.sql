INSERT INTO "landing"."products" BY NAME
  SELECT * FROM read_parquet(['<REPO>/tests/specs/.state/inventory/lake/products/date=2024-05-01/p0-000000.parquet', '<REPO>/tests/specs/.state/inventory/lake/products/date=2024-05-02/o''brien/p0-1.parquet', '<REPO>/tests/specs/.state/inventory/lake/products/date=2024-05-03/p0-000002.parquet'], union_by_name = true, hive_partitioning = false);

-- stock_levels: no pending files
