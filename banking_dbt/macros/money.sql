{#- Money is exact: DECIMAL(18,2) on DuckDB, NUMBER(18,2) on Snowflake. Never float/double. -#}
{% macro money(expression) -%}
    cast({{ expression }} as decimal(18, 2))
{%- endmacro %}


{#- Null-safe equality without IS NOT DISTINCT FROM / EQUAL_NULL, so it reads the same on every adapter. -#}
{% macro null_safe_equal(left, right) -%}
    ({{ left }} = {{ right }} or ({{ left }} is null and {{ right }} is null))
{%- endmacro %}
