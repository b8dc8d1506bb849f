-- Account dimension (SCD2 at snapshot time) from accounts_snapshot.
select
    dbt_scd_id as account_version_key,
    id as account_id,
    customer_id,
    account_type,
    currency,
    opening_balance,
    balance,
    status,
    created_at,
    updated_at,
    closed_at,
    _lsn,
    dbt_valid_from as valid_from,
    dbt_valid_to as valid_to,
    case when dbt_valid_to is null then true else false end as is_current,
    case when dbt_is_deleted = 'True' then true else false end as is_deleted
from {{ ref('accounts_snapshot') }}
