"""Per profile batch: current features, champion scores in cloud storage, scores ingested back."""

import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from aep_assets.defs.partitions import profile_batches
from aep_assets.lib import features, guardrails, plots, scoring
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROPENSITY_SCORES, SCORING_DATASET
from aep_assets.lib.drift import population_stability_index
from aep_assets.lib.source_files import file_digest
from aep_assets.lib.sql import Identifier
from aep_assets.metadata import OWNERS, image, row_count, table
from aep_assets.resources.platform import Platform
from aep_assets.resources.storage import Manifest, Storage, StorageError
from aep_assets.resources.tracking import MlflowTracking

# A full rescore is one run over every batch, one statement for all of them. backfill_policy is a Dagster
# beta parameter: chosen knowingly, so its warning is not repeated at every import (UI, daemon, each run).
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")
SINGLE_RUN = dg.BackfillPolicy.single_run()
PSI_WARNING = 0.2


def scores_parent(scores_dataset_id: str, profile_batch: str) -> str:
    return f"cmle/ingress/{scores_dataset_id}/profileBatch={profile_batch}"


@dg.asset(deps=["aep_profiles", "aep_experience_events"], partitions_def=profile_batches,
          backfill_policy=SINGLE_RUN, group_name="scoring", owners=OWNERS, kinds={"postgres", "sql"},
          check_specs=[dg.AssetCheckSpec("scoring_features_row_count", asset="scoring_features", blocking=True,
                                         description="One feature row per profile of the batch.")],
          description="Current features of the profiles of one profile batch (the batch that last touched "
                      "each profile), as of the newest event in the platform, with the same SQL definitions as "
                      "training; stored in the platform dataset cmle_scoring_features, replaced per batch.")
def scoring_features(context: dg.AssetExecutionContext, platform: Platform):
    events = platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name)
    as_of = features.scoring_as_of(platform.latest_event_time(events))
    keys = context.partition_keys
    current_profiles = platform.current_profiles()
    text = features.scoring_sql(platform.dialect, events.table, current_profiles, as_of, keys)
    dataset = platform.ensure_table(SCORING_DATASET, text)
    started = time.monotonic()
    rows = platform.replace_slices(dataset, "profile_batch", keys, text)
    context.log.info(f"{sum(rows.values())} feature rows for {len(keys)} batch(es) "
                     f"in {time.monotonic() - started:.2f} s")
    expected = platform.profiles_per_batch(current_profiles, keys)
    counts = {key: {"feature_rows": rows[key], "profiles": expected[key]} for key in keys}
    mismatched = [k for k, c in counts.items() if c["feature_rows"] != c["profiles"] or c["profiles"] == 0]
    yield dg.MaterializeResult(metadata={"dataset": SCORING_DATASET, "as_of": as_of.isoformat(),
                                         **row_count(sum(c["feature_rows"] for c in counts.values())),
                                         "profile_batches": dg.MetadataValue.json(keys)})
    yield dg.AssetCheckResult(check_name="scoring_features_row_count", passed=not mismatched,
                              description=f"batches with a mismatch: {mismatched}" if mismatched else
                              f"{len(keys)} batch(es), one feature row per profile",
                              metadata={"per_batch": dg.MetadataValue.json(counts)})


@dg.asset(deps=["scoring_features", "propensity_model"], partitions_def=profile_batches,
          backfill_policy=SINGLE_RUN, group_name="scoring", owners=OWNERS, kinds={"sklearn", "parquet", "s3"},
          check_specs=[
              dg.AssetCheckSpec("propensity_scores_valid", asset="propensity_scores", blocking=True,
                                description="Every score in [0, 1], no nulls, exactly one per profile of the batch."),
              dg.AssetCheckSpec("propensity_scores_drift", asset="propensity_scores",
                                description="Population stability index against the previous scoring of the "
                                            "same batch (warning above 0.2)."),
          ],
          description="Propensity of every profile of the batch from the champion model "
                      "(models:/cmle_propensity_model@champion), as parquet under "
                      "cmle/ingress/{scores_dataset_id}/profileBatch={batch}/exportTime={ts}/ with userid, "
                      "propensity, decile, model name and version, and the features' point in time (as_of); "
                      "re-scoring the same features with the same model adds no file.")
def propensity_scores(context: dg.AssetExecutionContext, platform: Platform, storage: Storage,
                      mlflow_tracking: MlflowTracking):
    champion = mlflow_tracking.load_champion()
    if champion is None:
        raise RuntimeError(f"no '{mlflow_tracking.champion_uri()}' in the registry: materialize propensity_model "
                           "and let it pass the gate first")
    scores_dataset = platform.ensure_dataset(PROPENSITY_SCORES)
    feature_table = Identifier(platform.find_dataset_or_fail(SCORING_DATASET).table)
    profiles_in_batch = platform.profiles_per_batch(platform.current_profiles(), context.partition_keys)
    summaries, all_scores, checked, invalid, drift = [], [], [], {}, {}
    for key in context.partition_keys:
        started = time.monotonic()
        rows = platform.stream(platform.render("scoring_features_of_batch", table=feature_table, profile_batch=key),
                               storage, f"scoring_features_{key}")
        with tempfile.TemporaryDirectory(prefix="aep-scores-") as tmp:
            scored = scoring.score_chunks(rows, champion.predict, (champion.name, champion.version), key, Path(tmp))
            checked.append(scored.propensity)
            problems = scoring.problems(scored, profiles_in_batch[key])
            if problems:  # never written, so the ingestion downstream cannot pick them up
                invalid[key] = problems
                continue
            previous, manifest = _write_scores(storage, scores_parent(scores_dataset.id, key), scored)
        psi = population_stability_index(previous, scored.propensity) if previous is not None else None
        if psi is not None:
            drift[key] = round(psi, 5)
        summaries.append(scoring.summary(key, scored, psi, storage.uri(manifest.prefix), time.monotonic() - started))
        all_scores.append(scored.propensity)
        context.log.info(f"batch {key}: scored {scored.rows} profiles → {storage.uri(manifest.prefix)}")
    values = np.concatenate(all_scores) if all_scores else np.empty(0)
    yield dg.MaterializeResult(metadata=_scores_metadata(champion, values, summaries))
    yield from _score_checks(values, np.concatenate(checked) if checked else np.empty(0), invalid, drift)


