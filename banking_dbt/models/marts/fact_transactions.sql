{#-
  One row per transaction leg. Incremental on raw's commit position (macros/bankflow/incremental.sql): the legs
  stg_transactions rewrote since this table's mark (its `_bankflow_load_seq`), merged on `id`. Never a mark on
  _lsn: an overlapping transaction can commit a lower LSN after a higher one.
  The pre-hook widens the kept amount columns when raw's amount was widened (numeric(18,2) -> (20,4)), so the new
  rows keep their scale instead of being rounded to the table's old one.
-#}
{{ config(
    unique_key='id',
    pre_hook="{{ widen_money_columns(this, source('raw', 'transactions'),
                                     {'amount': 'amount', 'signed_amount': 'amount'}) }}"
) }}
{%- set parent = ref('stg_transactions') -%}
{%- set mark = bankflow_mark() -%}
{%- set position = bankflow_model_position(parent) %}

select
    id,
    account_id,
    related_account_id,
    txn_type,
    amount,
    {{ money("case when txn_type in ('DEPOSIT', 'TRANSFER_IN') then amount else -amount end") }} as signed_amount,
    status,
    created_at,
    _tx_id as source_tx_id,
    is_deleted,
    _lsn,
    _source_ts,
    {{ bankflow_seq_column(position) }}
from {{ parent }}
where {{ bankflow_changed(mark, position) }}
