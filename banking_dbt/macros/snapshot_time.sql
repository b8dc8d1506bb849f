{#-
  dbt-snowflake's snapshot_get_time() is TIMESTAMP_NTZ (UTC wall clock). Our snapshots use the commit time
  _source_ts (TIMESTAMP_TZ) as dbt_valid_from/dbt_valid_to, and hard-delete records use snapshot_get_time();
  an NTZ value stored into a TIMESTAMP_TZ column is read in the session time zone (America/Los_Angeles by
  default), which would shift deletion times by hours. Keep it a zoned UTC timestamp instead.
  Only dispatched on Snowflake; DuckDB's own version (now()::timestamp, same session zone) round-trips.
-#}
{% macro snowflake__snapshot_get_time() -%}
    convert_timezone('UTC', current_timestamp())
{%- endmacro %}
