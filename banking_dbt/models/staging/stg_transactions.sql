-- Latest version of every transaction by WAL position (the source never updates them; robust anyway).
-- The pre-hook widens the kept money columns when raw's were widened (numeric(18,2) -> (20,4)).
{{ config(pre_hook="{{ widen_money_columns(this, source('raw', 'transactions'), {'amount': 'amount'}) }}") }}
{{ latest_version(
    source('raw', 'transactions'),
    key='id',
    columns=['id', 'account_id', 'txn_type', 'amount', 'related_account_id', 'status', 'created_at'],
    money_columns=['amount']
) }}