def _write_scores(storage: Storage, parent: str, scored: scoring.ScoredBatch) -> tuple[np.ndarray | None, Manifest]:
    """The batch's previous scores (for drift), and the new scores file: the same features and model give the
    same bytes, so the storage keeps the earlier folder and nothing lands again."""
    previous = _previous_scores(storage, parent)
    manifest = storage.write_parquet_parts(
        f"{parent}/exportTime={datetime.now(timezone.utc):%Y%m%d%H%M%S}", scoring.with_deciles(scored),
        schema=scoring.SCORES_SCHEMA, rows_per_file=guardrails.SCORES_ROWS_PER_FILE, compression="zstd",
        suffix=".parquet")
    return previous, manifest


def _score_checks(values: np.ndarray, checked: np.ndarray, invalid: dict[str, list[str]], drift: dict[str, float]):
    yield dg.AssetCheckResult(
        check_name="propensity_scores_valid", passed=not invalid,
        description="; ".join(f"batch {k}: {', '.join(v)}" for k, v in invalid.items()) or
        f"{values.size} scores in [0, 1], one per profile, no nulls",
        metadata=_range_of(checked))
    drifted = {k: v for k, v in drift.items() if v > PSI_WARNING}
    yield dg.AssetCheckResult(
        check_name="propensity_scores_drift", passed=not drifted, severity=dg.AssetCheckSeverity.WARN,
        description=(f"PSI above {PSI_WARNING} for {drifted}" if drifted else
                     f"PSI vs the previous scoring: {drift}" if drift else "first scoring of these batches"),
        metadata={"psi": dg.MetadataValue.json(drift)})


def _scores_metadata(champion, values: np.ndarray, summaries: list[dict]) -> dict:
    metadata = {
        "model": f"{champion.name} v{champion.version}",
        **row_count(int(values.size)), "batches": table(pl.DataFrame(summaries)),
        "histogram_plot": image(plots.histogram(values, "Propensity of the scored profiles", "propensity"), "scores"),
    }
    if len(summaries) == 1:
        metadata["path"] = dg.MetadataValue.path(summaries[0]["path"])
    return metadata


def _range_of(values: np.ndarray) -> dict[str, float]:
    """Min and max of every score checked, the invalid ones included (where a failure shows)."""
    finite = values[~np.isnan(values)]
    return {"min": float(finite.min()) if finite.size else 0.0, "max": float(finite.max()) if finite.size else 0.0}


def _previous_scores(storage: Storage, parent: str) -> np.ndarray | None:
    try:
        manifest = storage.latest_complete(parent)
    except StorageError:
        return None
    return storage.read_table(manifest, columns=["propensity"])["propensity"].to_numpy()


@dg.asset(deps=["propensity_scores"], partitions_def=profile_batches, backfill_policy=SINGLE_RUN,
          group_name="scoring", owners=OWNERS, kinds={"postgres", "aep"},
          description="The batch's scores file ingested as one batch into the profile-enabled dataset "
                      "cmle_propensity_scores (the reference's _{tenant}.propensity); the latest score per "
                      "profile wins, as profile merge does. Re-ingesting the same file adds nothing.")
def aep_propensity_scores(context: dg.AssetExecutionContext, platform: Platform, storage: Storage):
    dataset = platform.ensure_dataset(PROPENSITY_SCORES)

    def land(key: str) -> dict:
        manifest = storage.latest_complete(scores_parent(dataset.id, key))
        with storage.downloaded(manifest) as paths:
            digest = "-".join(file_digest(p) for p in paths)
            started = time.monotonic()
            batch = platform.ingest_batch(dataset, PROPENSITY_SCORES, paths, idempotency_key=digest)
        context.log.info(f"batch {key}: scores batch {batch.id} with {batch.record_count} records")
        return {"profile_batch": key, "batch_id": batch.id, "records": batch.record_count,
                "seconds": round(time.monotonic() - started, 3), "source": storage.uri(manifest.prefix)}

    with ThreadPoolExecutor(platform.concurrent_ingestions) as pool:  # each batch atomic on its own
        landed = list(pool.map(land, context.partition_keys))
    return dg.MaterializeResult(metadata={
        "dataset_id": dataset.id, **row_count(sum(b["records"] or 0 for b in landed)),
        "batches": table(pl.DataFrame(landed))})
