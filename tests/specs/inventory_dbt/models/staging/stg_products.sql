select product_id, sku, title, unit_cost, is_active, launched_on
from {{ source('raw', 'products') }}
