-- Every live transaction leg books on an existing, non-deleted account (and a transfer's counterpart exists).
-- On a cycle narrowed to what changed (macros/bankflow/tests.sql): the legs the fact's latest build wrote, and
-- the other legs naming an account (either side) that stg_accounts' latest build rewrote and that is no longer
-- live (usually none), each looked up among all accounts. stg_accounts replaces an account's row, never removes
-- it, so no other leg can break.
{%- set facts, accounts = ref('fact_transactions'), ref('stg_accounts') %}
{%- set fact_marks = bankflow_test_marks(facts) %}
{%- set account_marks = bankflow_test_marks(accounts) %}
with legs as (
    select *
    from {{ facts }} as f
    where not f.is_deleted
    {%- if fact_marks and account_marks %}
      and {{ bankflow_written_row('f', facts, fact_marks) }}
    union all
    select *
    from {{ facts }} as f
    where not f.is_deleted
      and {{ bankflow_unwritten_row('f', facts, fact_marks) }}
      and (
          f.account_id in ({{ bankflow_lost_keys(accounts, 'id', account_marks, 'not is_deleted') }})
          or f.related_account_id in ({{ bankflow_lost_keys(accounts, 'id', account_marks, 'not is_deleted') }})
      )
    {%- endif %}
)

select f.id, f.account_id, f.related_account_id
from legs as f
left join {{ accounts }} as a
    on a.id = f.account_id and not a.is_deleted
left join {{ accounts }} as r
    on r.id = f.related_account_id and not r.is_deleted
where a.id is null
   or (f.txn_type in ('TRANSFER_IN', 'TRANSFER_OUT') and r.id is null)
