INSERT INTO "raw"."customers" BY NAME
  SELECT * FROM read_parquet([<files pending in the lake>], union_by_name = true, hive_partitioning = false);

INSERT INTO "raw"."accounts" BY NAME
  SELECT * FROM read_parquet([<files pending in the lake>], union_by_name = true, hive_partitioning = false);

INSERT INTO "raw"."transactions" BY NAME
  SELECT * FROM read_parquet([<files pending in the lake>], union_by_name = true, hive_partitioning = false);
