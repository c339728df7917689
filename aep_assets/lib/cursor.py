"""The new-profile-batch sensor's bookkeeping, as pure logic.

The cursor is the completion time of the newest requested batch plus the ids requested at that
exact millisecond, so batches that share a millisecond are neither lost nor requested twice. It
moves only past batches that were requested (or deliberately skipped) in the same tick.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchCursor:
    after_ms: int = 0
    ids_at_ms: tuple[str, ...] = ()

    def serialize(self) -> str:
        return json.dumps({"after_ms": self.after_ms, "ids_at_ms": list(self.ids_at_ms)})

    @classmethod
    def parse(cls, raw: str | None) -> BatchCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(int(data["after_ms"]), tuple(data["ids_at_ms"]))


@dataclass
class TickPlan:
    requested: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    already_known: list[str] = field(default_factory=list)
    cursor: BatchCursor = field(default_factory=BatchCursor)


def plan_tick(cursor: BatchCursor, batches: Sequence, is_known: Callable[[str], bool], max_requests: int) -> TickPlan:
    """Decide a tick from batches completed at or after the cursor (any status), oldest first.

    `batches` items need `id`, `status` and `completed_ms`. Failed batches are skipped; batches
    whose partition already exists (scored by a full run) are passed over; at most `max_requests`
    run requests, the rest waits for the next tick.
    """
    plan = TickPlan(cursor=cursor)
    after_ms, ids = cursor.after_ms, set(cursor.ids_at_ms)
    for batch in batches:
        if batch.completed_ms < after_ms or (batch.completed_ms == after_ms and batch.id in ids):
            continue
        if batch.status == "success" and not is_known(batch.id) and len(plan.requested) >= max_requests:
            break
        if batch.status == "failed":
            plan.failed.append(batch.id)
        elif is_known(batch.id):
            plan.already_known.append(batch.id)
        else:
            plan.requested.append(batch.id)
        if batch.completed_ms > after_ms:
            after_ms, ids = batch.completed_ms, set()
        ids.add(batch.id)
    plan.cursor = BatchCursor(after_ms, tuple(sorted(ids)))
    return plan
