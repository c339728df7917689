"""A new local MLflow store ready in milliseconds: the schema is built once per MLflow version and copied.

MLflow creates a sqlite store by running every one of its schema migrations, which takes seconds, on the
first training of every home (and in every test that starts from an empty home). The migrated empty
database depends only on the installed MLflow version, so it is built once per machine in the user's
cache directory and each new store starts as a copy of it. A store that exists is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aep_assets"


def ensure_sqlite_store(database: Path) -> None:
    """`database` exists as an MLflow store: as it was, or as a copy of the migrated empty one."""
    if database.exists():
        return
    template = cache_dir() / f"mlflow-{version('mlflow')}-empty.db"
    if not template.exists():
        build_template(template)
    database.parent.mkdir(parents=True, exist_ok=True)
    place(template, database)


def build_template(template: Path) -> None:
    """An empty store with MLflow's current schema (tracking and registry share it)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as scratch:
        database = Path(scratch) / "empty.db"
        # the artifact root MLflow gives its Default experiment when it creates a store itself
        store = SqlAlchemyStore(f"sqlite:///{database}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()
        place(database, template)


def place(source: Path, target: Path) -> None:
    """A copy of `source` at `target`, appearing whole; if another process placed one first, that one stays
    (a store in use is never replaced)."""
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as handle:
        partial = Path(handle.name)
    try:
        shutil.copyfile(source, partial)
        with contextlib.suppress(FileExistsError):  # unlike a rename, a link never replaces the target
            os.link(partial, target)
    finally:
        partial.unlink(missing_ok=True)
