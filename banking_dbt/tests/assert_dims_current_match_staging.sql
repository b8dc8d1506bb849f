-- After `dbt snapshot`, the current live dimension rows are exactly the live staging rows (same columns), and
-- no live staging row is missing from the dimension. Deleted keys are covered by the snapshots' hard_deletes.
{% set checks = [
    ('dim_customers', 'customer_id', 'stg_customers', ['first_name', 'last_name', 'email', 'updated_at']),
    ('dim_accounts', 'account_id', 'stg_accounts', ['customer_id', 'account_type', 'currency', 'opening_balance',
                                                    'balance', 'status', 'updated_at', 'closed_at']),
] %}
{% for dim, key, staging, columns in checks %}
select '{{ dim }}' as model, coalesce(d.{{ key }}, s.id) as id
from (select * from {{ ref(dim) }} where is_current and not is_deleted) as d
full outer join (select * from {{ ref(staging) }} where not is_deleted) as s
    on s.id = d.{{ key }}
where d.{{ key }} is null
   or s.id is null
   {%- for col in columns %}
   or not {{ null_safe_equal('d.' ~ col, 's.' ~ col) }}
   {%- endfor %}
{% if not loop.last %}union all{% endif %}
{% endfor %}
