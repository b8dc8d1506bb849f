{#-
  Money is exact and keeps the scale the source declares. raw already holds an exact decimal of the column's
  declared precision and scale (DECIMAL(p,s) on DuckDB, NUMBER(p,s) on Snowflake), so money(column) casts nothing:
  the old fixed cast to DECIMAL(18,2) silently rounded a wider source column (numeric(20,4)) back to cents while
  every test passed.
  A derived amount (a sum, a difference) passes `scale`, taken from the warehouse's own column types with
  money_scale(), and is cast to DECIMAL(38, scale): exact, as wide as both adapters allow, never float (an
  emulator or an adapter may widen sum() of a decimal to a double; the cast pins it to the columns' scale).
-#}
{% macro money(expression, scale=none) -%}
    {%- if scale is none -%}
    ({{ expression }})
    {%- else -%}
    cast({{ expression }} as decimal(38, {{ scale }}))
    {%- endif -%}
{%- endmacro %}


{#-
  The (precision, scale) of each money column of `relation`, read from the warehouse catalog; fails loudly (compile
  error) when a money column is missing or is not an exact decimal (DECIMAL/NUMERIC/NUMBER(p,s)): never round, never
  float. Returns {} while parsing and when the relation does not exist yet (the model's own select then fails with
  the warehouse's message).
-#}
{% macro money_types(relation, money_columns) -%}
    {%- set found = {} -%}
    {%- if execute and money_columns -%}
        {%- set types = {} -%}
        {%- for column in adapter.get_columns_in_relation(relation) -%}
            {%- do types.update({column.name | lower: column.data_type | lower | replace(' ', '')}) -%}
        {%- endfor -%}
        {%- if types -%}
            {%- for col in money_columns -%}
                {%- set data_type = types.get(col | lower) -%}
                {%- set match = modules.re.match('^(decimal|numeric|number)\\((\\d+),(\\d+)\\)$', data_type or '') -%}
                {%- if data_type is none -%}
                    {{ exceptions.raise_compiler_error(
                        "money column " ~ col ~ " is not a column of " ~ relation ~ " (columns: "
                        ~ (types.keys() | list | join(', ')) ~ ")") }}
                {%- elif not match -%}
                    {{ exceptions.raise_compiler_error(
                        "money column " ~ relation ~ "." ~ col ~ " is " ~ data_type
                        ~ ", not an exact decimal with a declared scale: money must stay DECIMAL/NUMBER(p,s) end "
                        ~ "to end (declare the source column as numeric(p,s))") }}
                {%- endif -%}
                {%- do found.update({col: (match.group(2) | int, match.group(3) | int)}) -%}
            {%- endfor -%}
        {%- endif -%}
    {%- endif -%}
    {{ return(found) }}
{%- endmacro %}


{#- The scale of each money column of `relation` (see money_types). -#}
{% macro money_scales(relation, money_columns) -%}
    {%- set scales = {} -%}
    {%- for col, type in money_types(relation, money_columns).items() -%}
        {%- do scales.update({col: type[1]}) -%}
    {%- endfor -%}
    {{ return(scales) }}
{%- endmacro %}


{#- Fail loudly unless every money column of `relation` is an exact decimal (see money_scales). -#}
{% macro assert_exact_money(relation, money_columns) -%}
    {%- do money_scales(relation, money_columns) -%}
{%- endmacro %}


{#-
  The widest scale of the money columns of several relations, for money(expression, scale): a list of
  (relation, [columns]). None while parsing or when none of them exists yet (money() then casts nothing).
-#}
{% macro money_scale(columns_by_relation) -%}
    {%- set found = [] -%}
    {%- for relation, columns in columns_by_relation -%}
        {%- do found.extend(money_scales(relation, columns).values()) -%}
    {%- endfor -%}
    {{ return(found | max if found else none) }}
{%- endmacro %}


{#-
  Pre-hook of the tables dbt keeps across runs (the incremental fact, the snapshots): when raw's money column is
  wider than the kept column (the source went from numeric(18,2) to numeric(20,4) and raw was migrated), widen the
  kept column first, so the new values are not rounded to the old scale on insert. `columns` maps the kept column
  to its raw column. Renders no SQL (it runs its own statements); a no-op on the first run and when nothing changed.
-#}
{% macro widen_money_columns(relation, raw_relation, columns) -%}
    {%- if execute and load_relation(relation) is not none -%}
        {%- set kept = money_types(relation, columns.keys() | list) -%}
        {%- set raw = money_types(raw_relation, columns.values() | unique | list) -%}
        {%- for col, raw_col in columns.items() if col in kept and raw_col in raw -%}
            {%- set p1, s1 = kept[col] -%}
            {%- set p2, s2 = raw[raw_col] -%}
            {%- set scale = [s1, s2] | max -%}
            {%- set precision = [[p1 - s1, p2 - s2] | max + scale, 38] | min -%}
            {%- if (precision, scale) != (p1, s1) -%}
                {{ log("widening " ~ relation ~ "." ~ col ~ " from decimal(" ~ p1 ~ "," ~ s1 ~ ") to decimal("
                       ~ precision ~ "," ~ scale ~ ") like " ~ raw_relation ~ "." ~ raw_col, info=true) }}
                {%- do adapter.dispatch('widen_column')(relation, col,
                                                      "decimal(" ~ precision ~ ", " ~ scale ~ ")") -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{% macro default__widen_column(relation, column, data_type) -%}
    {#- Snowflake cannot change a NUMBER's scale in place: a new column, the values copied, the old one dropped. -#}
    {%- set tmp = column ~ '__widened' -%}
    {%- do run_query("alter table " ~ relation ~ " add column " ~ tmp ~ " " ~ data_type) -%}
    {%- do run_query("update " ~ relation ~ " set " ~ tmp ~ " = " ~ column) -%}
    {%- do run_query("alter table " ~ relation ~ " drop column " ~ column) -%}
    {%- do run_query("alter table " ~ relation ~ " rename column " ~ tmp ~ " to " ~ column) -%}
{%- endmacro %}

{% macro duckdb__widen_column(relation, column, data_type) -%}
    {%- do run_query("alter table " ~ relation ~ " alter column " ~ column ~ " type " ~ data_type) -%}
{%- endmacro %}


{#- Null-safe equality without IS NOT DISTINCT FROM / EQUAL_NULL, so it reads the same on every adapter. -#}
{% macro null_safe_equal(left, right) -%}
    ({{ left }} = {{ right }} or ({{ left }} is null and {{ right }} is null))
{%- endmacro %}
