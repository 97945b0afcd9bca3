import os

from dagster import AssetSelection, Field, define_asset_job, multiprocess_executor

from facepipe.defs.partitions import digest_groups


def _multiprocess_config(config: dict) -> dict:
    if config["workers"] < 1:
        raise ValueError(f"workers must be at least 1, got {config['workers']}")
    return {
        "max_concurrent": config["workers"],
        # forkserver: steps fork from one process that has imported the engine and its models
        "start_method": {"forkserver": {"preload_modules": ["facepipe.defs.worker_preload"]}},
    }


digest_executor = multiprocess_executor.configured(
    _multiprocess_config,
    config_schema={
        "workers": Field(int, default_value=os.cpu_count() or 1,
                         description="Worker processes digesting chunks of photos in parallel (>= 1).")
    },
    name="digest_executor",
)

digest_job = define_asset_job(
    "digest_job",
    selection=AssetSelection.assets("image_list", "faces", "stored_faces"),
    partitions_def=digest_groups,
    executor_def=digest_executor,
    description="Digest a folder of photos into a group: list, detect, embed and store faces.",
)
