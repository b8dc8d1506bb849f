{#-
  Every key has exactly one current row (SCD2 tables: history models and dimensions). On a cycle narrowed to what
  changed (macros/bankflow/tests.sql), only the keys the model's latest build wrote, each with all of its rows: a
  key that build did not write has the rows the previous cycle's tests saw.
-#}
{% test exactly_one_current(model, column_name, current_flag='is_current', mark='_bankflow_load_seq') %}
{%- set marks = bankflow_test_marks(none, mark) %}
select
    m.{{ column_name }} as key_value,
    sum(case when m.{{ current_flag }} then 1 else 0 end) as current_rows
from (select * from {{ model }}) as m
{%- if marks %}
where {{ bankflow_written_keys('m', [column_name], model, marks) }}
{%- endif %}
group by m.{{ column_name }}
having sum(case when m.{{ current_flag }} then 1 else 0 end) <> 1
{% endtest %}
