-- A transfer is two legs in ONE source transaction: OUT on the sender, IN on the receiver, same amount.
-- On a cycle narrowed to what changed (macros/bankflow/tests.sql): a leg can only lose its pair in a source
-- transaction one of whose legs the fact's latest build rewrote, so the legs checked are those of every source
-- transaction such a leg carries or carried before (each of its change events in raw names one; a leg's
-- source_tx_id is its latest event's), plus the rewritten legs without one; each is matched against all legs.
{%- set facts = ref('fact_transactions') %}
{%- set marks = bankflow_test_marks(facts) %}
with legs as (
    select *
    from {{ facts }} as leg
    where leg.txn_type in ('TRANSFER_IN', 'TRANSFER_OUT')
      and not leg.is_deleted
    {%- if marks %}
      and (
          leg.source_tx_id in (
              select e._tx_id
              from {{ source('raw', 'transactions') }} as e
              where e.id in (select id from {{ bankflow_latest_rows(facts, marks) }} as w)
          )
          or (leg.source_tx_id is null and leg.id in (select id from {{ bankflow_latest_rows(facts, marks) }} as w))
      )
    {%- endif %}
)

select leg.id, leg.txn_type, leg.account_id, leg.related_account_id, leg.amount, leg.source_tx_id
from legs as leg
where not exists (
      select 1
      from {{ facts }} as other
      where other.source_tx_id = leg.source_tx_id
        and other.txn_type = case when leg.txn_type = 'TRANSFER_IN' then 'TRANSFER_OUT' else 'TRANSFER_IN' end
        and other.account_id = leg.related_account_id
        and other.related_account_id = leg.account_id
        and other.amount = leg.amount
        and not other.is_deleted
  )
