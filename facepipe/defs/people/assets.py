"""The people asset: a group's faces clustered into persons, downstream of the digest.

    stored_faces ──> people   (per group: person_id in each face's payload, the people_<profile> table)

It opens the face store, so it runs in the store pool (one writer per embedded store), and in
process: clustering is one short step, not worth a worker process.
"""

from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AutomationCondition,
    Config,
    Failure,
    MaterializeResult,
    asset,
    define_asset_job,
    in_process_executor,
)
from pydantic import Field

from facepipe.defs.partitions import digest_groups
from facepipe.defs.resources import FaceStoreResource
from facepipe.domain.request import GROUP_TAG, PROFILE_TAG, ProfileName
from facepipe.engine.profiles import DEFAULT_PROFILE
from facepipe.settings import STORE_POOL


class PeopleConfig(Config):
    """Cluster one group's faces into people."""

    profile: ProfileName = Field(default=DEFAULT_PROFILE, description="The model profile.")
    full: bool = Field(
        default=False,
        description="Re-cluster every face (ids and names carry over to the clusters holding most of a "
        "person's faces). Otherwise only faces without a person are placed, and no one is renumbered.",
    )


@asset(
    deps=[AssetKey("stored_faces")],
    partitions_def=digest_groups,
    pool=STORE_POOL,
    # once default_automation_condition_sensor is on (UI > Automation), a digest of a group re-runs its people
    automation_condition=AutomationCondition.eager(),
    description="The group's faces clustered into people: person_id on each face, and the people table.",
    kinds={"qdrant"},
)
def people(
    context: AssetExecutionContext, config: PeopleConfig, face_store: FaceStoreResource
) -> MaterializeResult[Any]:
    # SciPy loads here, not with the definitions (0.7 s for every code server and step process)
    from facepipe.domain.people import update_people

    group_id = context.partition_key
    # a run the automation condition launched is tagged as the CLI tags its own
    context.instance.add_run_tags(context.run.run_id, {GROUP_TAG: group_id, PROFILE_TAG: config.profile})
    with face_store.open() as store:
        if not store.count_faces(group_id, config.profile):
            raise Failure(f"group {group_id!r} has no faces with profile {config.profile!r}: digest it first")
        counts = update_people(store, group_id, config.profile, full=config.full)
    context.log.info(f"people of {group_id}: {counts}")
    return MaterializeResult(metadata={**counts, "profile": config.profile, "full": config.full})


people_job = define_asset_job(
    "people_job",
    selection=AssetSelection.assets(people),
    executor_def=in_process_executor,
    description="Cluster a group's faces into people (incremental, or a full re-cluster with full: true).",
)


def people_run_config(profile: str = DEFAULT_PROFILE, full: bool = False) -> dict[str, Any]:
    """The run config of a people_job run (the CLI, the run client and the nightly schedule)."""
    return {
        "ops": {"people": {"config": {"profile": profile, "full": full}}},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
