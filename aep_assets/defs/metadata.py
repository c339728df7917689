"""Small helpers that turn frames into Dagster metadata values."""

import dagster as dg
import polars as pl

from aep_assets.lib import plots

OWNERS = ["team:cmle-data-platform"]


def preview(frame: pl.DataFrame, rows: int = 10) -> dg.MetadataValue:
    """The first rows as a markdown table (shown inline in the UI)."""
    return dg.MetadataValue.md(frame.head(rows).to_pandas().to_markdown(index=False, floatfmt=".4g"))


def table(frame: pl.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_pandas().to_markdown(index=False, floatfmt=".4g"))


def image(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(plots.markdown_image(png, alt))
