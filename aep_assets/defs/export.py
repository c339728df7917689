"""The training table exported to cloud storage, as AEP's dataset export writes it: the ML side reads only this."""

import time
from datetime import datetime, timezone

import dagster as dg

from aep_assets.lib import features
from aep_assets.lib.datasets import TRAINING_DATASET
from aep_assets.metadata import OWNERS, row_count
from aep_assets.resources.platform import Platform
from aep_assets.resources.storage import Storage


@dg.asset(deps=["training_features"], group_name="export", owners=OWNERS, kinds={"parquet", "s3"},
          description="The training table exported to cloud storage as gzip parquet under "
                      "cmle/egress/{dataset_id}/exportTime={YYYYMMDDHHMMSS}/, as AEP's dataset export "
                      "writes it; complete only once its manifest exists. The ML side reads only this.")
def training_export(context: dg.AssetExecutionContext, platform: Platform, storage: Storage) -> dg.MaterializeResult:
    dataset = platform.find_dataset_or_fail(TRAINING_DATASET)
    started = time.monotonic()
    # In profile order where the platform can: the training step then reads it without sorting a copy.
    manifest = platform.export_dataset(dataset, storage, datetime.now(timezone.utc), order_by=features.ID_COLUMN)
    seconds = time.monotonic() - started
    context.log.info(f"exported {manifest.rows} rows in {len(manifest.files)} files to "
                     f"{storage.uri(manifest.prefix)} ({seconds:.1f} s)")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(storage.uri(manifest.prefix)), "dataset_id": dataset.id,
        **row_count(manifest.rows), "bytes": manifest.bytes, "files": len(manifest.files),
        "columns": dg.MetadataValue.json(manifest.columns), "export_seconds": round(seconds, 2)})
