"""The Dagster layer, wiring only, by concept: digest/ (the digest assets and job), people/ (the
people asset and job), ingestion/ (watch sensors, schedules, webhooks), resources.py (the face
store and S3). Dagster's loader imports every module here (facepipe/definitions.py): keep model
libraries out of their imports."""
