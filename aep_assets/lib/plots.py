"""Plots as PNG for Dagster metadata (markdown images) and MLflow artifacts.

matplotlib is imported at the first plot, not with this module: importing the code location (the UI,
the daemon, every run process) should not pay for it.
"""

from __future__ import annotations

import base64
import functools
import io

import numpy as np


@functools.cache
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """A PNG inline in markdown, which the Dagster UI renders."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def bar_chart(labels: list[str], values: list[float], title: str, xlabel: str, *, log: bool = False) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    ax.barh(labels[::-1], values[::-1], color="#1473e6")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if log:
        ax.set_xscale("log")
    return to_png(fig)


def heatmap(matrix: np.ndarray, labels: list[str], title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.7)
    return to_png(fig)


def lines(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str, ylabel: str,
          *, diagonal: bool = False) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label, marker="o" if len(x) <= 20 else None, markersize=3)
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)
    return to_png(fig)


def histogram(values: np.ndarray, title: str, xlabel: str, *, bins: int = 50,
              intervals: list[tuple[str, float, float]] = ()) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=bins, range=(0, 1), color="#1473e6", alpha=0.8)
    ax.set_yscale("log")
    colors = plt.cm.tab10.colors
    for index, (name, lower, upper) in enumerate(intervals):
        ax.axvspan(lower, min(upper, 1.0), alpha=0.12, color=colors[index % len(colors)], label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("profiles (log)")
    if intervals:
        ax.legend(fontsize=7, loc="upper right")
    return to_png(fig)
