-- Latest version of every account by WAL position.
{{ latest_version(
    source('raw', 'accounts'),
    key='id',
    columns=['id', 'customer_id', 'account_type', 'currency', 'opening_balance', 'balance', 'status',
             'created_at', 'updated_at', 'closed_at'],
    money_columns=['opening_balance', 'balance']
) }}
