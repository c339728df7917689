"""A loadable copy of each registered model version beside a local (sqlite) MLflow store.

A fresh run process that scores a batch would otherwise import MLflow, build its SQL store and import
skops to load the champion: about 3 s before the first score (docs/performance.md). The copy is the
estimator pickled when the version is registered, its SHA-256 registered with the version as a tag.

The registry stays the authority. At every load the champion alias, its version and that version's
tags are read from the store in one query (the alias may move between runs: a run scores with the
version that carries it when its scoring step starts), and a copy whose bytes do not have the
registered digest is never unpickled. Whenever something is missing (no copy, another MLflow schema,
a remote tracking server) the caller loads through the MLflow client instead.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

DIGEST_TAG = "loadable_copy_sha256"

# MLflow's own tables (mlflow.store.model_registry.dbmodels); without workspaces everything is in 'default'.
ALIAS_AND_TAGS = """
SELECT a.version, t.key, t.value
FROM registered_model_aliases AS a
LEFT JOIN model_version_tags AS t ON t.workspace = a.workspace AND t.name = a.name AND t.version = a.version
WHERE a.workspace = 'default' AND a.name = ? AND a.alias = ?
"""


@dataclass(frozen=True)
class AliasedVersion:
    """The version an alias points to, with its tags, as the store holds them now."""

    version: str
    tags: dict[str, str]


def sqlite_file(store_uri: str) -> Path | None:
    """The database file of a local sqlite store, None for any other store."""
    return Path(store_uri.removeprefix("sqlite:///")) if store_uri.startswith("sqlite:///") else None


def copies_folder(store: Path) -> Path:
    return store.parent / "loadable_models"


def write(store: Path, estimator: object) -> str:
    """Pickle `estimator` beside the store, named by its digest (written once, atomically); the digest."""
    data = pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(data).hexdigest()
    target = copies_folder(store) / f"{digest}.pkl"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        staging.write_bytes(data)
        os.replace(staging, target)
    return digest


def aliased_version(store: Path, model_name: str, alias: str) -> AliasedVersion | None:
    """What `alias` of `model_name` points to, read-only in one query; None when the store, the alias
    or MLflow's tables as this module knows them are not there."""
    if not store.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            rows = conn.execute(ALIAS_AND_TAGS, (model_name, alias)).fetchall()
    except sqlite3.Error:
        return None
    if not rows:
        return None
    return AliasedVersion(str(rows[0][0]), {key: value for _, key, value in rows if key is not None})


def load(store: Path, digest: str) -> object | None:
    """The estimator whose copy has exactly the registered digest, None when there is no such copy."""
    try:
        data = (copies_folder(store) / f"{digest}.pkl").read_bytes()
    except FileNotFoundError:
        return None
    if hashlib.sha256(data).hexdigest() != digest:
        return None
    return pickle.loads(data)  # the bytes the registry vouches for
