"""Validation of every name that reaches SQL or a storage path: datasets, tables, audiences, columns.

Names come from config and from users; they are checked against a strict pattern before any
statement is built, then always double-quoted.
"""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_AUDIENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$")


class InvalidNameError(ValueError):
    """A configured or requested name is not acceptable for SQL or storage."""


def identifier(name: str, what: str = "identifier") -> str:
    """Return `name` if it is a safe lower-case SQL identifier, else raise naming the problem."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise InvalidNameError(
            f"{what} {name!r} is not allowed: use 1-63 characters of a-z, 0-9 and _, starting with a letter or _"
        )
    return name


def quoted(name: str, what: str = "identifier") -> str:
    """The validated identifier, double-quoted for SQL."""
    return f'"{identifier(name, what)}"'


def audience_name(name: str) -> str:
    """Audience names are shown to marketers: letters, digits, space, '.', '_' and '-' only."""
    if not isinstance(name, str) or not _AUDIENCE.match(name):
        raise InvalidNameError(
            f"audience name {name!r} is not allowed: 1-100 characters of letters, digits, space, '.', '_' or '-'"
        )
    return name


def slug(name: str) -> str:
    """A storage-path-safe form of a validated audience name."""
    return re.sub(r"[^a-z0-9_.]+", "-", audience_name(name).lower()).strip("-")
