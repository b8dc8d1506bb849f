{#-
  SCD2 of accounts as seen at each `dbt snapshot` run; same rules as customers_snapshot. dbt snapshots add new
  columns but never change a kept column's type: the pre-hook widens the money columns when raw's were widened, so
  a 4-decimal balance is not rounded into the old decimal(18,2) column.
-#}
{% snapshot accounts_snapshot %}
{{ config(
    unique_key='id',
    strategy='timestamp',
    updated_at='_source_ts',
    hard_deletes='new_record',
    pre_hook="{{ widen_money_columns(this, source('raw', 'accounts'),
                                     {'opening_balance': 'opening_balance', 'balance': 'balance'}) }}"
) }}
select
    id, customer_id, account_type, currency, opening_balance, balance, status,
    created_at, updated_at, closed_at, _lsn, _source_ts
from {{ ref('account_history') }}
where is_current
  and not is_deleted
{% endsnapshot %}
