-- After `dbt snapshot`, the current live dimension rows are exactly the live staging rows (same columns), and
-- no live staging row is missing from the dimension. Deleted keys are covered by the snapshots' hard_deletes.
-- On a cycle narrowed to what changed (macros/bankflow/tests.sql): the keys either side's latest build wrote (a
-- dimension build replaces all of a key's versions), and every row with a null key.
{% set checks = [
    ('dim_customers', 'customer_id', 'stg_customers', ['first_name', 'last_name', 'email', 'updated_at']),
    ('dim_accounts', 'account_id', 'stg_accounts', ['customer_id', 'account_type', 'currency', 'opening_balance',
                                                    'balance', 'status', 'updated_at', 'closed_at']),
] %}
{% for dim, key, staging, columns in checks %}
{%- set dim_marks = bankflow_test_marks(ref(dim)) %}
{%- set staging_marks = bankflow_test_marks(ref(staging)) %}
{%- set narrow = dim_marks and staging_marks %}
{%- if narrow %}
{%- set keys -%}
    (select {{ key }} from {{ bankflow_latest_rows(ref(dim), dim_marks) }} as w
     union
     select id from {{ bankflow_latest_rows(ref(staging), staging_marks) }} as w)
{%- endset %}
{%- endif %}
select '{{ dim }}' as model, coalesce(d.{{ key }}, s.id) as id
from (
    select *
    from {{ ref(dim) }}
    where is_current and not is_deleted
    {%- if narrow %}
      and ({{ key }} in {{ keys }} or {{ key }} is null)
    {%- endif %}
) as d
full outer join (
    select *
    from {{ ref(staging) }}
    where not is_deleted
    {%- if narrow %}
      and (id in {{ keys }} or id is null)
    {%- endif %}
) as s
    on s.id = d.{{ key }}
where d.{{ key }} is null
   or s.id is null
   {%- for col in columns %}
   or not {{ null_safe_equal('d.' ~ col, 's.' ~ col) }}
   {%- endfor %}
{% if not loop.last %}union all{% endif %}
{% endfor %}
