"""`AEPPlatform`: the platform interface against a real Adobe Experience Platform sandbox.

The resource holds the configuration and assembles, once per process, the service objects that do the
work (`AEPServices`): `Sandbox` (aepp clients, tenant, waits), `Catalog` (datasets, schemas, batches),
`QueryService` and `QueryWrites` (SQL), `DatasetExport` (dataflows to S3) and `Segmentation`
(audiences). Each Platform method is one of their methods, or a short composition of them.
Setup, permissions, clean-up and what was (not) run live: `docs/aep_mode.md`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
from pydantic import Field, PrivateAttr

from aep_assets.lib import guardrails, names, sql
from aep_assets.lib.datasets import DatasetSpec
from aep_assets.resources.aep.catalog import Catalog
from aep_assets.resources.aep.export import DatasetExport
from aep_assets.resources.aep.http import Redactor, log
from aep_assets.resources.aep.query_service import QueryService, QueryWrites
from aep_assets.resources.aep.sandbox import AEPClients, AEPConfigError, Sandbox
from aep_assets.resources.aep.segmentation import Segmentation
from aep_assets.resources.platform import Audience, Batch, Dataset, Platform
from aep_assets.resources.storage import Manifest, Storage

ENV_REQUIRED = (("org_id", "AEP_ORG_ID"), ("client_id", "AEP_CLIENT_ID"), ("client_secret", "AEP_CLIENT_SECRET"),
                ("scopes", "AEP_SCOPES"), ("sandbox", "AEP_SANDBOX_NAME"))
ENV_OPTIONAL = (("tenant_id", "AEP_TENANT_ID"), ("environment", "AEP_ENVIRONMENT"),
                ("name_prefix", "AEP_NAME_PREFIX"),
                ("export_s3_access_key_id", "AEP_EXPORT_S3_ACCESS_KEY_ID"),
                ("export_s3_secret_access_key", "AEP_EXPORT_S3_SECRET_ACCESS_KEY"))


@dataclass(frozen=True)
class AEPServices:
    """The service objects of one sandbox, as one process uses them."""

    sandbox: Sandbox
    query: QueryService
    catalog: Catalog
    writes: QueryWrites
    export: DatasetExport
    segmentation: Segmentation

    @classmethod
    def connect(cls, config: AEPPlatform) -> AEPServices:
        """The services for this configuration, each wired to the ones it uses."""
        sandbox = Sandbox(config)
        query = QueryService(sandbox)
        catalog = Catalog(sandbox, query)
        return cls(sandbox, query, catalog, QueryWrites(query, catalog), DatasetExport(sandbox), Segmentation(sandbox))


class AEPPlatform(Platform):
    """A real Experience Platform sandbox (OAuth server-to-server credentials)."""

    org_id: str = Field(description="IMS organization id (…@AdobeOrg). Env AEP_ORG_ID.")
    client_id: str = Field(description="OAuth server-to-server client id (API key). Env AEP_CLIENT_ID.")
    client_secret: str = Field(description="OAuth client secret, only as dg.EnvVar('AEP_CLIENT_SECRET').",
                               repr=False)
    scopes: str = Field(description="Comma-separated OAuth scopes of the credential. Env AEP_SCOPES.")
    sandbox: str = Field(description="Sandbox name. Env AEP_SANDBOX_NAME.")
    tenant_id: str = Field(default="", description="Tenant id without '_'; empty: looked up in the Schema Registry.")
    environment: str = Field(default="prod", description="'prod' (platform.adobe.io) or an Adobe stage name.")
    name_prefix: str = Field(default="aep_assets", description="Prefix of schema, field group and flow titles.")
    export_s3_access_key_id: str = Field(default="", description="S3 key AEP writes dataset exports with (EnvVar).")
    export_s3_secret_access_key: str = Field(default="", description="Its secret (EnvVar).", repr=False)
    query_sslmode: str = Field(default="require", description="libpq sslmode for Query Service.")
    http_attempts: int = Field(default=5, description="Tries per HTTP call on 429/5xx/connection errors.")
    http_backoff_seconds: float = Field(default=1.0, description="First retry backoff ceiling (doubles, jittered).")
    poll_seconds: float = Field(default=5.0, description="First wait when polling batches, queries, jobs, runs.")
    poll_max_seconds: float = Field(default=60.0, description="Longest wait between two polls.")
    wait_timeout_seconds: float = Field(default=6 * 3600.0, description="Give up waiting after this long.")
    export_not_ready_attempts: int = Field(default=15, description="Ad-hoc export tries while AEP says 'not ready'.")
    export_not_ready_wait_seconds: float = Field(default=60.0, description="Wait between those tries.")
    large_file_bytes: int = Field(default=guardrails.SMALL_FILE_BYTES,
                                  description="Files above this use the large-file API.")
    chunk_bytes: int = Field(default=guardrails.CHUNK_BYTES, description="Chunk size of large-file uploads.")
    interactive_rows: int = Field(default=guardrails.INTERACTIVE_ROWS, description=(
        "Results up to this many rows come over the Query Service wire (its interactive limit); larger "
        "ones are exported to cloud storage through a scratch dataset and read back from there."))

    _services: AEPServices | None = PrivateAttr(default=None)
    _services_pid: int = PrivateAttr(default=0)

    @classmethod
    def from_env(cls) -> AEPPlatform:
        """The resource wired to environment variables (as dg.EnvVar); fails naming every missing one."""
        missing = [var for _, var in ENV_REQUIRED if not os.environ.get(var)]
        if missing:
            raise AEPConfigError(
                f"AEP mode (AEP_ASSETS_ENV=aep) needs these environment variables: {', '.join(missing)}. "
                "See docs/aep_mode.md.")
        config = {field: dg.EnvVar(var) for field, var in ENV_REQUIRED}
        config.update({field: dg.EnvVar(var) for field, var in ENV_OPTIONAL if os.environ.get(var)})
        return cls(**config)

    @property
    def dialect(self) -> sql.Dialect:
        return "spark"

    # --- the service objects ------------------------------------------------------------------
    def services(self) -> AEPServices:
        """The service objects for this resource (one set per process, built on first use)."""
        if self._services is None or self._services_pid != os.getpid():
            self._services = AEPServices.connect(self)
            self._services_pid = os.getpid()
        return self._services

    def api(self) -> AEPClients:
        """aepp service objects for this resource, our session in each."""
        return self.services().sandbox.api

    @property
    def redact(self) -> Redactor:
        """Replaces every secret this resource knows (client secret, tokens, S3 key) in a text."""
        return self.api().redact

    def tenant(self) -> str:
        """The tenant id (without '_') that namespaces the project's XDM fields."""
        return self.services().sandbox.tenant()

    def teardown_after_execution(self, context) -> None:
        """Dagster hook: close the Query Service connection when the run (or step) ends."""
        if self._services is not None:
            self._services.query.close()

    # --- catalog and ingestion ----------------------------------------------------------------
    def ensure_dataset(self, spec: DatasetSpec) -> Dataset:
        return self.services().catalog.ensure_dataset(spec)

    def find_dataset(self, name: str) -> Dataset | None:
        return self.services().catalog.find_dataset(name)

    def ingest_batch(self, dataset: Dataset, spec: DatasetSpec, files: Sequence[Path], *,
                     idempotency_key: str, refresh_statistics: bool = True) -> Batch:
        """Every file is checked (one at a time) before the first call, then reshaped into XDM and uploaded
        one at a time: memory stays at one file, whatever the batch holds. Query Service keeps its own
        statistics: `refresh_statistics` has nothing to ask for."""
        return self.services().catalog.ingest_batch(dataset, spec, files, idempotency_key=idempotency_key)

    def completed_batches(self, dataset: Dataset, *, completed_after_ms: int = 0, limit: int | None = None
                          ) -> list[Batch]:
        return self.services().catalog.completed_batches(dataset, completed_after_ms=completed_after_ms, limit=limit)

    # --- Query Service ------------------------------------------------------------------------
    def query(self, text: str) -> pa.Table:
        return self.services().query.query(text)

    def execute(self, text: str) -> None:
        """A short idempotent statement (DDL) over the interactive connection."""
        self.services().query.execute(text)

    def stream(self, select: str, storage: Storage, name: str) -> Iterator[pa.RecordBatch]:
        """Up to `interactive_rows` rows over the Query Service wire; more through the platform's own bulk
        path: a CTAS into the scratch dataset `cmle_bulk_{name}`, exported to cloud storage by the
        dataset-export dataflow, read back file by file (the export folder is removed afterwards)."""
        rows = int(self.query(f"SELECT COUNT(*) AS n FROM ({select}) AS counted")["n"][0].as_py())
        if rows <= self.interactive_rows:
            yield from self.query(select).to_batches()
            return
        log.info("%s: %d rows, more than the %d read interactively: reading them through a dataset export",
                 name, rows, self.interactive_rows)
        columns = ", ".join(names.quoted(c, "column") for c in self.services().query.columns(select))
        scratch = self.create_table_as(names.identifier(f"cmle_bulk_{name}"[:63], "dataset name"),
                                       f"SELECT {columns} FROM ({select}) AS bulk")
        manifest = self.export_dataset(scratch, storage, datetime.now(timezone.utc))
        try:
            yield from storage.stream_batches(manifest)
        finally:
            storage.delete_prefix(manifest.prefix)

    def create_table_as(self, name: str, select: str) -> Dataset:
        return self.services().writes.create_table_as(name, select)

    def replace_slices(self, dataset: Dataset, key_column: str, keys: Sequence[str], select: str) -> dict[str, int]:
        """One INSERT (one batch) per key, so that each key's rows can later be reverted on their own."""
        return self.services().writes.replace_slices(dataset, key_column, keys, select)

    # --- dataset export -----------------------------------------------------------------------
    def export_dataset(self, dataset: Dataset, storage: Storage, export_time: datetime,
                       order_by: str | None = None) -> Manifest:
        """Ad-hoc run of a Flow Service dataset-export dataflow to the S3 storage, then our manifest.

        AEP names the folder itself (`exportTime=YYYYMMDDHHMM`); `export_time` is not used for it, and
        the export has no row order (`order_by` is not applied).
        """
        return self.services().export.export_dataset(dataset, storage)

    # --- segmentation -------------------------------------------------------------------------
    def upsert_audience(self, name: str, description: str, lower: float, upper: float,
                        scores: Dataset) -> Audience:
        """A batch segment definition (PQL on `_{tenant}.propensity`), updated in place by name, then an
        evaluation job (its count is `audience_size`)."""
        return self.services().segmentation.upsert_audience(name, description, lower, upper)

    def audiences(self) -> list[Audience]:
        return self.services().segmentation.audiences()

    def delete_audience(self, audience: Audience) -> None:
        self.services().segmentation.delete_audience(audience)

    def audience_size(self, audience: Audience, scores: Dataset) -> int:
        """Profiles the segment evaluation job counted for this audience."""
        return self.services().segmentation.audience_size(audience)

    def activate_audience(self, audience: Audience, scores: Dataset, storage: Storage,
                          export_time: datetime) -> Manifest:
        """Members (from Query Service, same interval as the segment; a large audience through a dataset
        export, see `stream`) written to cmle/activation/...

        Limitation: this is not an AEP destination activation (no destination dataflow, merge policy or
        consent evaluation); see docs/aep_mode.md.
        """
        log.warning("audience %r: members exported through Query Service by aep_assets, not through an AEP "
                    "destination dataflow (documented limitation)", audience.name)
        members = self.stream(self.audience_members_sql(audience, scores), storage,
                              f"members_{names.slug(audience.name).replace('-', '_').replace('.', '_')}")
        return self.write_activation(storage, audience, members, export_time)
