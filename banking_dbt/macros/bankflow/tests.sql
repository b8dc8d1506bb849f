{#-
  Generic tests over bankflow's incremental models, and the helpers that narrow a test to what a cycle changed.
  (Shipped with bankflow: `bankflow init` copies this folder into a project's macros/bankflow/.)

  On a cycle that read only what changed (var `bankflow_tests` = 'changed', which bankflow's Transformer sets on
  cycles narrowed to the raw tables that got rows), a test on a model that keeps bankflow's bookkeeping column
  (`mark`, default `_bankflow_load_seq`; a list for a model with one per parent, e.g. account_balances) checks
  only what the model's latest build can have changed:
  - the rows that build wrote are the rows whose mark is the model's max(mark): a build stamps every row it writes
    with the parent position read at its start, which no earlier build's exceeds (with several marks: all of
    them at their max). A build that wrote nothing leaves an older build's rows there: checked again, harmless;
  - rows a build did not write are as the previous cycle's tests saw them, so a row-level check (not null,
    accepted values) reads those rows only, and a per-key check (unique) compares the keys those rows carry
    with every row of the model, old ones included;
  - a relationship can also break on the parent's side: a child row the latest build did not write is checked
    again when the parent key it names was rewritten by the parent's latest build and is now gone or no longer
    meets the parent's condition (deleted, say). This holds
    for parents whose builds replace rows and never remove one (bankflow's `latest_version` staging flags a
    delete, it keeps the row); a parent without the mark column means every child row is checked.
  Every other run (apply, a full cycle, a run's first one and the one after a failure) checks every row, and so
  does a test on a source, seed or snapshot (no mark column), and one given `mark: none`. On a model of 10M rows
  that is a scan of the mark column and a semi-join on a few keys instead of a hash aggregation of all of them.

  Tests: `bankflow_unique`, `bankflow_not_null`, `bankflow_accepted_values`, `bankflow_relationships` (dbt's
  `unique`, `not_null`, `accepted_values`, `relationships`, each with `mark`; `bankflow_unique` also takes
  `columns` for a composite key, `bankflow_relationships` a `to_condition` on the parent's rows and `to_mark`).
  dbt's own tests are left as they are (a project's not_null on a source or a snapshot keeps reading all rows):
  the narrowing is asked for by name, not slipped under every test of a project.

  Helpers, for a project's own generic and singular tests: `bankflow_test_marks(relation, mark)` (the marks to
  narrow on, or none), `bankflow_test_rows(relation, marks)` (a subquery: the rows to check) and
  `bankflow_latest_rows(relation, marks)` (a subquery: the rows the latest build wrote),
  `bankflow_written_row` / `bankflow_unwritten_row(alias, relation, marks)` and
  `bankflow_written_keys(alias, keys, relation, marks)` (conditions: a row that build wrote, or not; a row whose
  key it wrote), `bankflow_lost_keys(to, field, to_marks, to_condition)` (keys a parent's latest build lost).
-#}

{#- True on a cycle narrowed to what changed (var bankflow_tests = 'changed'). -#}
{% macro bankflow_tests_changed() -%}
    {{ return(var('bankflow_tests', 'all') == 'changed') }}
{%- endmacro %}


{#- The node being run (inside a generic test, its `model` argument hides this name). -#}
{% macro bankflow_current_node() -%}
    {{ return(model) }}
{%- endmacro %}


{#-
  The mark columns to narrow a test on (a list), or none to check every row: none unless this is a narrowed
  cycle, `mark` is set, and the relation is a model. `relation` none: the model a generic test is attached to;
  otherwise a ref() the test reads (found among the test's dependencies).
-#}
{% macro bankflow_test_marks(relation=none, mark='_bankflow_load_seq') -%}
    {%- if not (execute and mark and bankflow_tests_changed()) -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set node = bankflow_current_node() -%}
    {%- set found = namespace(node=none) -%}
    {%- if relation is none -%}
        {%- set found.node = graph.nodes.get(node.attached_node or '') -%}
    {%- else -%}
        {%- for unique_id in node.depends_on.nodes -%}
            {%- set candidate = graph.nodes.get(unique_id) -%}
            {%- if candidate and candidate.relation_name == (relation | string) -%}
                {%- set found.node = candidate -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if found.node is none or found.node.resource_type != 'model' -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return([mark] if mark is string else mark) }}
{%- endmacro %}


{#- The rows of `relation` (a relation or dbt's `where` subquery) its model's latest build wrote, parenthesised. -#}
{% macro bankflow_latest_rows(relation, marks) -%}
(select * from {{ relation }} where {% for m in marks -%}
    {{ m }} = (select max({{ m }}) from {{ relation }}){{ " and " if not loop.last }}
{%- endfor %})
{%- endmacro %}


{#- A condition: `alias`'s row is one the latest build of `relation` wrote (`marks` as bankflow_test_marks gives). -#}
{% macro bankflow_written_row(alias, relation, marks) -%}
({% for m in marks %}{{ alias }}.{{ m }} = (select max({{ m }}) from {{ relation }}){{ " and " if not loop.last }}{% endfor %})
{%- endmacro %}


{#- The opposite condition: `alias`'s row is not one the latest build of `relation` wrote. -#}
{% macro bankflow_unwritten_row(alias, relation, marks) -%}
(not {{ bankflow_written_row(alias, relation, marks) }}{% for m in marks %} or {{ alias }}.{{ m }} is null{% endfor %})
{%- endmacro %}


{#-
  The keys of `to`'s rows its latest build wrote that are no longer among its rows (with `to_condition`: no
  longer among those that meet it), as a query: a child row its own build did not write can only have broken
  on one of these (a key rewritten and still there still has its children). Usually none.
-#}
{% macro bankflow_lost_keys(to, field, to_marks, to_condition=none) -%}
select {{ field }} from {{ bankflow_latest_rows(to, to_marks) }} as w
except
select {{ field }} from {{ to }} as p{% if to_condition %} where {{ to_condition }}{% endif %}
{%- endmacro %}


{#- The rows a test checks, parenthesised: those the latest build wrote when `marks`, else all of them. -#}
{% macro bankflow_test_rows(relation, marks) -%}
{%- if marks -%}
{{ bankflow_latest_rows(relation, marks) }}
{%- else -%}
(select * from {{ relation }})
{%- endif -%}
{%- endmacro %}


{#-
  A condition on `alias`'s rows of `relation`: its `keys` are among the keys the latest build wrote, or one of
  them is null (rows with a null key are few, and grouped as a full check groups them). The first key's IN lets
  the scan skip what cannot match; the EXISTS matches the whole key.
-#}
{% macro bankflow_written_keys(alias, keys, relation, marks) -%}
(
    ({{ alias }}.{{ keys[0] }} in (select {{ keys[0] }} from {{ bankflow_latest_rows(relation, marks) }} as w)
    {%- if keys | length > 1 %}
     and exists (
        select 1
        from {{ bankflow_latest_rows(relation, marks) }} as w
        where {% for k in keys %}w.{{ k }} = {{ alias }}.{{ k }}{{ " and " if not loop.last }}{% endfor %}
    )
    {%- endif %})
    {%- for k in keys %}
    or {{ alias }}.{{ k }} is null
    {%- endfor %}
)
{%- endmacro %}


{#-
  `bankflow_unique`: no two rows share the values of `columns` (one column name or a list; on a column: that
  column; null keys are grouped like any value). Narrowed: the keys the latest build wrote, against all of the
  model's rows (a key that build did not write cannot have gained a duplicate in it).
-#}
{% test bankflow_unique(model, column_name=none, columns=none, mark='_bankflow_load_seq') %}
{%- set keys = ([columns] if columns is string else columns) if columns else [column_name] -%}
{%- set marks = bankflow_test_marks(none, mark) %}
select {% for k in keys %}m.{{ k }}, {% endfor %}count(*) as n_rows
from (select * from {{ model }}) as m
{%- if marks %}
where {{ bankflow_written_keys('m', keys, model, marks) }}
{%- endif %}
group by {% for k in keys %}m.{{ k }}{{ ", " if not loop.last }}{% endfor %}
having count(*) > 1
{% endtest %}


{#- `bankflow_not_null`: dbt's not_null; narrowed, the rows the latest build wrote. -#}
{% test bankflow_not_null(model, column_name, mark='_bankflow_load_seq') %}
select {{ column_name }}
from {{ bankflow_test_rows(model, bankflow_test_marks(none, mark)) }} as m
where {{ column_name }} is null
{% endtest %}


{#- `bankflow_accepted_values`: dbt's accepted_values (null passes); narrowed, the rows the latest build wrote. -#}
{% test bankflow_accepted_values(model, column_name, values, quote=true, mark='_bankflow_load_seq') %}
select {{ column_name }} as value_field, count(*) as n_records
from {{ bankflow_test_rows(model, bankflow_test_marks(none, mark)) }} as m
where {{ column_name }} not in (
    {%- for v in values -%}
    {{ bankflow_string(v | string) if quote else v }}{{ ", " if not loop.last }}
    {%- endfor -%}
)
group by {{ column_name }}
{% endtest %}


{#-
  `bankflow_relationships`: dbt's relationships (every non-null value of the column is a `field` of `to`), the
  parent's rows limited by `to_condition` when given (e.g. 'not is_deleted': the parent must be a live row; the
  child's by the test's `where` config). Narrowed, when both sides keep their marks: the child rows the child's
  latest build wrote, and the child rows naming a parent key the parent's latest build rewrote and that is
  gone (or no longer meets `to_condition`), each looked up among all of the parent's rows (union all: the
  second part is usually empty, and then costs nothing).
-#}
{% test bankflow_relationships(model, column_name, to, field, to_condition=none, mark='_bankflow_load_seq',
                               to_mark='_bankflow_load_seq') %}
{%- set marks = bankflow_test_marks(none, mark) -%}
{%- set to_marks = bankflow_test_marks(to, to_mark) if marks else none %}
with child as (
    select c.{{ column_name }} as child_value
    from (select * from {{ model }}) as c
    where c.{{ column_name }} is not null
    {%- if marks and to_marks %}
      and {{ bankflow_written_row('c', model, marks) }}
    union all
    select c.{{ column_name }} as child_value
    from (select * from {{ model }}) as c
    where c.{{ column_name }} in ({{ bankflow_lost_keys(to, field, to_marks, to_condition) }})
      and {{ bankflow_unwritten_row('c', model, marks) }}
    {%- endif %}
),

parent as (
    select {{ field }} as parent_value
    from {{ to }}
    {%- if to_condition %}
    where {{ to_condition }}
    {%- endif %}
)

select child.child_value as orphan_value
from child
left join parent
    on parent.parent_value = child.child_value
where parent.parent_value is null
{% endtest %}
