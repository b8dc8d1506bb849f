{#- Every key has exactly one current row (SCD2 tables: history models and dimensions). -#}
{% test exactly_one_current(model, column_name, current_flag='is_current') %}
select
    {{ column_name }} as key_value,
    sum(case when {{ current_flag }} then 1 else 0 end) as current_rows
from {{ model }}
group by {{ column_name }}
having sum(case when {{ current_flag }} then 1 else 0 end) <> 1
{% endtest %}
