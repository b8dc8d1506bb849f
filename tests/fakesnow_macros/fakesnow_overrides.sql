{#-
  TEST-ONLY overrides of dbt-snowflake macros for fakesnow 0.12 (DuckDB underneath). Never shipped: the
  Snowflake tests copy banking_dbt/ to a temporary directory and add this directory to its macro-paths.
  Each override changes only what fakesnow cannot run and calls dbt-snowflake's original where it can:
  - no TEMPORARY tables/views (fakesnow's server sessions cannot see each other's temp objects);
  - MERGE ... WHEN NOT MATCHED THEN INSERT VALUES with columns qualified by DBT_INTERNAL_SOURCE (DuckDB's
    MERGE binds unqualified VALUES columns ambiguously);
  - no explicit BEGIN/COMMIT around DML (a failing statement inside a transaction makes the client retry forever).
-#}

{% macro snowflake__create_table_as(temporary, relation, compiled_code, language='sql') -%}
  {{ dbt.snowflake__create_table_as(false, relation, compiled_code, language) }}
{%- endmacro %}


{% macro snowflake__create_view_as_with_temp_flag(relation, sql, is_temporary=False) -%}
  {{ dbt.snowflake__create_view_as_with_temp_flag(relation, sql, false) }}
{%- endmacro %}


{% macro snowflake_dml_explicit_transaction(dml) %}
  {% do return(dml) %}
{% endmacro %}


{% macro snowflake__get_merge_sql(target, source_sql, unique_key, dest_columns, incremental_predicates) -%}
  {%- if unique_key is none -%}
    {{ dbt.snowflake__get_merge_sql(target, source_sql, unique_key, dest_columns, incremental_predicates) }}
  {%- else -%}
    {%- set predicates = [] if incremental_predicates is none else [] + incremental_predicates -%}
    {%- set dest_names = dest_columns | map(attribute="name") | list -%}
    {%- set dest_cols_csv = get_quoted_csv(dest_names) -%}
    {%- set update_columns = get_merge_update_columns(config.get('merge_update_columns'),
                                                      config.get('merge_exclude_columns'), dest_columns) -%}
    {%- set keys = unique_key if (unique_key is sequence and unique_key is not string) else [unique_key] -%}
    {%- for key in keys -%}
      {%- do predicates.append("DBT_INTERNAL_SOURCE." ~ key ~ " = DBT_INTERNAL_DEST." ~ key) -%}
    {%- endfor %}
    merge into {{ target }} as DBT_INTERNAL_DEST
        using {{ source_sql }} as DBT_INTERNAL_SOURCE
        on {{ "(" ~ predicates | join(") and (") ~ ")" }}
    when matched then update set
        {% for column_name in update_columns -%}
            {{ column_name }} = DBT_INTERNAL_SOURCE.{{ column_name }}{% if not loop.last %}, {% endif %}
        {%- endfor %}
    when not matched then insert ({{ dest_cols_csv }})
    values (
        {%- for name in dest_names -%}
            DBT_INTERNAL_SOURCE.{{ adapter.quote(name) }}{% if not loop.last %}, {% endif %}
        {%- endfor -%}
    )
  {%- endif -%}
{%- endmacro %}


{% macro snowflake__snapshot_merge_sql(target, source, insert_cols) -%}
    {%- set columns = config.get("snapshot_table_column_names") or get_snapshot_table_column_names() -%}
    merge into {{ target.render() }} as DBT_INTERNAL_DEST
    using {{ source }} as DBT_INTERNAL_SOURCE
    on DBT_INTERNAL_SOURCE.{{ columns.dbt_scd_id }} = DBT_INTERNAL_DEST.{{ columns.dbt_scd_id }}
    when matched
     {% if config.get("dbt_valid_to_current") %}
       {% set dest_valid_to = ("DBT_INTERNAL_DEST." ~ columns.dbt_valid_to) | trim %}
       and ({{ equals(dest_valid_to, config.get('dbt_valid_to_current') | trim) }} or {{ dest_valid_to }} is null)
     {% else %}
       and DBT_INTERNAL_DEST.{{ columns.dbt_valid_to }} is null
     {% endif %}
     and DBT_INTERNAL_SOURCE.dbt_change_type in ('update', 'delete')
        then update set {{ columns.dbt_valid_to }} = DBT_INTERNAL_SOURCE.{{ columns.dbt_valid_to }}
    when not matched
     and DBT_INTERNAL_SOURCE.dbt_change_type = 'insert'
        then insert ({{ insert_cols | join(', ') }})
        values ({% for col in insert_cols %}DBT_INTERNAL_SOURCE.{{ col }}{% if not loop.last %}, {% endif %}{% endfor %})
{%- endmacro %}
