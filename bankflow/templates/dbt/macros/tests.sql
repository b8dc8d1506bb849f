{#-
  Generic tests over bankflow's incremental models.

  `bankflow_unique`: no two rows share the values of `columns` (one column name or a list; on a column: that
  column). Where the model keeps
  bankflow's bookkeeping column (`mark`, default `_bankflow_load_seq`) and the cycle read only what changed
  (var `bankflow_tests` = 'changed', which bankflow's Transformer sets on cycles narrowed to the raw tables that
  got rows), only the keys the model's latest build wrote are checked, against all of the model's rows: a key
  that build did not write cannot have gained a duplicate in it, and a key it wrote is compared with every row
  the model has, old ones included. Every other run (apply, a full cycle, a run's first one and the one after a
  failure) checks every row. On a table of 10M rows that is a semi-join on a few keys instead of a hash
  aggregation of all of them.
-#}
{% test bankflow_unique(model, column_name=none, columns=none, mark='_bankflow_load_seq') %}
{%- set keys = ([columns] if columns is string else columns) if columns else [column_name] -%}
{%- if var('bankflow_tests', 'all') == 'changed' %}
with touched as (
    select distinct {{ keys | join(', ') }}
    from {{ model }}
    where {{ mark }} = (select max({{ mark }}) from {{ model }})
)
select {% for k in keys %}m.{{ k }}, {% endfor %}count(*) as n_rows
from {{ model }} as m
inner join touched as t
    on {% for k in keys %}m.{{ k }} = t.{{ k }}{{ " and " if not loop.last }}{% endfor %}
group by {% for k in keys %}m.{{ k }}{{ ", " if not loop.last }}{% endfor %}
having count(*) > 1
{%- else %}
select {{ keys | join(', ') }}, count(*) as n_rows
from {{ model }}
group by {{ keys | join(', ') }}
having count(*) > 1
{%- endif %}
{% endtest %}
