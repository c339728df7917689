"""Experience Platform's batch-ingestion guardrails, and how a scoring of any size fits them.

From Adobe's batch ingestion guides: at most 1,500 files and 100 GB per batch; files above 256 MB go
through the large-file API, in chunks (512 MB at most, the large-file guide). Query Service returns
at most 50,000 rows to an interactive client; larger reads go through a dataset export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_FILES_PER_BATCH = 1500
MAX_BATCH_BYTES = 100 * 1024 ** 3
SMALL_FILE_BYTES = 256 * 1024 ** 2
CHUNK_BYTES = 512 * 1024 ** 2
INTERACTIVE_ROWS = 50_000
SCORES_ROWS_PER_FILE = 2_000_000  # about 60 MB of zstd parquet: every scores file uploads as a small file


class GuardrailError(ValueError):
    """A batch would exceed one of the platform's guardrails; the message says which."""


def check_batch(file_sizes: list[int]) -> None:
    """Refuse, before any upload, a batch that the platform would refuse."""
    if len(file_sizes) > MAX_FILES_PER_BATCH:
        raise GuardrailError(f"{len(file_sizes)} files exceed the {MAX_FILES_PER_BATCH} files of one batch")
    if sum(file_sizes) > MAX_BATCH_BYTES:
        raise GuardrailError(f"{sum(file_sizes) / 1024 ** 3:.1f} GB exceed the 100 GB of one batch")


def chunks(size: int, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """(start, end inclusive) byte ranges of a large-file upload."""
    return [(start, min(start + chunk_bytes, size) - 1) for start in range(0, size, chunk_bytes)]


@dataclass(frozen=True)
class ScoringPlan:
    """How the scoring of one profile batch reaches the platform: how its features are read (dataset
    exports, each read back file by file, or none: over the wire), and its scores' files and batches."""

    profiles: int
    feature_exports: int
    score_files: int
    score_batches: int


def plan_scoring(profiles: int, interactive_rows: int = INTERACTIVE_ROWS,
                 rows_per_file: int = SCORES_ROWS_PER_FILE) -> ScoringPlan:
    files = max(1, math.ceil(profiles / rows_per_file))
    return ScoringPlan(profiles, feature_exports=int(profiles > interactive_rows), score_files=files,
                       score_batches=math.ceil(files / MAX_FILES_PER_BATCH))
