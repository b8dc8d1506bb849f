-- Customer dimension (SCD2 at snapshot time) from customers_snapshot. Incremental: every version of the customers
-- whose history changed since this table's mark, replaced as a whole (the snapshot only changes those).
{{ config(incremental_strategy='delete+insert', unique_key='customer_id') }}
{%- set parent = ref('customer_history') -%}
{%- set mark = bankflow_mark() -%}
{%- set position = bankflow_model_position(parent) %}
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
    case when dbt_is_deleted = 'True' then true else false end as is_deleted,
    {{ bankflow_seq_column(position) }}
from {{ ref('customers_snapshot') }}
{%- if mark is not none %}
where id in (select id from {{ parent }} where {{ bankflow_changed(mark, position) }})
{%- endif %}
