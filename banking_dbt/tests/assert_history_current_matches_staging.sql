-- The current version of the exact history is the latest state in staging, column for column.
-- On a cycle narrowed to what changed (macros/bankflow/tests.sql): the keys either side's latest build wrote
-- (a history build rewrites a key's current version with its new ones), and every row with a null key.
{% set checks = [
    ('customer_history', 'stg_customers', ['first_name', 'last_name', 'email', 'created_at', 'updated_at']),
    ('account_history', 'stg_accounts', ['customer_id', 'account_type', 'currency', 'opening_balance', 'balance',
                                         'status', 'created_at', 'updated_at', 'closed_at']),
] %}
{% for history, staging, columns in checks %}
{%- set history_marks = bankflow_test_marks(ref(history)) %}
{%- set staging_marks = bankflow_test_marks(ref(staging)) %}
{%- set narrow = history_marks and staging_marks %}
{%- if narrow %}
{%- set keys -%}
    (select id from {{ bankflow_latest_rows(ref(history), history_marks) }} as w
     union
     select id from {{ bankflow_latest_rows(ref(staging), staging_marks) }} as w)
{%- endset %}
{%- endif %}
select '{{ history }}' as model, coalesce(h.id, s.id) as id
from (
    select *
    from {{ ref(history) }}
    where is_current
    {%- if narrow %}
      and (id in {{ keys }} or id is null)
    {%- endif %}
) as h
full outer join (
    select *
    from {{ ref(staging) }}
    {%- if narrow %}
    where id in {{ keys }} or id is null
    {%- endif %}
) as s
    on s.id = h.id
where h.id is null
   or s.id is null
   or h.is_deleted <> s.is_deleted
   {%- for col in columns %}
   or not {{ null_safe_equal('h.' ~ col, 's.' ~ col) }}
   {%- endfor %}
{% if not loop.last %}union all{% endif %}
{% endfor %}
