{#-
  One row per transaction leg. Incremental: only change events past the high-water mark (_lsn) of this table are
  read; the merge / delete+insert on `id` makes a re-read (var fact_lsn_lookback) idempotent, so no duplicates.
  The pre-hook widens the kept amount columns when raw's amount was widened (numeric(18,2) -> (20,4)), so the new
  rows keep their scale instead of being rounded to the table's old one.
-#}
{{ config(
    materialized='incremental',
    unique_key='id',
    on_schema_change='append_new_columns',
    pre_hook="{{ widen_money_columns(this, source('raw', 'transactions'),
                                     {'amount': 'amount', 'signed_amount': 'amount'}) }}"
) }}

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
    _source_ts
from {{ ref('stg_transactions') }}
{% if is_incremental() %}
where _lsn > (
    select coalesce(max(_lsn), -1) - {{ var('fact_lsn_lookback', 0) | int }}
    from {{ this }}
)
{% endif %}
