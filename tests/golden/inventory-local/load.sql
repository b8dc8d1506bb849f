INSERT INTO "landing"."products" BY NAME
  SELECT * FROM read_parquet([<files pending in the lake>], union_by_name = true, hive_partitioning = false);

INSERT INTO "landing"."stock" BY NAME
  SELECT * FROM read_parquet([<files pending in the lake>], union_by_name = true, hive_partitioning = false);
