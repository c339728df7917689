"""The project's SQL: one statement per file in `sql/`, written once, rendered for each platform.

Files are PostgreSQL-flavoured SELECTs with `$name` placeholders. Rendering substitutes validated
identifiers and literals, parses the text with sqlglot and writes it out for the target:
`postgres` for the embedded platform, `spark` for AEP Query Service (Spark SQL functions over the
PostgreSQL wire protocol). Time differences do not transpile, so they are written with one macro,
`MINUTES_BETWEEN(earlier, later)`, expanded here per dialect.
"""

from __future__ import annotations

import string
from datetime import datetime, timezone
from functools import cache
from typing import Literal as TypingLiteral

import sqlglot
from sqlglot import exp

from aep_assets.lib import names
from aep_assets.settings import SQL_DIR

Dialect = TypingLiteral["postgres", "spark"]

_MINUTES_BETWEEN = {
    "postgres": ("CAST(EXTRACT(EPOCH FROM (later_ - earlier_)) / 60.0 AS DOUBLE PRECISION)", "postgres"),
    "spark": ("CAST((UNIX_TIMESTAMP(later_) - UNIX_TIMESTAMP(earlier_)) / 60.0 AS DOUBLE)", "spark"),
}


class Identifier(str):
    """A table or column name to be validated and quoted when substituted."""


class SqlTemplateError(ValueError):
    """A SQL file is missing, or a placeholder has no value or an unsupported type."""


@cache
def load(name: str) -> str:
    """The text of `sql/{name}.sql`."""
    path = SQL_DIR / f"{names.identifier(name, 'SQL file name')}.sql"
    if not path.exists():
        raise SqlTemplateError(f"no SQL file {path}")
    return path.read_text()


def literal(value: object) -> str:
    """A value as a SQL literal that both dialects read the same way."""
    if isinstance(value, Identifier):
        return names.quoted(str(value), "SQL identifier")
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise SqlTemplateError(f"timestamp {value!r} must be timezone-aware")
        utc = value.astimezone(timezone.utc)
        return f"CAST('{utc:%Y-%m-%d %H:%M:%S.%f}' AS TIMESTAMP)"
    if isinstance(value, str):
        if "'" in value or "\\" in value:
            raise SqlTemplateError(f"string literal {value!r} contains a quote or backslash")
        return f"'{value}'"
    if isinstance(value, (list, tuple)):
        if not value:
            raise SqlTemplateError("an IN list needs at least one value")
        return "(" + ", ".join(literal(item) for item in value) + ")"
    raise SqlTemplateError(f"unsupported SQL parameter type {type(value).__name__}")


def substitute(text: str, **params: object) -> str:
    """Fill `$name` placeholders; values that are SQL fragments must be passed as `Fragment`."""
    rendered = {key: value if isinstance(value, Fragment) else literal(value) for key, value in params.items()}
    try:
        return string.Template(text).substitute(rendered)
    except KeyError as missing:
        raise SqlTemplateError(f"SQL placeholder ${missing.args[0]} has no value") from None


class Fragment(str):
    """Already rendered SQL (e.g. another file's SELECT used as a subquery)."""


def _expand_macros(tree: exp.Expression, dialect: Dialect) -> exp.Expression:
    template_text, read = _MINUTES_BETWEEN[dialect]
    template = sqlglot.parse_one(template_text, read=read)

    def expand(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.upper() == "MINUTES_BETWEEN":
            earlier, later = node.expressions
            body = template.copy()
            for column in list(body.find_all(exp.Column)):
                if column.name == "earlier_":
                    column.replace(earlier.copy())
                elif column.name == "later_":
                    column.replace(later.copy())
            return exp.Paren(this=body)
        return node

    return tree.transform(expand)


def render(name: str, dialect: Dialect = "postgres", **params: object) -> str:
    """`sql/{name}.sql` with its placeholders filled, as text for `dialect`."""
    return transpile(substitute(load(name), **params), dialect)


def transpile(text: str, dialect: Dialect) -> str:
    """PostgreSQL-flavoured text (macros allowed) as text for `dialect`."""
    tree = sqlglot.parse_one(text, read="postgres")
    return _expand_macros(tree, dialect).sql(dialect=dialect, pretty=True)
