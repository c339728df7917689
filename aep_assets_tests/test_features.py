"""The feature SQL on the real embedded PostgreSQL against an independent polars computation."""

from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from aep_assets.lib import eda, features, synthetic
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES
from aep_assets.lib.source_files import write_parquet
from aep_assets.lib.sql import Identifier

END = datetime(2026, 3, 30, tzinfo=timezone.utc)
WINDOW = features.Window.before_end(END)
STEMS = {
    "emails_received": "directMarketing.emailSent", "emails_opened": "directMarketing.emailOpened",
    "emails_clicked": "directMarketing.emailClicked", "product_views": "commerce.productViews",
    "proposition_interacts": "decisioning.propositionInteract",
    "proposition_dismisses": "decisioning.propositionDismiss", "web_link_clicks": "web.webinteraction.linkClicks",
    "ad_impressions": "advertising.impressions", "ad_clicks": "advertising.clicks",
    "page_views": "web.webpagedetails.pageViews", "purchases": "commerce.purchases",
    "proposition_displays": "decisioning.propositionDisplay",
}


@pytest.fixture(scope="module")
def generated():
    return synthetic.generate(synthetic.SyntheticConfig(profiles=1500, batches=1, seed=7, end=END))


def land(platform, tmp_path, data, events=None):
    for spec, frame, name in [(PROFILES, data.profiles.drop("batch"), "p"),
                              (EXPERIENCE_EVENTS, (events if events is not None else data.events).drop("batch"), "e")]:
        dataset = platform.ensure_dataset(spec)
        path = write_parquet(frame, tmp_path / f"{name}.parquet")
        platform.ingest_batch(dataset, spec, [path], idempotency_key=name)


def expected_features(data, window: features.Window) -> pl.DataFrame:
    """The same definitions, written independently over the generated frames."""
    events = data.events
    before = events.filter(pl.col("timestamp") < window.cutoff)
    aggregations = []
    for stem, event_type in STEMS.items():
        is_type = pl.col("event_type") == event_type
        aggregations.append(is_type.sum().cast(pl.Int64).alias(stem))
        last = pl.col("timestamp").filter(is_type).max()
        aggregations.append(((pl.lit(window.cutoff) - last).dt.total_microseconds() / 60e6)
                            .alias(f"minutes_since_{stem}"))
    per_user = before.group_by("userid").agg(aggregations)
    conversions = (events.filter(pl.col("event_type") == synthetic.TARGET_EVENT)
                   .group_by("userid").agg(pl.col("timestamp").min().alias("converted_at")))
    return (data.profiles.select("userid").join(per_user, on="userid", how="left")
            .join(conversions, on="userid", how="left")
            .filter(pl.col("converted_at").is_null() | (pl.col("converted_at") >= window.cutoff))
            .with_columns(((pl.col("converted_at") >= window.cutoff) & (pl.col("converted_at") <= window.horizon_end))
                          .fill_null(False).cast(pl.Int32).alias("label"))
            .with_columns([pl.col(stem).fill_null(0) for stem in STEMS])
            .drop("converted_at").sort("userid"))


def sql_features(platform, window) -> pl.DataFrame:
    profiles = platform.current_records(platform.find_dataset_or_fail(PROFILES.name), PROFILES)
    text = features.training_sql("postgres", EXPERIENCE_EVENTS.name, profiles, window)
    dataset = platform.create_table_as("cmle_training_features", text)
    return pl.from_arrow(platform.query(f'SELECT * FROM "{dataset.table}" ORDER BY userid'))


def test_sql_features_match_an_independent_computation(platform, tmp_path, generated):
    land(platform, tmp_path, generated)
    got = sql_features(platform, WINDOW)
    want = expected_features(generated, WINDOW)
    assert got.height == want.height > 1000
    assert got["userid"].to_list() == want["userid"].to_list()
    assert got["label"].cast(pl.Int32).to_list() == want["label"].to_list()
    for stem in STEMS:
        assert got[stem].cast(pl.Int64).to_list() == want[stem].to_list(), stem
        diff = (got[f"minutes_since_{stem}"] - want[f"minutes_since_{stem}"]).abs().max()
        assert got[f"minutes_since_{stem}"].null_count() == want[f"minutes_since_{stem}"].null_count(), stem
        assert diff is None or diff < 1e-3, stem
    # The reference's dismiss recency was always null; ours is populated where dismissals happened.
    assert got["minutes_since_proposition_dismisses"].null_count() < got.height
    # The oracle's cutoff is the SQL's cutoff: same excluded users.
    excluded = generated.truth.filter(pl.col("converted_before_cutoff"))["userid"]
    assert not set(excluded.to_list()) & set(got["userid"].to_list())
    assert got.height == generated.profiles.height - excluded.len()


