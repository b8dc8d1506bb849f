-- Latest version of every transaction by WAL position (the source never updates them; robust anyway).
{{ latest_version(
    source('raw', 'transactions'),
    key='id',
    columns=['id', 'account_id', 'txn_type', 'amount', 'related_account_id', 'status', 'created_at'],
    money_columns=['amount']
) }}
