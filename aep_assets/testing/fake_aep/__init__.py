"""A fake Experience Platform, served through `responses` under aepp's `requests`.

Payloads follow Adobe's API descriptions (aep_assets.testing.contracts checks every exchange against
them when given): IMS token v3, Schema Registry, Catalog, Batch Ingestion, Query Service,
Segmentation, Flow Service, ad-hoc dataset export. State is kept so idempotency can be tested (a
lookup finds what an earlier call created). Query Service is a PostgreSQL database: datasets get a real
table (tenant fields as a composite column `_acme`, `_acp_batchid`), completed batches load their
uploaded parquet into it, and asynchronous queries (CTAS, INSERT INTO) run on it. `inject` makes a
route fail (429, 5xx, 401, ...) a number of times.

- `server`: `FakeAEP`, authentication, injected faults, routing, contract checks;
- `state`: what the fake remembers and the knobs a test turns;
- `credentials`: the organization, client, sandbox and tenant the fake accepts;
- `registry`, `catalog`, `query_service`, `segmentation`, `flows`: one module per service.
"""

from aep_assets.testing.fake_aep.credentials import (
    CLIENT_ID,
    CLIENT_SECRET,
    ORG_ID,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    SANDBOX,
    SCOPES,
    TENANT,
)
from aep_assets.testing.fake_aep.server import FakeAEP

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "ORG_ID", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SANDBOX", "SCOPES", "TENANT",
           "FakeAEP"]
