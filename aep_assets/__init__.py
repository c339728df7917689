"""aep_assets: Adobe Experience Platform's AI/ML enrichment workflow as Dagster assets."""
