{#-
  Incremental models over bankflow's raw change log, on raw's COMMIT position, never on a change's own _lsn.
  (Shipped with bankflow: `bankflow init` copies this folder into a project's macros/bankflow/; edit a copy under
  another name, not these files.)

  Change LSNs do not follow commit order: transactions overlap, so a change with a lower LSN can commit, and reach
  raw, after one with a higher LSN; a mark on max(_lsn) loses it for good. bankflow's ledger of loaded files
  (`<raw schema>._bankflow_loaded_files`) gives every load chunk a `load_seq` (max + 1 when it is written), so
  whatever the LSNs inside, anything loaded later has a larger number. Its `raw_file` column is the `_file` value
  the file's rows carry in raw. On Snowflake a COPY commits before its ledger row: rows count as arrived once
  their ledger row exists, which keeps exactly-once.

  Each incremental model keeps a bookkeeping column (`_bankflow_load_seq`): the position of its parent (the
  ledger, or a parent model's own column) it has processed up to; its mark is max() of it in {{ this }}. A run
  1. reads the parent's position once, at the model's start (the upper bound: a load that commits meanwhile has a
     larger number and waits for the next run, it cannot slip under the mark);
  2. takes the keys of the parent's rows past the mark, up to that bound (for raw: the rows of the ledger's files
     in that range);
  3. recomputes those keys from ALL their events and replaces those keys' rows (merge or delete+insert on the
     key), so a late, overlapping or re-delivered change lands where it belongs.
  A full build reads everything and records the same bound, so both give the same rows (bookkeeping aside).
-#}

