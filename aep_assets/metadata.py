"""What the assets show in the Dagster UI: sortable tables with column types, inline plots, row counts,
and what an earlier materialization recorded."""

from __future__ import annotations

import dagster as dg
import polars as pl

from aep_assets.lib import plots

OWNERS = ["team:cmle-data-platform"]

# Keys Dagster documents but 1.13 exports no constant or constructor for: the row count the UI shows on an
# asset (TableMetadataSet is not public), and the run tags that make one run take a range of partitions
# (RunRequest has no partition range parameter).
ROW_COUNT = "dagster/row_count"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Tags of a run that materializes the partitions `first` to `last` in one run."""
    return {RANGE_START: first, RANGE_END: last}

_COLUMN_TYPES = {pl.Boolean: "bool", pl.Float32: "float", pl.Float64: "float"}


def table(frame: pl.DataFrame) -> dg.MetadataValue:
    """A table the UI sorts and filters: numbers stay numbers (floats to 4 significant digits), the rest is
    shown as text."""
    columns, values = [], []
    for name, dtype in frame.schema.items():
        kind = "int" if dtype.is_integer() else _COLUMN_TYPES.get(dtype.base_type(), "string")
        columns.append(dg.TableColumn(name, kind))
        series = frame[name]
        if kind == "float":
            series = series.fill_nan(None).round_sig_figs(4)
        elif kind == "string":
            series = series.cast(pl.String)
        values.append(series)
    records = [dg.TableRecord(dict(zip(frame.columns, row, strict=True))) for row in zip(*values, strict=True)]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=columns))


def table_lines(value: dg.TableMetadataValue) -> list[str]:
    """A metadata table as aligned text lines, for a terminal."""
    names = [column.name for column in value.schema.columns]
    rows = [[_cell(record.data.get(name)) for name in names] for record in value.records]
    widths = [max(len(text) for text in column) for column in zip(names, *rows, strict=True)]
    numeric = [column.type in ("int", "float") for column in value.schema.columns]
    return ["| " + " | ".join(text.rjust(width) if right else text.ljust(width)
                              for text, width, right in zip(row, widths, numeric, strict=True)) + " |"
            for row in [names, *rows]]


def _cell(value: object) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def preview(frame: pl.DataFrame, rows: int = 10) -> dg.MetadataValue:
    """The first rows of a dataset."""
    return table(frame.head(rows))


def image(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(plots.markdown_image(png, alt))


def row_count(rows: int) -> dict[str, int]:
    """The row count the UI shows on the asset."""
    return {ROW_COUNT: rows}


def recorded(context: dg.AssetExecutionContext) -> dict[str, object]:
    """The metadata values of the asset's latest materialization (empty if none)."""
    record = context.instance.get_latest_materialization_event(context.asset_key)
    entries = record.asset_materialization.metadata if record else {}
    return {key: entry.value for key, entry in entries.items()}
