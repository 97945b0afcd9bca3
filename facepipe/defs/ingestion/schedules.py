"""Nightly schedules: re-check every watch, and re-cluster the groups that got new faces.

- `nightly_watch_recheck` digests each watch's whole source: whatever its sensor missed (a photo
  copied in with an old modification time, a failed batch) is digested, and the ledger makes every
  unchanged photo free (not even read).
- `nightly_recluster` runs the `people` asset for each group whose `stored_faces` stored new
  faces since the group's last `people` materialization, read from the instance's asset records;
  nothing when nothing changed. (With the daemon running, `people`'s eager automation usually
  has done it already, and this finds nothing to do.)
"""

from collections.abc import Iterator
from typing import cast

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    definitions,
    schedule,
)

from facepipe.defs.digest.jobs import digest_job, digest_run_config
from facepipe.defs.partitions import GROUPS
from facepipe.defs.people.assets import people_job, people_run_config
from facepipe.domain.request import GROUP_TAG, PROFILE_TAG, TAG_PREFIX, WATCH_TAG, run_tags
from facepipe.domain.watching import WatchesConfig, load_watches_leniently
from facepipe.engine.profiles import DEFAULT_PROFILE

RECHECK_TAG = TAG_PREFIX + "recheck"
PAGE = 100


def build_recheck_schedule(config: WatchesConfig) -> ScheduleDefinition | None:
    if not config.watches:
        return None

    @schedule(
        name="nightly_watch_recheck",
        cron_schedule=config.schedules.recheck_cron,
        job=digest_job,
        execution_timezone=config.schedules.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="A full digest of every watch's source (unchanged photos cost nothing), "
        "for what the sensors missed.",
    )
    def nightly_watch_recheck(context: ScheduleEvaluationContext) -> Iterator[RunRequest]:
        night = context.scheduled_execution_time.isoformat()
        for watch in config.watches:
            request = watch.digest_request()
            # a schedule cannot return dynamic partition requests as a sensor does: add the group here
            if not context.instance.has_dynamic_partition(GROUPS, watch.group_id):
                context.instance.add_dynamic_partitions(GROUPS, [watch.group_id])
            yield RunRequest(
                run_key=f"recheck:{watch.name}:{night}",
                partition_key=watch.group_id,
                run_config=digest_run_config(request, watch.worker_count),
                tags={**run_tags(request, watch.worker_count), WATCH_TAG: watch.name, RECHECK_TAG: "nightly"},
            )

    return nightly_watch_recheck


def groups_with_new_faces(instance: DagsterInstance) -> dict[str, tuple[int, set[str]]]:
    """Each group whose stored_faces stored faces since its last people materialization:
    the newest such materialization's storage id, and the profiles of those faces."""
    changed = {}
    for group in instance.get_dynamic_partitions(GROUPS):
        clustered = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("people"), asset_partitions=[group]), limit=1
        ).records
        since = clustered[0].storage_id if clustered else None
        newest: int | None = None
        profiles: set[str] = set()
        cursor = None
        while True:
            page = instance.fetch_materializations(
                AssetRecordsFilter(
                    asset_key=AssetKey("stored_faces"), asset_partitions=[group], after_storage_id=since
                ),
                limit=PAGE,
                cursor=cursor,
            )
            for record in page.records:
                metadata = record.asset_materialization.metadata if record.asset_materialization else {}
                if "faces_stored" in metadata and cast(int, metadata["faces_stored"].value) > 0:
                    newest = max(newest or 0, record.storage_id)
                    profiles.add(str(metadata["profile"].value) if "profile" in metadata else DEFAULT_PROFILE)
            if not page.has_more:
                break
            cursor = page.cursor
        if newest:
            changed[group] = (newest, profiles)
    return changed


def build_recluster_schedule(config: WatchesConfig) -> ScheduleDefinition:
    @schedule(
        name="nightly_recluster",
        cron_schedule=config.schedules.recluster_cron,
        job=people_job,
        execution_timezone=config.schedules.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Clusters into people the groups that got new faces since their last clustering; "
        "nothing otherwise.",
    )
    def nightly_recluster(context: ScheduleEvaluationContext) -> SkipReason | list[RunRequest]:
        changed = groups_with_new_faces(context.instance)
        if not changed:
            return SkipReason("no group got new faces since its last clustering")
        return [
            RunRequest(
                # one request per change: the same new faces are never re-clustered twice
                run_key=f"recluster:{group}:{profile}:{storage_id}",
                partition_key=group,
                run_config=people_run_config(profile, config.schedules.recluster_full),
                tags={GROUP_TAG: group, PROFILE_TAG: profile},
            )
            for group, (storage_id, profiles) in sorted(changed.items())
            for profile in sorted(profiles)
        ]

    return nightly_recluster


def build_schedules(config: WatchesConfig) -> list[ScheduleDefinition]:
    recheck = build_recheck_schedule(config)
    return ([recheck] if recheck else []) + [build_recluster_schedule(config)]


@definitions
def schedules() -> Definitions:
    return Definitions(schedules=build_schedules(load_watches_leniently()[0]))
