{#-
  SCD2 ranges: valid_to is null (current) or not before valid_from; only the current row is open. A check of each
  row on its own: on a cycle narrowed to what changed (macros/bankflow/tests.sql), the rows the model's latest
  build wrote (a history build rewrites the version a new one closes).
-#}
{% test valid_range(model, column_name, valid_to='valid_to', current_flag='is_current', mark='_bankflow_load_seq') %}
select *
from {{ bankflow_test_rows(model, bankflow_test_marks(none, mark)) }} as m
where {{ column_name }} is null
   or ({{ valid_to }} is not null and {{ valid_to }} < {{ column_name }})
   or ({{ valid_to }} is null and not {{ current_flag }})
   or ({{ valid_to }} is not null and {{ current_flag }})
{% endtest %}
