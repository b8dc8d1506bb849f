-- Latest version of every customer by WAL position; deleted customers stay, flagged is_deleted.
{{ latest_version(
    source('raw', 'customers'),
    key='id',
    columns=['id', 'first_name', 'last_name', 'email', 'created_at', 'updated_at']
) }}
