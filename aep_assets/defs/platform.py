"""The synthetic batches landed in the platform's profile and experience event datasets."""

import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import polars as pl

from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, DatasetSpec
from aep_assets.lib.source_files import file_digest, source_folder
from aep_assets.lib.sql import Identifier
from aep_assets.metadata import OWNERS, preview, row_count, table
from aep_assets.resources.platform import Platform


def land_files(context: dg.AssetExecutionContext, platform: Platform, spec: DatasetSpec, kind: str
               ) -> dg.MaterializeResult:
    """Each source file becomes one platform batch; a file already landed (same content) is skipped.
    Batches are independent (each atomic on its own), so the platform may take several at once."""
    dataset = platform.ensure_dataset(spec)
    files = source_folder().files(kind)
    started = time.monotonic()

    def land(path):
        before = time.monotonic()
        batch = platform.ingest_batch(dataset, spec, [path], idempotency_key=file_digest(path),
                                      refresh_statistics=False)
        context.log.info(f"{spec.name}: {path.name} -> batch {batch.id}: {batch.record_count} records in "
                         f"{time.monotonic() - before:.1f} s")
        return {"file": path.name, "batch_id": batch.id, "records": batch.record_count}

    with ThreadPoolExecutor(platform.concurrent_ingestions) as pool:
        batches = list(pool.map(land, files))
    # once for the whole load, not after each batch: each ANALYZE samples the whole table again
    platform.refresh_statistics(dataset)
    seconds = time.monotonic() - started
    landed_rows = sum(b["records"] or 0 for b in batches)
    sample = platform.query(platform.render("dataset_preview", table=Identifier(dataset.table)))
    return dg.MaterializeResult(metadata={
        "dataset_id": dataset.id,
        "table": dataset.table,
        **row_count(landed_rows),
        "batches": table(pl.DataFrame(batches)),
        "ingest_seconds": round(seconds, 2),
        "rows_per_second": round(landed_rows / max(seconds, 1e-9)),
        "preview": preview(pl.from_arrow(sample)),
    })


@dg.asset(deps=["synthetic_profiles"], group_name="platform", owners=OWNERS, kinds={"postgres", "aep"},
          description="The profile dataset (profile-enabled, identity userid in namespace ECID): one platform "
                      "batch per synthetic profile batch. Its batch ids are the scoring partitions.")
def aep_profiles(context: dg.AssetExecutionContext, platform: Platform) -> dg.MaterializeResult:
    return land_files(context, platform, PROFILES, "profiles")


@dg.asset(deps=["synthetic_experience_events"], group_name="platform", owners=OWNERS, kinds={"postgres", "aep"},
          description="The experience event dataset: every synthetic event, one platform batch per profile batch.")
def aep_experience_events(context: dg.AssetExecutionContext, platform: Platform) -> dg.MaterializeResult:
    return land_files(context, platform, EXPERIENCE_EVENTS, "events")
