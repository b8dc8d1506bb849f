{#-
  snapshot_get_time() stamps the hard-delete records of our snapshots (dbt_valid_from of the deletion record and
  dbt_valid_to of the version it closes). Every other snapshot timestamp is the commit time _source_ts, a
  timestamp WITH time zone, so the snapshot time must be one too:
  - dbt-snowflake returns TIMESTAMP_NTZ (UTC wall clock); stored into a TIMESTAMP_TZ column it would be read in the
    session time zone (America/Los_Angeles by default) and shift deletion times by hours;
  - dbt-duckdb returns now()::timestamp (session-local wall clock), which dbt flags as a type mismatch.
  Both overrides keep the instant exact and zoned. They are dispatched per adapter (adapter.dispatch), so each
  adapter only ever sees its own.
-#}
{% macro snowflake__snapshot_get_time() -%}
    convert_timezone('UTC', current_timestamp())
{%- endmacro %}

{% macro duckdb__snapshot_get_time() -%}
    now()
{%- endmacro %}
