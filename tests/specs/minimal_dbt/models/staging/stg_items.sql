select id, label, price from {{ source('raw', 'items') }}
