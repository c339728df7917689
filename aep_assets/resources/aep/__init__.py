"""AEP mode: the platform interface over Adobe Experience Platform's APIs (aepp 0.6.0 and Query Service).

- `platform`: `AEPPlatform`, the Dagster resource (configuration, env handling), assembling the services;
- `sandbox`: aepp's clients with our session, the tenant, waiting and creating without duplicates;
- `http`: the session under aepp (token, TLS, retries, redacted errors) and the one paging loop;
- `xdm`: how the flat datasets map onto XDM, and the flat Query Service views;
- `catalog`: datasets, schemas, batches and their ingestion;
- `query_service`: the Query Service connection, and the datasets written by SQL;
- `export`: dataset export dataflows to S3;
- `segmentation`: audiences as segment definitions and their evaluation jobs.
"""
