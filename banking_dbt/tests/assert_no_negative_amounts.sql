-- Amounts are strictly positive; the direction lives in txn_type / signed_amount.
-- A check of each leg on its own: on a cycle narrowed to what changed (macros/bankflow/tests.sql), the legs the
-- fact's latest build wrote.
{%- set facts = ref('fact_transactions') %}
select id, txn_type, amount, signed_amount
from {{ bankflow_test_rows(facts, bankflow_test_marks(facts)) }} as f
where amount is null
   or amount <= 0
   or signed_amount is null
   or abs(signed_amount) <> amount
   or (txn_type in ('DEPOSIT', 'TRANSFER_IN') and signed_amount < 0)
   or (txn_type in ('WITHDRAWAL', 'TRANSFER_OUT') and signed_amount > 0)
