-- Exact SCD2 of customers from the change log: one row per committed version (see macros/bankflow/change_log.sql).
{{ change_log_history(
    source('raw', 'customers'),
    key='id',
    columns=['id', 'first_name', 'last_name', 'email', 'created_at', 'updated_at']
) }}
