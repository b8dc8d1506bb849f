-- For every account: source balance = opening balance + deposits + transfers in - withdrawals - transfers out,
-- exactly, to the scale of the source (DECIMAL arithmetic, no tolerance).
-- A check of each row on its own: account_balances computes a row from ALL of the account's legs, so on a cycle
-- narrowed to what changed (macros/bankflow/tests.sql) the rows its latest build wrote (the accounts it touched,
-- with their complete sums) are the ones that can have changed; rows with both marks at their max.
{%- set balances = ref('account_balances') %}
{%- set marks = bankflow_test_marks(balances, ['_bankflow_accounts_seq', '_bankflow_fact_seq']) %}
select account_id, opening_balance, transactions_total, computed_balance, source_balance, difference
from {{ bankflow_test_rows(balances, marks) }} as b
where difference <> 0
   or difference is null
