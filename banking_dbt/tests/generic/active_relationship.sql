{#-
  Like `relationships`, but the parent must be a live row (default: not deleted). Filter the child side with the
  test's `where` config (e.g. only non-deleted children). bankflow's `bankflow_relationships` with a condition
  on the parent: on a cycle narrowed to what changed, the child rows the child's latest build wrote and those
  naming a parent the parent's latest build rewrote (macros/bankflow/tests.sql).
-#}
{% test active_relationship(model, column_name, to, field, parent_condition='not is_deleted') %}
{{ test_bankflow_relationships(model, column_name, to, field, to_condition=parent_condition) }}
{% endtest %}
