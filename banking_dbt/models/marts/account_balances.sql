{#-
  Reconciliation per (non-deleted) account: opening balance + signed transactions = the source's balance.
  Derived amounts keep the widest scale of the money columns they come from (read from raw's column types).
  Incremental: only the accounts touched since this table's marks, one per parent (stg_accounts' rows and
  fact_transactions' legs past `_bankflow_accounts_seq` / `_bankflow_fact_seq`), recomputed from all their legs.
  An account deleted meanwhile comes through as a tombstone row that the post-hook removes, so the table holds
  exactly the live accounts, as a full build does. The pre-hook widens the kept amounts when raw's were widened.
-#}
{{ config(
    unique_key='account_id',
    pre_hook="{{ widen_money_columns(this, source('raw', 'accounts'), {
                   'opening_balance': 'opening_balance', 'source_balance': 'balance', 'transactions_total': 'balance',
                   'computed_balance': 'balance', 'difference': 'balance'}) }}",
    post_hook="delete from {{ this }} where _bankflow_tombstone"
) }}
{%- set scale = money_scale([
    (source('raw', 'accounts'), ['opening_balance', 'balance']),
    (source('raw', 'transactions'), ['amount']),
]) %}
{%- set accounts, facts = ref('stg_accounts'), ref('fact_transactions') -%}
{%- set accounts_mark = bankflow_mark('_bankflow_accounts_seq') -%}
{%- set facts_mark = bankflow_mark('_bankflow_fact_seq') -%}
{%- set accounts_position = bankflow_model_position(accounts) -%}
{%- set facts_position = bankflow_model_position(facts) -%}
{%- set incremental = accounts_mark is not none and facts_mark is not none %}
with
{%- if incremental %}
touched as (
    select id as account_id
    from {{ accounts }}
    where {{ bankflow_changed(accounts_mark, accounts_position) }}
    union
    select account_id
    from {{ facts }}
    where {{ bankflow_changed(facts_mark, facts_position) }}
),
{%- endif %}

movements as (
    select
        account_id,
        count(*) as transaction_count,
        sum(signed_amount) as transactions_total
    from {{ facts }}
    where not is_deleted
    {%- if incremental %}
      and account_id in (select account_id from touched)
    {%- endif %}
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
    a._lsn as account_lsn,
    a.is_deleted as _bankflow_tombstone,
    {{ bankflow_seq_column(accounts_position, '_bankflow_accounts_seq') }},
    {{ bankflow_seq_column(facts_position, '_bankflow_fact_seq') }}
from {{ accounts }} as a
left join movements as m
    on m.account_id = a.id
{%- if incremental %}
where a.id in (select account_id from touched)
{%- else %}
where not a.is_deleted
{%- endif %}
