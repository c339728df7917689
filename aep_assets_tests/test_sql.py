"""The SQL files render for both dialects: PostgreSQL runs for real elsewhere; Spark text parses."""

from datetime import datetime, timezone

import pytest
import sqlglot

from aep_assets.lib import audiences, features, merge, sql
from aep_assets.lib.datasets import PROFILES, PROPENSITY_SCORES
from aep_assets.lib.names import InvalidNameError

CUTOFF = datetime(2026, 3, 1, tzinfo=timezone.utc)
WINDOW = features.Window(CUTOFF, datetime(2026, 3, 15, tzinfo=timezone.utc))
PROFILES_VIEW = merge.current_records_sql(PROFILES, "cmle_profiles")  # Query Service's view of the profiles
SCORES_VIEW = merge.current_records_sql(PROPENSITY_SCORES, "scores")


def test_minutes_between_is_expanded_per_dialect():
    postgres = features.training_sql("postgres", "cmle_experience_events", PROFILES_VIEW, WINDOW)
    spark = features.training_sql("spark", "cmle_experience_events", PROFILES_VIEW, WINDOW)
    assert "MINUTES_BETWEEN" not in postgres.upper() and "MINUTES_BETWEEN" not in spark.upper()
    assert "EXTRACT(EPOCH FROM" in postgres
    assert "UNIX_TIMESTAMP(" in spark and "EPOCH" not in spark
    sqlglot.parse_one(spark, read="spark")  # valid Query Service (Spark SQL) text


@pytest.mark.parametrize("name", ["training", "scoring", "members", "propensities", "sizes", "latest_members"])
def test_every_statement_parses_as_spark(name):
    text = {
        "training": lambda: features.training_sql("spark", "ev", PROFILES_VIEW, WINDOW),
        "scoring": lambda: features.scoring_sql("spark", "ev", PROFILES_VIEW, CUTOFF, ["0190abcdef0123", "019a"]),
        "members": lambda: audiences.members_sql("spark", SCORES_VIEW, PROFILES_VIEW, 0.2, 0.93),
        "propensities": lambda: audiences.latest_propensities_sql("spark", SCORES_VIEW),
        "sizes": lambda: audiences.sizes_sql("spark", SCORES_VIEW, [(0.0, 0.2), (0.2, 0.93)]),
        "latest_members": lambda: audiences.latest_members_sql("spark", SCORES_VIEW, PROFILES_VIEW),
    }[name]()
    tree = sqlglot.parse_one(text, read="spark")
    assert tree.find(sqlglot.exp.Select) is not None


def test_dismiss_recency_uses_the_full_event_type():
    text = sql.load("user_features")
    assert "'decisioning.propositionDismiss' THEN e.timestamp" in text
    assert "'propositionDismiss'" not in text


def test_identifiers_are_validated_before_any_sql():
    with pytest.raises(InvalidNameError, match="DROP TABLE"):
        features.training_sql("postgres", "x; DROP TABLE cmle_profiles", PROFILES_VIEW, WINDOW)
    with pytest.raises(InvalidNameError, match="DROP TABLE"):
        merge.current_records_sql(PROFILES, "p; DROP TABLE cmle_profiles")
    with pytest.raises(sql.SqlTemplateError, match="quote"):
        sql.literal("o'brien")
    with pytest.raises(sql.SqlTemplateError, match="timezone"):
        sql.literal(datetime(2026, 1, 1))


def test_missing_placeholder_names_it():
    with pytest.raises(sql.SqlTemplateError, match=r"\$events"):
        sql.substitute("SELECT * FROM $events")
