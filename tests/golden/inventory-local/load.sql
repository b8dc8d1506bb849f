INSERT INTO "landing"."products" BY NAME
  SELECT * FROM read_parquet([<files pending in the lake>], union_by_name = true);

INSERT INTO "landing"."stock" BY NAME
  SELECT * FROM read_parquet([<files pending in the lake>], union_by_name = true);
