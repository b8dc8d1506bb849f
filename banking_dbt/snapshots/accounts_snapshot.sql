{#- SCD2 of accounts as seen at each `dbt snapshot` run; same rules as customers_snapshot. -#}
{% snapshot accounts_snapshot %}
{{ config(
    unique_key='id',
    strategy='timestamp',
    updated_at='_source_ts',
    hard_deletes='new_record'
) }}
select
    id, customer_id, account_type, currency, opening_balance, balance, status,
    created_at, updated_at, closed_at, _lsn, _source_ts
from {{ ref('account_history') }}
where is_current
  and not is_deleted
{% endsnapshot %}
