"""The fake Segmentation service: segment definitions and evaluation jobs, whose profile counts come
from `segment_count` (a test's function of the segment).

Part of `FakeAEP`; its state is `segments` and `jobs`.
"""

from __future__ import annotations

import secrets

from aep_assets.testing.fake_aep.credentials import ORG_ID, new_uuid
from aep_assets.testing.fake_aep.state import FakeState

SEGMENTS = "/data/core/ups/segment"


class FakeSegmentation(FakeState):
    """Segmentation routes and handlers."""

    ROUTES = (
        ("GET", rf"{SEGMENTS}/definitions", "list_segments"),
        ("POST", rf"{SEGMENTS}/definitions", "create_segment"),
        ("PATCH", rf"{SEGMENTS}/definitions/([^/]+)", "patch_segment"),
        ("DELETE", rf"{SEGMENTS}/definitions/([^/]+)", "delete_segment"),
        ("POST", rf"{SEGMENTS}/jobs", "create_job"),
        ("GET", rf"{SEGMENTS}/jobs/([^/]+)", "get_job"),
    )

    def list_segments(self, query, **_):
        start, limit = int(query.get("start", 0)), int(query.get("limit", 20))
        items = list(self.segments.values())
        return 200, {"segments": items[start:start + limit],
                     "page": {"totalCount": len(items), "totalPages": 1, "sortField": "creationTime",
                              "sort": "desc", "pageSize": len(items[start:start + limit]), "limit": limit},
                     "link": {}}

    def create_segment(self, body, **_):
        segment_id = new_uuid()
        now = next(self.clock)
        self.segments[segment_id] = {**body, "id": segment_id, "imsOrgId": ORG_ID, "profileInstanceId": "ups",
                                     "dataGovernancePolicy": {"excludeOptOut": True},
                                     "creationTime": now, "updateEpoch": now // 1000, "updateTime": now}
        return 200, self.segments[segment_id]

    def patch_segment(self, segment_id, body, **_):
        now = next(self.clock)
        self.segments[segment_id].update({**body, "updateEpoch": now // 1000, "updateTime": now})
        return 200, self.segments[segment_id]

    def delete_segment(self, segment_id, **_):
        del self.segments[segment_id]
        return 200, {"status": True, "message": "(Segment) Deleted"}

    def create_job(self, body, **_):
        job_id = secrets.token_hex(16)
        now = next(self.clock)
        segments = [{"segmentId": item["segmentId"], "segment": {
            "id": item["segmentId"], "expression": self.segments[item["segmentId"]]["expression"],
            "mergePolicy": {"id": "fake-default-merge-policy", "version": 1}}} for item in body]
        self.jobs[job_id] = {"id": job_id, "imsOrgId": ORG_ID, "status": "PROCESSING", "_polls": 0,
                             "segments": segments, "creationTime": now, "updateTime": now,
                             "metrics": {"totalTime": {"startTimeInMs": now},
                                         "profileSegmentationTime": {"startTimeInMs": now}}}
        return 200, {k: v for k, v in self.jobs[job_id].items() if not k.startswith("_")}

    def get_job(self, job_id, **_):
        job = self.jobs[job_id]
        job["_polls"] += 1
        if job["_polls"] > 1 and job["status"] == "PROCESSING":
            ids = [s["segmentId"] for s in job["segments"]]
            start, end = job["creationTime"], next(self.clock)
            span = {"startTimeInMs": start, "endTimeInMs": end, "totalTimeInMs": end - start}
            counts = {i: self.segment_count(self.segments[i]) for i in ids}  # one query per segment
            job.update(status=self.job_outcome, updateTime=end, metrics={
                "totalTime": span, "profileSegmentationTime": span, "segmentedProfileCounter": counts,
                "segmentedProfileByStatusCounter": {i: {"realized": n, "exited": 0} for i, n in counts.items()}})
            if self.job_outcome == "FAILED":
                job["errors"] = [{"code": "0090000009", "msg": "Error while evaluating segment expression"}]
        return 200, {k: v for k, v in job.items() if not k.startswith("_")}
