"""The digest job: the digest assets of one group, on the multiprocess executor (or on Celery
workers when FACEPIPE_CELERY_BROKER is set, which the run asks first whether they can run it), and
the run config that launches it (the CLI, the run client, the sensors and schedules all build it
here)."""

from collections.abc import Mapping
from typing import Any

from dagster import AssetSelection, ExecutorDefinition, Field, define_asset_job, multiprocess_executor

from facepipe import settings
from facepipe.defs.digest.config import digest_config
from facepipe.domain.request import DigestRequest, default_workers, list_images_config, valid_workers

WORKERS_FIELD = {
    "workers": Field(
        int,
        default_value=default_workers(),
        description="Worker processes digesting chunks of photos in parallel (1 to FACEPIPE_MAX_WORKERS): on Celery, "
        "the processes of all the workers, which the photos are split for.",
    )
}


def _multiprocess_config(config: dict[str, Any]) -> dict[str, Any]:
    valid_workers(config["workers"])  # a launch from the Launchpad or GraphQL is bounded here
    return {
        "max_concurrent": config["workers"],
        # forkserver: steps fork from one process that has imported the engine and its models
        "start_method": {"forkserver": {"preload_modules": ["facepipe.worker_preload"]}},
    }


def _celery_config(config: dict[str, Any]) -> dict[str, Any]:
    valid_workers(config["workers"])
    # the URLs are read from the environment by the executor: a password in one stays out of the UI
    own_backend = settings.celery_backend() != settings.celery_broker()
    backend = "FACEPIPE_CELERY_BACKEND" if own_backend else "FACEPIPE_CELERY_BROKER"
    return {"broker": {"env": "FACEPIPE_CELERY_BROKER"}, "backend": {"env": backend}}


def local_photos(run_config: Mapping[str, Any]) -> str | None:
    """The local folder a digest_job run reads, from its run config; None for an S3 prefix."""
    return list_images_config(run_config).get("source", {}).get("local_folder", {}).get("path")


def digest_executor() -> ExecutorDefinition:
    """Celery workers when a broker is configured, this machine's processes otherwise.

    The config is the same on both (`workers`), so every launcher builds one run config."""
    if settings.celery_broker():
        # only then: dagster-celery is the `celery` extra, and brings Celery and its broker clients
        from facepipe.platform.celery_executor import worker_checking_celery_executor

        return worker_checking_celery_executor(local_photos).configured(
            _celery_config, config_schema=WORKERS_FIELD, name="digest_executor"
        )
    return multiprocess_executor.configured(_multiprocess_config, config_schema=WORKERS_FIELD, name="digest_executor")


digest_job = define_asset_job(
    "digest_job",
    selection=AssetSelection.assets("image_list", "faces", "embeddings", "stored_faces"),
    executor_def=digest_executor(),
    description="Digest a folder of photos into a group: list, detect, embed and store faces.",
)


def digest_run_config(request: DigestRequest, workers: int) -> dict[str, Any]:
    """The run config of a digest_job run of `request` on `workers` processes."""
    return {
        "ops": {"digest": {"ops": {"list_images": {"config": digest_config(request)}}}},
        "execution": {"config": {"workers": workers}},
        # the event log keeps every event; the console only needs to hear of trouble
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
