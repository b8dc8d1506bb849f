-- The current version of the exact history is the latest state in staging, column for column.
{% set checks = [
    ('customer_history', 'stg_customers', ['first_name', 'last_name', 'email', 'created_at', 'updated_at']),
    ('account_history', 'stg_accounts', ['customer_id', 'account_type', 'currency', 'opening_balance', 'balance',
                                         'status', 'created_at', 'updated_at', 'closed_at']),
] %}
{% for history, staging, columns in checks %}
select '{{ history }}' as model, coalesce(h.id, s.id) as id
from (select * from {{ ref(history) }} where is_current) as h
full outer join {{ ref(staging) }} as s
    on s.id = h.id
where h.id is null
   or s.id is null
   or h.is_deleted <> s.is_deleted
   {%- for col in columns %}
   or not {{ null_safe_equal('h.' ~ col, 's.' ~ col) }}
   {%- endfor %}
{% if not loop.last %}union all{% endif %}
{% endfor %}
