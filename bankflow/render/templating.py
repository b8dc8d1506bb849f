"""Jinja2 templates as package data: each package's `templates/` folder, found through importlib.resources.

`bankflow/templates/` holds what is shared (the dbt profile); each warehouse keeps its SQL templates in its own
folder (`bankflow/warehouses/<type>/templates/`). A wheel or a non-editable install finds them from any directory.
"""

from __future__ import annotations

from functools import cache

import jinja2


@cache
def environment(package: str = "bankflow") -> jinja2.Environment:
    # SQL and YAML, not HTML: no autoescape; every value reaching SQL is quoted by the dialect that renders it.
    return jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_package_template(package: str, name: str, **context: object) -> str:
    """Render `templates/<name>` of `package` (e.g. `bankflow.warehouses.duckdb`)."""
    return environment(package).get_template(name).render(**context)


def render_template(name: str, **context: object) -> str:
    """Render one of bankflow's shared templates (`bankflow/templates/<name>`)."""
    return render_package_template("bankflow", name, **context)
