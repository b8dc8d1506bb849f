{#-
  Like `relationships`, but the parent must be a live row (default: not deleted). Filter the child side with the
  test's `where` config (e.g. only non-deleted children).
-#}
{% test active_relationship(model, column_name, to, field, parent_condition='not is_deleted') %}
with child as (
    select {{ column_name }} as child_value
    from {{ model }}
    where {{ column_name }} is not null
),

parent as (
    select {{ field }} as parent_value
    from {{ to }}
    where {{ parent_condition }}
)

select child.child_value as orphan_value
from child
left join parent
    on parent.parent_value = child.child_value
where parent.parent_value is null
{% endtest %}
