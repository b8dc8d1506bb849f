-- Latest version of every account by WAL position.
-- The pre-hook widens the kept money columns when raw's were widened (numeric(18,2) -> (20,4)).
{{ config(pre_hook="{{ widen_money_columns(this, source('raw', 'accounts'), {'opening_balance': 'opening_balance', 'balance': 'balance'}) }}") }}
{{ latest_version(
    source('raw', 'accounts'),
    key='id',
    columns=['id', 'customer_id', 'account_type', 'currency', 'opening_balance', 'balance', 'status',
             'created_at', 'updated_at', 'closed_at'],
    money_columns=['opening_balance', 'balance']
) }}
