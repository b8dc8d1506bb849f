-- Exact SCD2 of accounts from the change log: one row per committed version (see macros/bankflow/change_log.sql).
-- The pre-hook widens the kept money columns when raw's were widened (numeric(18,2) -> (20,4)).
{{ config(pre_hook="{{ widen_money_columns(this, source('raw', 'accounts'), {'opening_balance': 'opening_balance', 'balance': 'balance'}) }}") }}
{{ change_log_history(
    source('raw', 'accounts'),
    key='id',
    columns=['id', 'customer_id', 'account_type', 'currency', 'opening_balance', 'balance', 'status',
             'created_at', 'updated_at', 'closed_at'],
    money_columns=['opening_balance', 'balance']
) }}
