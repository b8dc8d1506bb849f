-- Exact SCD2 of accounts from the change log: one row per committed version (see macros/change_log.sql).
{{ change_log_history(
    source('raw', 'accounts'),
    key='id',
    columns=['id', 'customer_id', 'account_type', 'currency', 'opening_balance', 'balance', 'status',
             'created_at', 'updated_at', 'closed_at'],
    money_columns=['opening_balance', 'balance']
) }}