{#- bankflow's ledger of loaded files, beside the raw tables (same database and schema). -#}
{% macro bankflow_ledger(raw_relation) -%}
    {{ return(api.Relation.create(database=raw_relation.database, schema=raw_relation.schema,
                                  identifier=var('bankflow_ledger', '_bankflow_loaded_files'), type='table')) }}
{%- endmacro %}


{#- A string literal (standard SQL; Snowflake also reads a backslash as an escape). -#}
{% macro bankflow_string(value) -%}
    {{ return(adapter.dispatch('bankflow_string')(value)) }}
{%- endmacro %}

{% macro default__bankflow_string(value) -%}
    {{ return("'" ~ (value | replace("'", "''")) ~ "'") }}
{%- endmacro %}

{% macro snowflake__bankflow_string(value) -%}
    {{ return("'" ~ (value | replace("\\", "\\\\") | replace("'", "''")) ~ "'") }}
{%- endmacro %}


{#- The integer a one-value query returns (0 for null, and while parsing). -#}
{% macro bankflow_scalar(sql) -%}
    {%- if not execute -%}
        {{ return(0) }}
    {%- endif -%}
    {%- set value = run_query(sql).columns[0].values()[0] -%}
    {{ return(0 if value is none else value | int) }}
{%- endmacro %}


{#-
  The model's mark: max(column) of {{ this }} in an incremental run; none for a full build, and when the kept
  table predates the column (then the run recomputes every key, once, and the column is added).
-#}
{% macro bankflow_mark(column='_bankflow_load_seq') -%}
    {%- if execute and is_incremental() -%}
        {%- set names = adapter.get_columns_in_relation(this) | map(attribute='name') | map('lower') | list -%}
        {%- if column | lower in names -%}
            {{ return(bankflow_scalar("select max(" ~ column ~ ") from " ~ this)) }}
        {%- endif -%}
    {%- endif -%}
    {{ return(none) }}
{%- endmacro %}


{#-
  raw's position now: the ledger's max(load_seq) (0 while there is no ledger; an incremental run needs one).
  Var `bankflow_raw_position` fixes it for a whole cycle instead: `bankflow run` loads raw while dbt runs, and
  passes the position of its last complete load round, so every model of the cycle reads the same raw (see
  bankflow_raw_upto), a staging model no newer than the history built after it.
-#}
{% macro bankflow_raw_position(raw_relation) -%}
    {%- if not execute -%}
        {{ return(0) }}
    {%- endif -%}
    {%- if var('bankflow_raw_position', none) is not none -%}
        {{ return(var('bankflow_raw_position') | int) }}
    {%- endif -%}
    {%- set ledger = load_relation(bankflow_ledger(raw_relation)) -%}
    {%- if ledger is none -%}
        {%- if is_incremental() -%}
            {{ exceptions.raise_compiler_error(
                "no ledger " ~ bankflow_ledger(raw_relation) ~ " beside " ~ raw_relation ~ ": an incremental "
                ~ "model over raw takes its changes from bankflow's ledger of loaded files (bankflow's load "
                ~ "stage writes it); load raw with bankflow, or run with --full-refresh") }}
        {%- endif -%}
        {{ return(0) }}
    {%- endif -%}
    {{ return(bankflow_scalar("select max(load_seq) from " ~ ledger)) }}
{%- endmacro %}


{#- A parent model's position now: max(column) of it. -#}
{% macro bankflow_model_position(relation, column='_bankflow_load_seq') -%}
    {{ return(bankflow_scalar("select max(" ~ column ~ ") from " ~ relation)) }}
{%- endmacro %}


{#- The bookkeeping value of the rows a run writes: the parent position it read at its start. -#}
{% macro bankflow_seq_column(position, column='_bankflow_load_seq') -%}
    cast({{ position }} as {{ dbt.type_bigint() }}) as {{ column }}
{%- endmacro %}


{#- A condition on a parent model's rows: past the mark, up to the position (true in a full build). -#}
{% macro bankflow_changed(mark, position, column='_bankflow_load_seq') -%}
    {%- if mark is none -%}
    (1 = 1)
    {%- else -%}
    ({{ column }} > {{ mark }} and {{ column }} <= {{ position }})
    {%- endif -%}
{%- endmacro %}


{#-
  The distinct keys of the raw rows loaded in ledger files with load_seq in (mark, position] (with `columns`: those
  columns too, one row per raw row). Var
  `bankflow_load_seq_lookback` (default 0) re-reads that many load numbers below the mark: for several loaders
  writing one ledger at once (two chunks may then take the same number and commit on either side of a run's
  read); re-reading is idempotent, it only costs the recompute of those keys.
-#}
{% macro bankflow_raw_delta_keys(raw_relation, key, mark, position, columns=[]) -%}
{%- set keys = key_columns(key) -%}
select {% if not columns %}distinct {% endif %}{{ (keys + columns) | join(', ') }}
from ({{ bankflow_raw_delta_rows(raw_relation, mark, position) }}) as delta_rows
{%- endmacro %}


{#- The raw rows loaded in ledger files with load_seq in (mark, position] (see bankflow_raw_delta_keys). -#}
{% macro bankflow_raw_delta_rows(raw_relation, mark, position) -%}
{%- set since = mark - (var('bankflow_load_seq_lookback', 0) | int) -%}
select *
from {{ raw_relation }}
where _file in (
    select raw_file
    from {{ bankflow_ledger(raw_relation) }}
    where lower(raw_table) = lower({{ bankflow_string(raw_relation.identifier) }})
      and load_seq > {{ since }}
      and load_seq <= {{ position }}
)
{%- endmacro %}


{#-
  raw as of `position` when var `bankflow_raw_position` fixes the cycle's position (a parenthesised subquery:
  raw without the rows of files the ledger numbered past it, i.e. loaded while the cycle runs), else raw itself.
  Rows of ledgers older than load_seq (null) count as loaded before any position.
-#}
{% macro bankflow_raw_upto(raw_relation, position) -%}
{%- if var('bankflow_raw_position', none) is none -%}
{{ raw_relation }}
{%- else -%}
(
    select *
    from {{ raw_relation }}
    where _file not in (
        select raw_file
        from {{ bankflow_ledger(raw_relation) }}
        where lower(raw_table) = lower({{ bankflow_string(raw_relation.identifier) }})
          and load_seq > {{ position }}
          and raw_file is not null
    )
)
{%- endif -%}
{%- endmacro %}


{#-
  The raw change events a model recomputes, as a relation or a parenthesised subquery: all of raw in a full
  build (mark none), else every event of the keys that appear in the delta; both as of `position`.
-#}
{% macro bankflow_raw_events(raw_relation, key, mark, position) -%}
{%- if mark is none -%}
{{ bankflow_raw_upto(raw_relation, position) }}
{%- else -%}
{%- set keys = key_columns(key) -%}
(
    select change_log.*
    from {{ bankflow_raw_upto(raw_relation, position) }} as change_log
    inner join (
        {{ bankflow_raw_delta_keys(raw_relation, key, mark, position) | indent(8) }}
    ) as touched
        on {% for k in keys %}touched.{{ k }} = change_log.{{ k }}{% if not loop.last %} and {% endif %}{% endfor %}
)
{%- endif -%}
{%- endmacro %}
