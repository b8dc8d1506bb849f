select product_id, bin_code, quantity, counted_at
from {{ source('raw', 'stock') }}
