-- For every account: source balance = opening balance + deposits + transfers in - withdrawals - transfers out,
-- exactly, to the scale of the source (DECIMAL arithmetic, no tolerance).
select account_id, opening_balance, transactions_total, computed_balance, source_balance, difference
from {{ ref('account_balances') }}
where difference <> 0
   or difference is null
