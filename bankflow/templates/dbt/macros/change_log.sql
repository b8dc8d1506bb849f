{#-
  Helpers over bankflow's raw change log (one row per change event; _op, _lsn, _tx_id, _source_ts, _file).
  Plain ANSI SQL: window functions in subqueries, no QUALIFY, no adapter-specific functions.
  (Shipped with bankflow: `bankflow init` copies this folder into a project's macros/bankflow/.)

  Both models are incremental when materialized so (see incremental.sql): a run recomputes only the keys that
  appear in raw files loaded past the model's mark, from all the events of those keys, and writes
  `_bankflow_load_seq` (raw's position read at the run's start). As a view or a table they read all of raw.
  Configure `latest_version` with unique_key = the key (merge or delete+insert); `change_log_history` with
  incremental_strategy='delete+insert', unique_key = the key columns plus 'version_number', and the post-hook
  "delete from {{ this }} where _bankflow_tombstone" (it recomputes a key from shortly before its new events,
  not from its first version, and rows it no longer has come back as tombstones).
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


{#-
  The latest version of every key by WAL position (deletes included, flagged is_deleted). Incremental: the
  latest of a key is the latest of its kept row and its new events (raw only grows), so a run reads the new
  events and the kept rows of their keys, never a key's whole history.
-#}
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
    {%- if mark is none %}
    from {{ bankflow_raw_upto(relation, position) }} as change_log
    {%- else %}
    from (
        select {{ columns | join(', ') }}, _op, _lsn, _tx_id, _source_ts, _file
        from ({{ bankflow_raw_delta_rows(relation, mark, position) | indent(8) }}) as delta_events
        union all
        select {% for col in columns %}kept.{{ col }}, {% endfor %}kept._op, kept._lsn, kept._tx_id, kept._source_ts,
            kept._file
        from {{ this }} as kept
        inner join (
            {{ bankflow_raw_delta_keys(relation, key, mark, position) | indent(12) }}
        ) as touched
            on {% for k in keys %}touched.{{ k }} = kept.{{ k }}{% if not loop.last %} and {% endif %}{% endfor %}
    ) as change_log
    {%- endif %}
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
{%- set on_key = [] -%}
{%- for k in keys -%}{%- do on_key.append('{a}.' ~ k ~ ' = {b}.' ~ k) -%}{%- endfor -%}
{%- set on_key = on_key | join(' and ') -%}
with
{% if mark is not none %}
{#-
  Incremental: per key of the delta, the recompute starts at the second-to-last kept version before the key's
  earliest new event (a new event may still belong to the last one's transaction, rule 2; nothing can reach back
  further, and that version keeps its predecessor). Its version_number - 1 is the offset of the renumbered rows;
  kept rows from there on that the recompute no longer has come back as tombstones, which the post-hook deletes.
-#}
delta as (
    select {{ by_key }}, min(_lsn) as _min_lsn
    from ({{ bankflow_raw_delta_keys(relation, key, mark, position, columns=['_lsn']) }}) as delta_events
    group by {{ by_key }}
),

last_before as (
    select {% for k in keys %}h.{{ k }}, {% endfor %}max(h.version_number) as _last_before
    from {{ this }} as h
    inner join delta as d
        on {{ on_key.format(a='d', b='h') }}
    where h._lsn < d._min_lsn
    group by {% for k in keys %}h.{{ k }}{% if not loop.last %}, {% endif %}{% endfor %}
),

cut as (
    select {% for k in keys %}h.{{ k }}, {% endfor %}h._lsn as _cut_lsn, h.version_number - 1 as _offset
    from {{ this }} as h
    inner join last_before as b
        on {{ on_key.format(a='b', b='h') }} and h.version_number = b._last_before - 1
),

window_events as (
    select change_log.*, coalesce(c._offset, 0) as _offset
    from {{ bankflow_raw_upto(relation, position) }} as change_log
    inner join delta as d
        on {{ on_key.format(a='d', b='change_log') }}
    left join cut as c
        on {{ on_key.format(a='c', b='change_log') }}
    where c._cut_lsn is null or change_log._lsn >= c._cut_lsn
),

replaced as (
    select h.*
    from {{ this }} as h
    inner join delta as d
        on {{ on_key.format(a='d', b='h') }}
    left join cut as c
        on {{ on_key.format(a='c', b='h') }}
    where c._cut_lsn is null or h._lsn >= c._cut_lsn
),
{%- endif %}

events as (
    select
        {%- for col in columns %}
        {% if col in money_columns %}{{ money(col) }} as {{ col }}{% else %}{{ col }}{% endif %},
        {%- endfor %}
        _op,
        _lsn,
        _tx_id,
        _source_ts,
        {% if mark is not none %}_offset{% else %}0{% endif %} as _offset,
        row_number() over (partition by {{ by_key }}, _lsn order by _file) as _event_rank
    from {% if mark is not none %}window_events{% else %}{{ bankflow_raw_upto(relation, position) }}{% endif %} as change_log
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
),

history as (
    select
        {%- for col in columns %}
        {{ col }},
        {%- endfor %}
        _op,
        _lsn,
        _tx_id,
        _source_ts,
        _offset + row_number() over (partition by {{ by_key }} order by _lsn) as version_number,
        _source_ts as valid_from,
        lead(_source_ts) over (partition by {{ by_key }} order by _lsn) as valid_to,
        case when lead(_lsn) over (partition by {{ by_key }} order by _lsn) is null then true else false end
            as is_current,
        case when _op = 'd' then true else false end as is_deleted
    from versions
)

select history.*, false as _bankflow_tombstone, {{ bankflow_seq_column(position) }}
from history
{%- if mark is not none %}
union all
select
    {%- for col in columns %}
    r.{{ col }},
    {%- endfor %}
    r._op, r._lsn, r._tx_id, r._source_ts, r.version_number, r.valid_from, r.valid_to, r.is_current, r.is_deleted,
    true as _bankflow_tombstone,
    {{ bankflow_seq_column(position) }}
from replaced as r
where not exists (
    select 1 from history as n
    where {{ on_key.format(a='n', b='r') }} and n.version_number = r.version_number
)
{%- endif %}
{% endmacro %}
