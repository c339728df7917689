"""What the fake platform remembers during one test, shared by its services: what each call created (so
a lookup finds what an earlier call made, and idempotency can be tested), the requests it received, and
the knobs a test turns to make Adobe answer differently."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import psycopg


class FakeState:
    """The fake's state; its Query Service is the PostgreSQL database at `conninfo`."""

    def __init__(self, conninfo: str, address):
        self.conninfo, self.address = conninfo, address
        self.ids = itertools.count(1)
        self.clock = itertools.count(1_700_000_000_000, 1000)  # epoch milliseconds, a second per event
        self.requests: list[dict] = []
        self.faults: list[dict] = []
        self.tokens: list[str] = []
        self.valid_tokens: set[str] = set()
        self.qs_tokens: list[str] = []
        # per service: what was created
        self.field_groups: dict[str, dict] = {}
        self.schemas: dict[str, dict] = {}
        self.descriptors: list[dict] = []
        self.datasets: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.uploads: dict[tuple[str, str], bytearray] = {}
        self.queries: dict[str, dict] = {}
        self.segments: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.connections: dict[str, dict] = {}  # base, source and target connections
        self.flow_kinds: dict[str, str] = {}
        self.flows: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        # how the platform answers
        self.not_ready_answers = 0
        self.registry_page_size = 20
        self.job_outcome = "SUCCEEDED"  # what segment jobs end with
        self.export_outcome = "success"  # what dataset-export runs end with
        self.query_timeouts = 0  # how many next queries end in TIMEOUT
        self.segment_count: Callable[[dict], int] = lambda segment: 0
        self.on_export: Callable[[dict, str], None] = lambda flow, dataset_id: None

    def new_id(self, width: int = 24) -> str:
        """A fresh hexadecimal id (24 digits like Catalog's dataset ids, 32 for batches)."""
        return f"{next(self.ids):0{width}x}"

    def pg(self):
        """A connection to the database that plays Query Service."""
        return psycopg.connect(self.conninfo, autocommit=True)
