"""What every diagnose section uses: the measurements noted so far, a clock, scratch SQL and its plans.

Business purpose: each alternative a product change would use is timed the same way, on its own
connection, and leaves nothing behind in the home.
"""

from __future__ import annotations

import time

RESULTS: dict[str, object] = {}


def note(name: str, value) -> None:
    """Keep a measurement for the JSON line and print it as it comes (a long run shows its progress)."""
    RESULTS[name] = value
    print(f"{name}: {value}", flush=True)


def clock(fn, *args, **kwargs):
    """(seconds rounded to the millisecond, value) of one call."""
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return round(time.perf_counter() - started, 3), value


def execute(platform, text: str, *settings: str) -> float:
    """Seconds of one statement on its own connection (with optional SET lines before it)."""
    with platform.connect() as conn:
        for line in settings:
            conn.execute(line)
        started = time.perf_counter()
        conn.execute(text)
        return round(time.perf_counter() - started, 3)


def ctas(platform, select: str, *settings: str) -> float:
    """Seconds of the SELECT written to a scratch UNLOGGED table (every row and column computed)."""
    execute(platform, "DROP TABLE IF EXISTS diag_ctas")
    seconds = execute(platform, f"CREATE UNLOGGED TABLE diag_ctas AS {select}", *settings)
    execute(platform, "DROP TABLE IF EXISTS diag_ctas")
    return seconds


def plan(platform, select: str, *settings: str) -> list[str]:
    """The executed plan's scans, joins, aggregates and JIT lines, with their actual rows."""
    with platform.connect() as conn:
        for line in settings:
            conn.execute(line)
        lines = [row[0] for row in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {select}").fetchall()]
    keep = ("Scan", "Join", "Nested Loop", "Aggregate", "Gather", "Sort", "JIT", "Functions", "Execution Time")
    return [line.strip() for line in lines if any(word in line for word in keep)]
