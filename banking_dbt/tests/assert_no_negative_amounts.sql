-- Amounts are strictly positive; the direction lives in txn_type / signed_amount.
select id, txn_type, amount, signed_amount
from {{ ref('fact_transactions') }}
where amount is null
   or amount <= 0
   or signed_amount is null
   or abs(signed_amount) <> amount
   or (txn_type in ('DEPOSIT', 'TRANSFER_IN') and signed_amount < 0)
   or (txn_type in ('WITHDRAWAL', 'TRANSFER_OUT') and signed_amount > 0)
