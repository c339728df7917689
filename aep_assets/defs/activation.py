"""Audiences by propensity interval, created in the platform from code, and their activation."""

from datetime import datetime, timezone

import dagster as dg
import polars as pl
from pydantic import Field

from aep_assets.lib import audiences, plots
from aep_assets.lib.datasets import PROPENSITY_SCORES
from aep_assets.lib.names import slug
from aep_assets.metadata import OWNERS, image, row_count, table
from aep_assets.resources.platform import Platform
from aep_assets.resources.storage import Storage


class IntervalConfig(dg.Config):
    name: str
    lower: float
    upper: float
    description: str = ""


class AudiencesConfig(dg.Config):
    """Named propensity intervals; each becomes one audience (matched by name, updated in place)."""

    intervals: list[IntervalConfig] = Field(default=[
        {"name": i.name, "lower": i.lower, "upper": i.upper, "description": i.description}
        for i in audiences.DEFAULT_INTERVALS])

    def parsed(self) -> list[audiences.Interval]:
        # Dagster hands over the default list as plain dicts and configured values as IntervalConfig.
        items = [IntervalConfig(**i) if isinstance(i, dict) else i for i in self.intervals]
        return [audiences.Interval(i.name, i.lower, i.upper, i.description) for i in items]


@dg.asset(deps=["aep_propensity_scores"], group_name="activation", owners=OWNERS,
          kinds={"postgres", "aep"}, pool="audiences",
          check_specs=[dg.AssetCheckSpec("propensity_audiences_sizes", asset="propensity_audiences",
                                         description="Each audience's platform size equals the number of "
                                                     "latest scores inside its interval.")],
          description="One audience per configured propensity interval (PQL on the scores dataset's propensity), "
                      "created or updated in the platform by name; with the reach table and the score histogram "
                      "that replace the reference's pick-by-eye chart.")
def propensity_audiences(context: dg.AssetExecutionContext, config: AudiencesConfig, platform: Platform):
    intervals = config.parsed()
    scores = platform.find_dataset_or_fail(PROPENSITY_SCORES.name)
    configured = {i.name for i in intervals}
    for stale in [a for a in platform.audiences() if a.name not in configured]:
        platform.delete_audience(stale)
        context.log.info(f"deleted audience {stale.name!r}: no longer configured")
    created = [platform.upsert_audience(i.name, i.description, i.lower, i.upper, scores) for i in intervals]
    latest = platform.current_records(scores, PROPENSITY_SCORES)
    propensity = platform.query(audiences.latest_propensities_sql(platform.dialect, latest))["propensity"].to_numpy()
    reach = audiences.reach_table(propensity, intervals)
    platform_sizes = platform.audience_sizes(created, scores)
    consistent = all(platform_sizes[row["audience"]] == row["profiles"] for row in reach.iter_rows(named=True))
    yield dg.MaterializeResult(metadata={
        "audiences": table(pl.DataFrame([{"audience": a.name, "id": a.id, "pql": a.expression} for a in created])),
        "reach": table(reach),
        "scored_profiles": len(propensity),
        "histogram_plot": image(plots.histogram(
            propensity, "Latest propensity per profile, with the audience intervals", "propensity",
            intervals=[(i.name, i.lower, i.upper) for i in intervals]), "propensity histogram"),
    })
    yield dg.AssetCheckResult(check_name="propensity_audiences_sizes", passed=consistent,
                              metadata={"platform_sizes": dg.MetadataValue.json(platform_sizes)})


@dg.asset(deps=["propensity_audiences"], group_name="activation", owners=OWNERS,
          kinds={"parquet", "s3"}, pool="audiences",
          description="Each audience's members exported to the file-based destination in cloud storage under "
                      "cmle/activation/{audience}/exportTime={ts}/ with a manifest; older exports of the same "
                      "audience are removed once the new one is complete, so re-runs replace, never duplicate.")
def audience_activations(context: dg.AssetExecutionContext, platform: Platform, storage: Storage):
    scores = platform.find_dataset_or_fail(PROPENSITY_SCORES.name)
    export_time = datetime.now(timezone.utc)
    rows = []
    configured = platform.audiences()
    current = {slug(a.name) for a in configured}
    for name, manifest in platform.activate_audiences(configured, scores, storage, export_time).items():
        rows.append({"audience": name, "members": manifest.rows, "path": storage.uri(manifest.prefix)})
        context.log.info(f"activated {name!r}: {manifest.rows} members → {storage.uri(manifest.prefix)}")
    for deleted in {key.split("/")[2] for key in storage.list_keys("cmle/activation")} - current:
        storage.delete_prefix(f"cmle/activation/{deleted}")  # the exports of audiences no longer configured
    return dg.MaterializeResult(metadata={
        "activations": table(pl.DataFrame(rows)), **row_count(sum(r["members"] for r in rows)),
        "destination": dg.MetadataValue.path(storage.uri("cmle/activation"))})
