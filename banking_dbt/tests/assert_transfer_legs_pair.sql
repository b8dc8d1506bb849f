-- A transfer is two legs in ONE source transaction: OUT on the sender, IN on the receiver, same amount.
select leg.id, leg.txn_type, leg.account_id, leg.related_account_id, leg.amount, leg.source_tx_id
from {{ ref('fact_transactions') }} as leg
where leg.txn_type in ('TRANSFER_IN', 'TRANSFER_OUT')
  and not leg.is_deleted
  and not exists (
      select 1
      from {{ ref('fact_transactions') }} as other
      where other.source_tx_id = leg.source_tx_id
        and other.txn_type = case when leg.txn_type = 'TRANSFER_IN' then 'TRANSFER_OUT' else 'TRANSFER_IN' end
        and other.account_id = leg.related_account_id
        and other.related_account_id = leg.account_id
        and other.amount = leg.amount
        and not other.is_deleted
  )
