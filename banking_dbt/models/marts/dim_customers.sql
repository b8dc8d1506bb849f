-- Customer dimension (SCD2 at snapshot time) from customers_snapshot.
select
    dbt_scd_id as customer_version_key,
    id as customer_id,
    first_name,
    last_name,
    email,
    created_at,
    updated_at,
    _lsn,
    dbt_valid_from as valid_from,
    dbt_valid_to as valid_to,
    case when dbt_valid_to is null then true else false end as is_current,
    case when dbt_is_deleted = 'True' then true else false end as is_deleted
from {{ ref('customers_snapshot') }}
