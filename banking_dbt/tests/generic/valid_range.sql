{#- SCD2 ranges: valid_to is null (current) or not before valid_from; only the current row is open. -#}
{% test valid_range(model, column_name, valid_to='valid_to', current_flag='is_current') %}
select *
from {{ model }}
where {{ column_name }} is null
   or ({{ valid_to }} is not null and {{ valid_to }} < {{ column_name }})
   or ({{ valid_to }} is null and not {{ current_flag }})
   or ({{ valid_to }} is not null and {{ current_flag }})
{% endtest %}
