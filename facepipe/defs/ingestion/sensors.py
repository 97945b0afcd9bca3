"""A watch's sensor: the new and changed photos of its folder or S3 prefix become digest runs.

The wiring over facepipe/domain/watching.py, which lists the source, cuts the new photos into batches
and keeps the cursor. The watches come from the watches file, read when the code location loads.
"""

from typing import NoReturn

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    definitions,
    sensor,
)
from dagster_aws.s3 import S3Resource

from facepipe.defs.digest.jobs import digest_job, digest_run_config
from facepipe.defs.partitions import GROUPS, digest_groups
from facepipe.defs.resources import s3_client
from facepipe.domain.request import GROUP_TAG, PARTITION_TAG, QUEUED_BEHIND_TAG, WATCH_TAG, run_tags
from facepipe.domain.watching import (
    Batch,
    Watch,
    WatchCursor,
    WatchesError,
    list_source,
    load_watches_leniently,
    plan_batches,
)


def watch_run_request(watch: Watch, batch: Batch, queued_behind: str | None = None) -> RunRequest:
    request = watch.digest_request(modified_after_ns=batch.after_ns, modified_until_ns=batch.until_ns)
    tags = {**run_tags(request, watch.worker_count), WATCH_TAG: watch.name}
    return RunRequest(
        run_key=batch.run_key(watch.name),
        partition_key=watch.group_id,
        run_config=digest_run_config(request, watch.worker_count),
        tags={**tags, QUEUED_BEHIND_TAG: queued_behind} if queued_behind else tags,
    )


def runs_ahead(instance: DagsterInstance) -> tuple[str | None, str]:
    """The run a new run waits behind in the run queue (the oldest in progress or queued) and why,
    in words for the sensor's tick; (None, "") when nothing is ahead."""
    ahead = instance.get_runs(
        RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.QUEUED])
    )
    if not ahead:
        return None, ""
    first = ahead[-1]  # newest first
    limit = instance.get_concurrency_config().run_queue_config
    at_a_time = f", {limit.max_concurrent_runs} at a time" if limit and limit.max_concurrent_runs else ""
    group = first.tags.get(GROUP_TAG) or first.tags.get(PARTITION_TAG) or "-"
    return first.run_id, (
        f"they queue behind {len(ahead)} run(s) in progress or queued{at_a_time} (concurrency.runs in "
        f"dagster.yaml), first run {first.run_id[:8]} ({first.job_name}, group {group}, {first.status.value.lower()})"
    )


def build_watch_sensor(watch: Watch) -> SensorDefinition:
    @sensor(
        name=watch.sensor_name,
        job=digest_job,
        minimum_interval_seconds=watch.minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,  # declaring a watch turns it on
        description=f"Digests new and changed photos of {watch.source} into group {watch.group_id}, "
        f"at most {watch.max_photos_per_run} a run.",
    )
    def watch_sensor(context: SensorEvaluationContext, s3: S3Resource) -> SensorResult:
        request = watch.digest_request()
        cursor = WatchCursor.read(context.cursor, request.source.url)
        files = list_source(watch, s3_client(s3, request))
        batches = plan_batches(files, cursor, watch.max_photos_per_run)
        if not batches:
            return SensorResult(
                skip_reason=f"nothing modified in {request.source.url} since the last launch",
                cursor=cursor.write(request.source.url),
            )
        new_group = not context.instance.has_dynamic_partition(GROUPS, watch.group_id)
        behind, why = runs_ahead(context.instance)
        context.log.info(
            f"{sum(len(b.files) for b in batches)} new or changed photos in {request.source.url}: "
            f"{len(batches)} digest(s)" + (f"; {why}" if why else "")
        )
        return SensorResult(
            run_requests=[watch_run_request(watch, batch, behind) for batch in batches],
            cursor=cursor.after(batches, files).write(request.source.url),
            dynamic_partitions_requests=[digest_groups.build_add_request([watch.group_id])] if new_group else [],
        )

    return watch_sensor


def broken_watch_sensor(name: str, problem: str) -> SensorDefinition:
    """A watch the watches file gets wrong: its sensor fails each tick with what is wrong, on its
    page in the UI, while the other watches run."""

    @sensor(
        name=name,
        job=digest_job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Disabled: {problem}",
    )
    def broken_watch(context: SensorEvaluationContext) -> NoReturn:
        raise WatchesError(f"{problem} (fix the watches file, then reload the code location)")

    return broken_watch


@definitions
def watch_sensors() -> Definitions:
    config, problems = load_watches_leniently()
    return Definitions(
        sensors=[build_watch_sensor(watch) for watch in config.watches]
        + [broken_watch_sensor(name, problem) for name, problem in problems.items()]
    )
