"""Cloud storage between the platform and the ML environment: a local folder or S3.

Layout as in the CMLE reference: `cmle/egress/{dataset_id}/exportTime={YYYYMMDDHHMMSS}/part-NNNNN.gz.parquet`
for platform exports, `cmle/ingress/...` for scores going back in, `cmle/activation/...` for
audience members. A multi-file write is complete only once its `_manifest.json` exists; it is
written last and readers take only folders that have one, so nobody sees half an export. A write
records its writer first (`_writing.json`), so that the folder of a writer killed mid-write is
recognised as abandoned and removed by the next write beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, PrivateAttr

from aep_assets.lib.processes import alive
from aep_assets.settings import assets_home

MANIFEST = "_manifest.json"
WRITING = "_writing.json"  # who is writing a folder, removed once its manifest exists
ABANDONED_AFTER = timedelta(hours=1)  # a writer on another host is presumed gone after this long


@dataclass(frozen=True)
class Manifest:
    """What a complete multi-file write holds."""

    prefix: str
    files: list[str]
    rows: int
    bytes: int
    columns: list[str]
    created: str
    digest: str = ""  # SHA-256 of the parts' bytes, in order ("" where the writer did not record it)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        return cls(**json.loads(raw))


class StorageError(RuntimeError):
    """A storage object is missing or incomplete."""


class Storage(dg.ConfigurableResource, ABC):
    """Files by key (`a/b/c.parquet`); subclasses supply the five primitive operations."""

    keep_complete_writes: int = Field(default=3, ge=1, description=(
        "Complete exports or scores folders kept per parent folder, the newest first, for audit "
        "($AEP_ASSETS_KEEP_WRITES); older ones are removed after each new write."))

    @abstractmethod
    def put_file(self, key: str, local_path: Path) -> None:
        """Upload a local file to `key`, replacing it."""

    @abstractmethod
    def get_file(self, key: str, local_path: Path) -> None:
        """Download `key` to a local file."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """All keys under `prefix/`, sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix/`; return how many."""

    @abstractmethod
    def delete_key(self, key: str) -> None:
        """Delete one key (nothing if it does not exist)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where a person finds `key` (a path or an s3:// URI)."""

    # --- shared behaviour ---------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write small content (manifests) through a temporary local file."""
        with tempfile.TemporaryDirectory(prefix="aep-put-") as tmp:
            path = Path(tmp) / "object"
            path.write_bytes(data)
            self.put_file(key, path)

    def get_bytes(self, key: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="aep-get-") as tmp:
            path = Path(tmp) / "object"
            self.get_file(key, path)
            return path.read_bytes()

    def write_parquet_parts(
        self,
        prefix: str,
        batches: Iterable[pa.RecordBatch],
        *,
        schema: pa.Schema,
        rows_per_file: int = 1_000_000,
        compression: str = "gzip",
        suffix: str = ".gz.parquet",
        keep: int | None = None,
    ) -> Manifest:
        """Stream record batches into `part-NNNNN{suffix}` files under `prefix`, then the manifest.

        If the newest complete write beside it (same parent folder) holds the same bytes, the new parts
        are removed and that write is returned instead: a re-run adds no copy. Then the complete writes
        beside it beyond the newest `keep` (default: this storage's `keep_complete_writes`) are removed.
        """
        keep = self.keep_complete_writes if keep is None else keep
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the write just made), got {keep}")
        prefix = prefix.rstrip("/")
        parent = prefix.rsplit("/", 1)[0]
        self.delete_prefix(prefix)  # leftovers of a crashed attempt at the same prefix
        writer = {"host": socket.gethostname(), "pid": os.getpid(), "started": datetime.now(timezone.utc).isoformat()}
        self.put_bytes(f"{prefix}/{WRITING}", json.dumps(writer).encode())
        files, rows, size, digest = self._upload_parts(prefix, batches, schema, rows_per_file, compression, suffix)
        folders = self._folders(parent)  # one listing serves the dedupe and the clean-up
        complete = self._complete(parent, folders)
        if complete and complete[-1].digest == digest:
            self.delete_prefix(prefix)
            manifest = complete[-1]
        else:
            manifest = Manifest(prefix, files, rows, size, schema.names,
                                datetime.now(timezone.utc).isoformat(timespec="seconds"), digest)
            self.put_bytes(f"{prefix}/{MANIFEST}", manifest.to_json())
            self.delete_key(f"{prefix}/{WRITING}")
            complete = sorted([*complete, manifest], key=_manifest_key)
        abandoned = self._abandoned(parent, {f: names for f, names in folders.items() if f"{parent}/{f}" != prefix})
        for old in [m.prefix for m in complete[:-keep]] + abandoned:
            self.delete_prefix(old)
        return manifest

    def _upload_parts(self, prefix: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows_per_file: int,
                      compression: str, suffix: str) -> tuple[list[str], int, int, str]:
        """The parts, uploaded one by one (memory stays at one record batch), each of `rows_per_file` rows
        but the last: keys, rows, bytes and the SHA-256 of their bytes in order. An empty input still gives
        one readable file with the schema."""
        files: list[str] = []
        total_rows = total_bytes = 0
        digest = hashlib.sha256()
        level = 1 if compression == "gzip" else None  # pyarrow's default gzip level 9 is 20x slower for ~4% size
        with tempfile.TemporaryDirectory(prefix="aep-parts-") as tmp:
            part_path = Path(tmp) / "part"

            def upload() -> None:
                nonlocal total_bytes
                key = f"{prefix}/part-{len(files):05d}{suffix}"
                total_bytes += part_path.stat().st_size
                with open(part_path, "rb") as part:
                    for block in iter(lambda: part.read(1 << 20), b""):
                        digest.update(block)
                self.put_file(key, part_path)
                files.append(key)

            writer: pq.ParquetWriter | None = None
            part_rows = 0
            for piece in _pieces(batches, rows_per_file):
                if writer is None:
                    writer = pq.ParquetWriter(part_path, schema, compression=compression, compression_level=level)
                writer.write_batch(piece)
                part_rows += piece.num_rows
                total_rows += piece.num_rows
                if part_rows == rows_per_file:
                    writer.close()
                    upload()
                    writer, part_rows = None, 0
            if writer is not None:
                writer.close()
                upload()
            if not files:
                pq.write_table(schema.empty_table(), part_path, compression=compression, compression_level=level)
                upload()
        return files, total_rows, total_bytes, digest.hexdigest()

    def _folders(self, parent: str) -> dict[str, set[str]]:
        """The file names directly inside each folder under `parent`."""
        folders: dict[str, set[str]] = {}
        for key in self.list_keys(parent):
            folder, _, name = key[len(parent) + 1:].partition("/")
            if name and "/" not in name:
                folders.setdefault(folder, set()).add(name)
        return folders

    def _complete(self, parent: str, folders: dict[str, set[str]]) -> list[Manifest]:
        """The manifests of the complete writes among `folders`, oldest first."""
        return sorted((Manifest.from_json(self.get_bytes(f"{parent}/{folder}/{MANIFEST}"))
                       for folder, names in folders.items() if MANIFEST in names), key=_manifest_key)

    def _abandoned(self, parent: str, folders: dict[str, set[str]]) -> list[str]:
        """Folders without a manifest whose writer is gone: its process no longer runs on this host, or it
        started over ABANDONED_AFTER ago (another host), or it left no writer record. Never complete, so
        never read: removed beside the next write."""
        return [f"{parent}/{folder}" for folder, names in sorted(folders.items()) if MANIFEST not in names and (
            WRITING not in names or _writer_gone(json.loads(self.get_bytes(f"{parent}/{folder}/{WRITING}"))))]

    def write_table(self, prefix: str, table: pa.Table, **options) -> Manifest:
        """A whole in-memory table as a complete multi-file write."""
        return self.write_parquet_parts(prefix, table.to_batches(max_chunksize=500_000), schema=table.schema,
                                        **options)

    def complete_writes(self, parent: str) -> list[Manifest]:
        """Manifests of the complete writes directly under `parent` (e.g. exportTime=... folders), oldest first."""
        parent = parent.rstrip("/")
        return self._complete(parent, self._folders(parent))

    def latest_complete(self, parent: str) -> Manifest:
        """The newest complete write under `parent`; folders without a manifest are ignored."""
        complete = self.complete_writes(parent)
        if not complete:
            raise StorageError(f"no complete export under {self.uri(parent)} (no folder with {MANIFEST})")
        return complete[-1]

    @contextmanager
    def downloaded(self, manifest: Manifest) -> Iterator[list[Path]]:
        """The files of a complete write as local paths, removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="aep-read-") as tmp:
            paths = [Path(tmp) / f"{index:05d}.parquet" for index in range(len(manifest.files))]
            for key, path in zip(manifest.files, paths, strict=True):
                self.get_file(key, path)
            yield paths

    def stream_batches(self, manifest: Manifest, batch_rows: int = 250_000) -> Iterator[pa.RecordBatch]:
        """The rows of a complete write in record batches, one file downloaded at a time (memory stays
        at one batch, local disk at one file)."""
        for key in manifest.files:
            with tempfile.TemporaryDirectory(prefix="aep-stream-") as tmp:
                path = Path(tmp) / "part.parquet"
                self.get_file(key, path)
                yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)

    def read_frame(self, manifest: Manifest, columns: list[str] | None = None) -> pl.DataFrame:
        """Every file of a complete write as one polars frame (polars' own reader: a third less peak
        memory than through an Arrow table, docs/performance.md)."""
        with self.downloaded(manifest) as paths:
            return pl.read_parquet(paths, columns=columns)

    def read_table(self, manifest: Manifest, columns: list[str] | None = None) -> pa.Table:
        """Every file of a complete write as one Arrow table."""
        with self.downloaded(manifest) as paths:
            return pa.concat_tables([pq.read_table(path, columns=columns) for path in paths])


def _pieces(batches: Iterable[pa.RecordBatch], rows_per_file: int) -> Iterator[pa.RecordBatch]:
    """The non-empty batches, cut where a part of `rows_per_file` rows ends (zero-copy slices)."""
    room = rows_per_file
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            piece = batch.slice(start, room)
            yield piece
            start += piece.num_rows
            room = room - piece.num_rows or rows_per_file


def _manifest_key(manifest: Manifest) -> str:
    """Where a manifest sorts among its siblings: by folder name (exportTime=...), oldest first."""
    return f"{manifest.prefix}/{MANIFEST}"


def _writer_gone(writer: dict) -> bool:
    if writer["host"] == socket.gethostname():
        return not alive(writer["pid"])
    return datetime.now(timezone.utc) - datetime.fromisoformat(writer["started"]) > ABANDONED_AFTER


class LocalStorage(Storage):
    """A folder standing in for cloud storage (default `$AEP_ASSETS_HOME/storage`)."""

    root: str = Field(default="", description="Folder that plays the bucket; empty means $AEP_ASSETS_HOME/storage.")

    @property
    def root_path(self) -> Path:
        return Path(self.root) if self.root else assets_home() / "storage"

    def _path(self, key: str) -> Path:
        path = (self.root_path / key).resolve()
        if not path.is_relative_to(self.root_path.resolve()):
            raise StorageError(f"key {key!r} leaves the storage root")
        return path

    def put_file(self, key: str, local_path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(local_path, staging)
        os.replace(staging, target)  # readers see the old file or the whole new one

    def get_file(self, key: str, local_path: Path) -> None:
        source = self._path(key)
        if not source.exists():
            raise StorageError(f"no file {source}")
        shutil.copyfile(source, local_path)

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        root = self.root_path.resolve()
        return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix)
        if not base.exists():
            return 0
        count = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        return count

    def delete_key(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return str(self._path(key))


class S3Storage(Storage):
    """An S3 bucket (or an S3-compatible store through `endpoint_url`), via dagster-aws's S3Resource."""

    bucket: str = Field(description="Bucket name (AWS naming rules).")
    prefix: str = Field(default="", description="Key prefix inside the bucket, e.g. 'aep-assets'.")
    region_name: str | None = Field(default=None, description="AWS region.")
    endpoint_url: str | None = Field(default=None, description="For S3-compatible stores and tests (moto).")
    aws_access_key_id: str | None = Field(default=None, description="From the environment (dg.EnvVar).")
    aws_secret_access_key: str | None = Field(default=None, description="From the environment (dg.EnvVar).")

    _cached_client: object = PrivateAttr(default=None)

    def _client(self):
        """One boto3 client per resource instance: building one is slow."""
        if self._cached_client is None:
            from dagster_aws.s3 import S3Resource  # with boto3, 0.65 s to import: only where storage is S3

            self._cached_client = S3Resource(
                region_name=self.region_name,
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.aws_access_key_id,
                aws_secret_access_key=self.aws_secret_access_key,
            ).get_client()
        return self._cached_client

    def _key(self, key: str) -> str:
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def put_file(self, key: str, local_path: Path) -> None:
        self._client().upload_file(str(local_path), self.bucket, self._key(key))

    def get_file(self, key: str, local_path: Path) -> None:
        client = self._client()
        try:
            client.download_file(self.bucket, self._key(key), str(local_path))
        except client.exceptions.ClientError as error:
            raise StorageError(f"cannot read {self.uri(key)}: {error}") from error

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        paginator = self._client().get_paginator("list_objects_v2")
        full = self._key(prefix.rstrip("/") + "/")
        strip = len(self._key(""))
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(self._iter_keys(prefix))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        client = self._client()
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            client.delete_objects(Bucket=self.bucket,
                                  Delete={"Objects": [{"Key": self._key(k)} for k in chunk], "Quiet": True})
        return len(keys)

    def delete_key(self, key: str) -> None:
        self._client().delete_object(Bucket=self.bucket, Key=self._key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"
