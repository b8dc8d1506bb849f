-- Every live transaction leg books on an existing, non-deleted account (and a transfer's counterpart exists).
select f.id, f.account_id, f.related_account_id
from {{ ref('fact_transactions') }} as f
left join {{ ref('stg_accounts') }} as a
    on a.id = f.account_id and not a.is_deleted
left join {{ ref('stg_accounts') }} as r
    on r.id = f.related_account_id and not r.is_deleted
where not f.is_deleted
  and (
      a.id is null
      or (f.txn_type in ('TRANSFER_IN', 'TRANSFER_OUT') and r.id is null)
  )
