-- Reconciliation per (non-deleted) account: opening balance + signed transactions = the source's balance.
-- Derived amounts keep the widest scale of the money columns they come from (read from raw's column types).
{%- set scale = money_scale([
    (source('raw', 'accounts'), ['opening_balance', 'balance']),
    (source('raw', 'transactions'), ['amount']),
]) %}
with movements as (
    select
        account_id,
        count(*) as transaction_count,
        sum(signed_amount) as transactions_total
    from {{ ref('fact_transactions') }}
    where not is_deleted
    group by account_id
)

select
    a.id as account_id,
    a.customer_id,
    a.account_type,
    a.currency,
    a.status,
    a.opening_balance,
    coalesce(m.transaction_count, 0) as transaction_count,
    {{ money('coalesce(m.transactions_total, 0)', scale) }} as transactions_total,
    {{ money('a.opening_balance + coalesce(m.transactions_total, 0)', scale) }} as computed_balance,
    a.balance as source_balance,
    {{ money('a.balance - (a.opening_balance + coalesce(m.transactions_total, 0))', scale) }} as difference,
    a._lsn as account_lsn
from {{ ref('stg_accounts') }} as a
left join movements as m
    on m.account_id = a.id
where not a.is_deleted
