"""The Dagster layer: thin over facepipe.engine and facepipe.store."""
