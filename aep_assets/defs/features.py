"""Query Service SQL over the platform datasets: the point-in-time training table and the EDA."""

import time

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from aep_assets.lib import eda, features, plots
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, TRAINING_DATASET
from aep_assets.lib.sql import Identifier
from aep_assets.metadata import OWNERS, image, preview, recorded, row_count, table
from aep_assets.resources.platform import Platform


class TrainingWindowConfig(dg.Config):
    """Point in time of the training table; the generator's oracle uses the same defaults."""

    cutoff: str = Field(default="", description="ISO observation cutoff; empty: end of the event timeline minus "
                                                "cutoff_days_before_end.")
    cutoff_days_before_end: float = Field(default=features.DEFAULT_CUTOFF_DAYS_BEFORE_END)
    horizon_days: float = Field(default=features.DEFAULT_HORIZON_DAYS, description="Label window after the cutoff.")


@dg.asset(deps=["aep_profiles", "aep_experience_events"], group_name="features", owners=OWNERS,
          kinds={"postgres", "sql"},
          check_specs=[
              dg.AssetCheckSpec("training_features_row_count", asset="training_features", blocking=True,
                                description="One row per profile not converted before the cutoff."),
              dg.AssetCheckSpec("training_features_label_rate", asset="training_features", blocking=True,
                                description="Between 0.5% and 50% positives: enough to learn, not a leak."),
          ],
          description="The point-in-time training table (CTAS in Query Service, registered as a dataset): "
                      "per profile, 12 event counts and 12 'minutes since last' recencies as of the "
                      "observation cutoff, two activity windows, and the label: a web.formFilledOut inside "
                      "the horizon after the cutoff. Profiles that converted before the cutoff are excluded.")
def training_features(context: dg.AssetExecutionContext, config: TrainingWindowConfig, platform: Platform):
    events = platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name)
    profiles = platform.find_dataset_or_fail(PROFILES.name)
    window = features.Window.configured(config.cutoff, config.cutoff_days_before_end, config.horizon_days,
                                        lambda: platform.timeline_end(events))
    current_profiles = platform.current_records(profiles, PROFILES)
    text = features.training_sql(platform.dialect, events.table, current_profiles, window)
    inputs = platform.inputs_version(text, [events, profiles])
    started = time.monotonic()
    dataset, last = platform.find_dataset(TRAINING_DATASET), recorded(context)
    if dataset is not None and (last.get("inputs_version"), last.get("dataset_id")) == (inputs, dataset.id):
        context.log.info(f"same SQL and input batches as the last materialization: {dataset.table} kept as it is")
    else:
        dataset = platform.create_table_as(TRAINING_DATASET, text)
    seconds = time.monotonic() - started
    counts = platform.query(platform.render("label_rate", table=Identifier(dataset.table)))
    rows, positives = counts["profiles"][0].as_py(), counts["positives"][0].as_py() or 0
    all_profiles = platform.query(platform.render("profile_count", profiles=current_profiles))["profiles"][0].as_py()
    converted_before = platform.query(platform.render(
        "converted_before", events=Identifier(events.table), cutoff=window.cutoff))["users"][0].as_py()
    label_rate = positives / rows if rows else 0.0
    context.log.info(f"training table {dataset.table}: {rows} rows, label rate {label_rate:.4f}, {seconds:.1f} s")
    sample = pl.from_arrow(platform.query(platform.render("dataset_preview", table=Identifier(dataset.table))))
    yield dg.MaterializeResult(
        metadata={"dataset_id": dataset.id, "table": dataset.table, **row_count(rows),
                  "cutoff": window.cutoff.isoformat(), "horizon_end": window.horizon_end.isoformat(),
                  "label_rate": round(label_rate, 5), "sql_seconds": round(seconds, 2), "inputs_version": inputs,
                  "sql": dg.MetadataValue.md(f"```sql\n{text}\n```"), "preview": preview(sample)},
        data_version=dg.DataVersion(inputs))
    yield dg.AssetCheckResult(
        check_name="training_features_row_count", passed=rows == all_profiles - converted_before,
        metadata={"rows": rows, "profiles": all_profiles, "converted_before_cutoff": converted_before},
        description=f"{rows} rows for {all_profiles} profiles minus {converted_before} converted before the cutoff")
    yield dg.AssetCheckResult(
        check_name="training_features_label_rate", passed=0.005 <= label_rate <= 0.5,
        metadata={"label_rate": label_rate, "positives": positives})


@dg.asset(deps=["training_features"], group_name="features", owners=OWNERS, kinds={"postgres", "sql"},
          description="Exploratory analysis the reference did in notebooks: the funnel per event type "
                      "(events and distinct users), co-occurrence of event types per user, events per week, "
                      "and each feature's correlation with the label.")
def eda_summary(context: dg.AssetExecutionContext, platform: Platform) -> dg.MaterializeResult:
    events = Identifier(platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table)
    known_types = sorted(EXPERIENCE_EVENTS.allowed_values["event_type"])
    weekly = pl.from_arrow(platform.query(platform.render("eda_weekly_events", events=events)))
    combinations = pl.from_arrow(platform.query(platform.render(
        "eda_type_combinations", events=events, type_bit=eda.type_bit(known_types))))
    training = platform.find_dataset_or_fail(TRAINING_DATASET)
    sample = pl.from_arrow(platform.query(platform.render("training_sample", table=Identifier(training.table))))

    all_pairs = eda.cooccurrence(combinations, known_types)
    funnel = eda.funnel(weekly, all_pairs, known_types)
    types = funnel["event_type"].to_list()
    order = [known_types.index(t) for t in types]
    users = all_pairs[np.ix_(order, order)]
    share = users / np.maximum(np.diag(users)[:, None], 1)
    correlations = eda.feature_label_correlations(sample)
    total = weekly.group_by("week").agg(pl.col("events").sum()).sort("week")
    weekly_png = plots.lines({"all events": (np.arange(total.height), total["events"].to_numpy())},
                             "Events per week", "week of the timeline", "events")
    context.log.info(f"EDA over {int(funnel['events'].sum())} events, {sample.height} training rows sampled")
    return dg.MaterializeResult(metadata={
        "funnel": table(funnel),
        "funnel_plot": image(plots.bar_chart(types, funnel["users"].to_list(), "Distinct users per event type",
                                             "users", log=True), "funnel"),
        "cooccurrence_plot": image(plots.heatmap(share, types, "Share of row-type users who also have column-type"),
                                   "co-occurrence"),
        "weekly_plot": image(weekly_png, "events per week"),
        "feature_label_correlation": table(correlations),
        "correlation_plot": image(plots.bar_chart(correlations["feature"].to_list(),
                                                  correlations["correlation"].to_list(),
                                                  "Correlation with the label (training sample)", "Pearson r"),
                                  "correlations"),
        "label_rate_in_sample": round(float(sample["label"].mean() or 0.0), 5),
        "sample_rows": sample.height,
    })
