select p.product_id, p.sku, sum(s.quantity) as on_hand
from {{ ref('stg_products') }} p
join {{ ref('stg_stock_levels') }} s using (product_id)
group by p.product_id, p.sku
