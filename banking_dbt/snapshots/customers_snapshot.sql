{#-
  SCD2 of customers as seen at each `dbt snapshot` run (bankflow runs it after `run --select staging history`).
  - Source: the current version of every live customer. It is stg_customers (the latest state by _lsn) minus
    snapshot re-reads: customer_history's current row has the same columns as stg_customers (tested by
    assert_history_current_matches_staging) and its _source_ts is the COMMIT time of the change that produced the
    version, whereas a Debezium re-snapshot ('r', same columns) would move stg_customers._source_ts forward.
  - strategy timestamp, updated_at = _source_ts: a new version starts at its commit time, not at the snapshot run.
  - Only live rows are fed in, so a deleted customer disappears from the source query and
    hard_deletes='new_record' closes its last version and adds one flagged dbt_is_deleted = 'True'
    (valid from the snapshot run that noticed it; the exact delete time is in customer_history).
-#}
{% snapshot customers_snapshot %}
{{ config(
    unique_key='id',
    strategy='timestamp',
    updated_at='_source_ts',
    hard_deletes='new_record'
) }}
select id, first_name, last_name, email, created_at, updated_at, _lsn, _source_ts
from {{ ref('customer_history') }}
where is_current
  and not is_deleted
{% endsnapshot %}
