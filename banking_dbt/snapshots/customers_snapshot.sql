{#-
  SCD2 of customers as seen at each `dbt snapshot` run.
  - strategy check on the source columns, updated_at = _source_ts: a version starts at the COMMIT time of the change
    that produced it (not at the snapshot run), and a re-snapshot read with unchanged columns is not a new version;
  - only non-deleted rows are fed in, so a deleted customer disappears from the source query and
    hard_deletes='new_record' closes its last version and adds a version flagged dbt_is_deleted = 'True'
    (valid from the snapshot run that noticed the delete; the exact delete time is in customer_history).
-#}
{% snapshot customers_snapshot %}
{{ config(
    unique_key='id',
    strategy='check',
    check_cols=['first_name', 'last_name', 'email', 'created_at', 'updated_at'],
    updated_at='_source_ts',
    hard_deletes='new_record'
) }}
select id, first_name, last_name, email, created_at, updated_at, _lsn, _source_ts
from {{ ref('stg_customers') }}
where not is_deleted
{% endsnapshot %}
