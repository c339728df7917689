"""One partition per batch of the platform's profile dataset: the unit of incremental re-scoring."""

import dagster as dg

profile_batches = dg.DynamicPartitionsDefinition(name="profile_batches")
