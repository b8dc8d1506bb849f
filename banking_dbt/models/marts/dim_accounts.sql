-- Account dimension (SCD2 at snapshot time) from accounts_snapshot. Incremental: every version of the accounts
-- whose history changed since this table's mark, replaced as a whole (the snapshot only changes those).
-- The pre-hook widens the kept money columns when raw's were widened (numeric(18,2) -> (20,4)).
{{ config(
    incremental_strategy='delete+insert',
    unique_key='account_id',
    pre_hook="{{ widen_money_columns(this, source('raw', 'accounts'),
                                     {'opening_balance': 'opening_balance', 'balance': 'balance'}) }}"
) }}
{%- set parent = ref('account_history') -%}
{%- set mark = bankflow_mark() -%}
{%- set position = bankflow_model_position(parent) %}
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
    case when dbt_is_deleted = 'True' then true else false end as is_deleted,
    {{ bankflow_seq_column(position) }}
from {{ ref('accounts_snapshot') }}
{%- if mark is not none %}
where id in (select id from {{ parent }} where {{ bankflow_changed(mark, position) }})
{%- endif %}