def test_events_at_or_after_the_cutoff_never_change_features(platform, tmp_path, generated):
    user = generated.profiles["userid"][0]
    late = pl.DataFrame({
        "event_id": ["late-1", "late-2"], "userid": [user, user],
        "event_type": ["commerce.productViews", "directMarketing.emailSent"],
        "timestamp": [WINDOW.cutoff, WINDOW.cutoff + timedelta(hours=1)],
        "produced_by": ["test", "test"], "page_name": [None, None], "page_url": [None, None],
        "campaign_id": [None, None], "batch": [0, 0],
    }, schema=generated.events.schema)
    land(platform, tmp_path, generated, events=pl.concat([generated.events, late]))
    got = sql_features(platform, WINDOW).filter(pl.col("userid") == user)
    want = expected_features(generated, WINDOW).filter(pl.col("userid") == user)
    if want.height:  # the user may have converted before the cutoff and be excluded either way
        feature_names = [c for c in want.columns if c not in ("userid", "label")]
        assert got.select(feature_names).cast(pl.Float64).rows() == want.select(feature_names).cast(pl.Float64).rows()


def test_scoring_features_use_the_same_definitions(platform, tmp_path, generated):
    land(platform, tmp_path, generated)
    batch = platform.completed_batches(platform.find_dataset(PROFILES.name))[0].id
    profiles = platform.current_records(platform.find_dataset_or_fail(PROFILES.name), PROFILES)
    text = features.scoring_sql("postgres", EXPERIENCE_EVENTS.name, profiles, WINDOW.cutoff, [batch])
    scoring = pl.from_arrow(platform.query(text + " ORDER BY userid")).drop("profile_batch")
    training = sql_features(platform, WINDOW).drop("label")
    joined = training.join(scoring, on="userid", suffix="_scoring")
    assert joined.height == training.height
    for column in features.feature_columns(training.columns):
        a, b = joined[column].cast(pl.Float64), joined[f"{column}_scoring"].cast(pl.Float64)
        assert ((a - b).abs().fill_null(0) < 1e-6).all() and (a.is_null() == b.is_null()).all(), column


def test_eda_funnel_and_cooccurrence_match_the_events(platform, tmp_path, generated):
    land(platform, tmp_path, generated)
    types = sorted(EXPERIENCE_EVENTS.allowed_values["event_type"])
    render = lambda name, **p: platform.query(platform.render(name, events=Identifier(EXPERIENCE_EVENTS.name), **p))  # noqa: E731
    weekly = pl.from_arrow(render("eda_weekly_events"))
    combinations = pl.from_arrow(render("eda_type_combinations", type_bit=eda.type_bit(types)))
    pairs = eda.cooccurrence(combinations, types)
    funnel = eda.funnel(weekly, pairs, types)

    events = generated.events
    want = events.group_by("event_type").agg(pl.len().alias("events"), pl.col("userid").n_unique().alias("users"))
    got = funnel.join(want, on="event_type", suffix="_want")
    assert got.height == want.height == funnel.height
    assert (got["events"] == got["events_want"]).all() and (got["users"] == got["users_want"]).all()
    per_user = events.select("userid", "event_type").unique()
    for a, b in [("directMarketing.emailSent", "directMarketing.emailOpened"),
                 ("web.webpagedetails.pageViews", "commerce.productViews"), (types[0], types[-1])]:
        both = per_user.filter(pl.col("event_type") == a).join(per_user.filter(pl.col("event_type") == b), on="userid")
        assert pairs[types.index(a), types.index(b)] == pairs[types.index(b), types.index(a)] == both.height, (a, b)
