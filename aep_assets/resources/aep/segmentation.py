"""Audiences as Segmentation service segment definitions (batch PQL on the propensity score).

The segments this project manages carry a marker in their description; each is updated in place by
name, and evaluated by a segment job whose profile count is the audience's size.
"""

from __future__ import annotations

import re

from aep_assets.lib import names
from aep_assets.resources.aep.http import AEPError, error_text, json_headers, log, offset_next, paged
from aep_assets.resources.aep.sandbox import Sandbox
from aep_assets.resources.platform import Audience

AUDIENCE_MARKER = "[managed by aep_assets]"
FINAL_JOB_FAILURES = ("FAILED", "CANCELLED", "CANCELED")


class Segmentation:
    """The sandbox's audiences, and the evaluation jobs started for them in this process."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox, self.api = sandbox, sandbox.api
        self.jobs: dict[str, str] = {}  # segment id -> id of the job that evaluates its current definition

    def segments(self) -> list[dict]:
        """Every segment definition this project manages (all pages)."""
        segmentation = self.api.segmentation

        def fetch(start: int, size: int) -> tuple[list[dict], int | None]:
            page = segmentation.connector.getData(f"{segmentation.endpoint}/segment/definitions",
                                                  params={"start": start, "limit": size})
            segments = page.get("segments", [])
            return segments, offset_next(start, segments, size)
        return [s for s in paged(fetch) if AUDIENCE_MARKER in (s.get("description") or "")]

    def segment_named(self, name: str) -> dict | None:
        """The managed segment definition with this name, or None."""
        return next((s for s in self.segments() if s.get("name") == name), None)

    def upsert_audience(self, name: str, description: str, lower: float, upper: float) -> Audience:
        """A batch segment definition (PQL on `_{tenant}.propensity`), updated in place by name, then an
        evaluation job (its count is `audience_size`)."""
        names.audience_name(name)
        segmentation, tenant = self.api.segmentation, self.sandbox.tenant()
        expression = f"_{tenant}.propensity >= {lower!r} and _{tenant}.propensity < {upper!r}"
        body = {"name": name, "description": f"{description} {AUDIENCE_MARKER}".strip(),
                "expression": {"type": "PQL", "format": "pql/text", "value": expression},
                "schema": {"name": "_xdm.context.profile"},
                "evaluationInfo": {"batch": {"enabled": True}, "continuous": {"enabled": False},
                                   "synchronous": {"enabled": False}}}
        url = f"{segmentation.endpoint}/segment/definitions"
        current = self.segment_named(name)
        if current is None:
            segment = self.sandbox.created(f"audience {name!r}", lambda: self.segment_named(name),
                                           lambda: segmentation.connector.postData(
                                               url, data=body, headers=json_headers(segmentation.header)))
            log.info("created audience %r (%s)", name, segment["id"])
        elif ((current.get("expression") or {}).get("value"), current.get("description")) != (
                expression, body["description"]):
            segment = segmentation.connector.patchData(f"{url}/{current['id']}", data={"id": current["id"], **body})
            log.info("updated audience %r (%s) in place", name, current["id"])
        else:
            segment = current
        job = segmentation.createJob([segment["id"]])
        self.jobs[segment["id"]] = job["id"]
        return audience_of(segment)

    def audiences(self) -> list[Audience]:
        """Every managed audience, by interval then name."""
        return sorted((audience_of(s) for s in self.segments()), key=lambda a: (a.lower, a.name))

    def delete_audience(self, audience: Audience) -> None:
        """Delete the segment definition (and forget its evaluation job)."""
        self.api.segmentation.deleteSegment(audience.id)
        self.jobs.pop(audience.id, None)

    def audience_size(self, audience: Audience) -> int:
        """Profiles the segment evaluation job counted for this audience."""
        segmentation = self.api.segmentation
        job_id = self.jobs.get(audience.id) or segmentation.createJob([audience.id])["id"]

        def check() -> dict | None:
            job = segmentation.getJob(job_id)
            status = str(job.get("status", "")).upper()
            if status in FINAL_JOB_FAILURES:
                errors = self.sandbox.redact(error_text(job.get("errors")) or "no error details")
                raise AEPError(f"segment job {job_id} for audience {audience.name!r} {status}: {errors}")
            return job if status == "SUCCEEDED" else None
        job = self.sandbox.wait(f"segment job {job_id}", check)
        return int(((job.get("metrics") or {}).get("segmentedProfileCounter") or {}).get(audience.id, 0))


def audience_of(segment: dict) -> Audience:
    """A segment definition as the platform interface's Audience (its interval read back from the PQL)."""
    expression = (segment.get("expression") or {}).get("value", "")
    match = re.search(r"propensity >= ([0-9.eE+-]+) and \S+ < ([0-9.eE+-]+)", expression)
    lower, upper = (float(match.group(1)), float(match.group(2))) if match else (float("nan"), float("nan"))
    description = (segment.get("description") or "").replace(AUDIENCE_MARKER, "").strip()
    return Audience(id=segment["id"], name=segment["name"], description=description, expression=expression,
                    lower=lower, upper=upper, created_ms=int(segment.get("creationTime") or 0),
                    updated_ms=int(segment.get("updateTime") or 0))
