{#-
  Helpers over bankflow's raw change log (one row per change event; _op, _lsn, _tx_id, _source_ts, _file).
  Plain ANSI SQL: window functions in subqueries, no QUALIFY, no adapter-specific functions.
  (Shipped with bankflow: `bankflow init` copies this folder into a project's macros/bankflow/.)

  Both models are incremental when materialized so (see incremental.sql): a run recomputes only the keys that
  appear in raw files loaded past the model's mark, from all the events of those keys, and writes
  `_bankflow_load_seq` (raw's position read at the run's start). As a view or a table they read all of raw.
  Configure `latest_version` with unique_key = the key (merge or delete+insert), `change_log_history` with
  incremental_strategy='delete+insert' and unique_key = the key: a key's versions are replaced as a whole.
-#}

{#-
  `key` is the primary key: one column name, or a list of them for a composite key (['loan_id', 'seq']).
  A primary-key change arrives as a delete of the old key and a create of the new one at the same _lsn (Debezium's
  shape, and the built-in engine's), so per key it is an ordinary delete and an ordinary insert: the old key ends
  deleted, the new key starts with the create.
-#}
{% macro key_columns(key) -%}
    {{ return([key] if key is string else key) }}
{%- endmacro %}


{#- The latest version of every key by WAL position (deletes included, flagged is_deleted). -#}
{% macro latest_version(relation, key, columns, money_columns=[]) %}
{%- set keys = key_columns(key) -%}
{%- do assert_exact_money(relation, money_columns) -%}
{%- set mark = bankflow_mark() -%}
{%- set position = bankflow_raw_position(relation) -%}
select
    {%- for col in columns %}
    {% if col in money_columns %}{{ money(col) }} as {{ col }}{% else %}{{ col }}{% endif %},
    {%- endfor %}
    _op,
    case when _op = 'd' then true else false end as is_deleted,
    _lsn,
    _tx_id,
    _source_ts,
    _file,
    {{ bankflow_seq_column(position) }}
from (
    select
        change_log.*,
        -- an event loaded twice has the same (key, _lsn): either copy is the same version
        row_number() over (partition by {{ keys | join(', ') }} order by _lsn desc, _file desc) as _version_rank
    from {{ bankflow_raw_events(relation, key, mark, position) }} as change_log
) as ranked
where _version_rank = 1
{% endmacro %}


{#-
  The exact SCD2 of a table from its change log: one row per committed version.
    1. exact duplicates of an event (same key and _lsn) count once;
    2. several changes of one key in one source transaction are one committed version: the last one (by _lsn);
       nobody outside the transaction ever saw the intermediate states;
    3. a snapshot read ('r') identical to the version before it (or a change identical to the snapshot read
       before it: the snapshot/stream overlap) is a duplicate, not a version;
    4. valid_from = commit time (_source_ts), valid_to = commit time of the next version (null for the current);
    5. a delete is a version of its own (the before-image, is_deleted = true, valid_to null while it is the
       current state), so "exactly one current row per key" holds for deleted keys too.
-#}
{% macro change_log_history(relation, key, columns, money_columns=[]) %}
{%- set keys = key_columns(key) -%}
{%- set by_key = keys | join(', ') -%}
{%- do assert_exact_money(relation, money_columns) -%}
{%- set mark = bankflow_mark() -%}
{%- set position = bankflow_raw_position(relation) -%}
with events as (
    select
        {%- for col in columns %}
        {% if col in money_columns %}{{ money(col) }} as {{ col }}{% else %}{{ col }}{% endif %},
        {%- endfor %}
        _op,
        _lsn,
        _tx_id,
        _source_ts,
        row_number() over (partition by {{ by_key }}, _lsn order by _file) as _event_rank
    from {{ bankflow_raw_events(relation, key, mark, position) }} as change_log
),

committed as (
    select
        events.*,
        case
            when _tx_id is null then 1  -- no transaction known: every change is its own version
            else row_number() over (partition by {{ by_key }}, _tx_id, _source_ts order by _lsn desc)
        end as _tx_rank
    from events
    where _event_rank = 1
),

compared as (
    select
        committed.*,
        lag(_op) over (partition by {{ by_key }} order by _lsn) as _prev_op
        {%- for col in columns if col not in keys %},
        lag({{ col }}) over (partition by {{ by_key }} order by _lsn) as _prev_{{ col }}
        {%- endfor %}
    from committed
    where _tx_rank = 1
),

versions as (
    select *
    from compared
    where not (
        _prev_op is not null
        and (_op = 'r' or _prev_op = 'r')
        and _op <> 'd'
        and _prev_op <> 'd'
        {%- for col in columns if col not in keys %}
        and {{ null_safe_equal(col, '_prev_' ~ col) }}
        {%- endfor %}
    )
)

select
    {%- for col in columns %}
    {{ col }},
    {%- endfor %}
    _op,
    _lsn,
    _tx_id,
    _source_ts,
    row_number() over (partition by {{ by_key }} order by _lsn) as version_number,
    _source_ts as valid_from,
    lead(_source_ts) over (partition by {{ by_key }} order by _lsn) as valid_to,
    case when lead(_lsn) over (partition by {{ by_key }} order by _lsn) is null then true else false end as is_current,
    case when _op = 'd' then true else false end as is_deleted,
    {{ bankflow_seq_column(position) }}
from versions
{% endmacro %}
