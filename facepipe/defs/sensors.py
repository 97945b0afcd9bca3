"""Sensors: a watch's new photos become digests; a digest that ends is announced to the webhooks.

A watch's sensor lists its folder or S3 prefix every `minimum_interval_seconds` and keeps a
high-water mark as its cursor: the newest modification time it has launched (an S3 object's
LastModified), with the short hashes of the photos that had exactly that time (see WatchCursor).
Photos modified after it are sorted by time and cut into batches of at most `max_photos_per_run`,
each a window (after, until] of modification times; a batch is one digest run of just that window
(`modified_after_ns` / `modified_until_ns` in its config), with the run key
`<watch>:<after>:<until>`, so a window, and so a photo, is never launched twice. A photo changed
later has a newer time and falls in a later window. The digest's own ledger still skips photos
it already has unchanged, so overlapping windows would cost nothing.

What the high-water mark cannot see, the nightly re-check (schedules.py) catches: a photo copied
in with an older modification time preserved (`cp -p`, `rsync -a`), or an S3 object whose upload
finished after a newer one was listed.
"""

import hashlib
import itertools
import json
import os
from dataclasses import dataclass

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from dagster_aws.s3 import S3Resource

from facepipe.defs.jobs import digest_job
from facepipe.defs.partitions import digest_groups
from facepipe.defs.watches import Watch, WatchesConfig

WATCH_TAG = "facepipe/watch"
# run status sensors look for runs that ended this often (Dagster's default is 30 s)
WEBHOOK_INTERVAL_SECONDS = 10
NOTHING_SEEN = -1  # the cursor before the first photo: every modification time is after it


class WatchError(RuntimeError):
    """The watched source cannot be listed: the tick fails with this message, the next one retries."""


@dataclass(frozen=True)
class Batch:
    after_ns: int  # exclusive
    until_ns: int  # inclusive: the newest modification time in the batch
    files: list
    reopened: int | None = None  # photos known at after_ns + 1, when late ones re-open that time

    def run_key(self, watch_name: str) -> str:
        key = f"{watch_name}:{self.after_ns}:{self.until_ns}"
        # a re-opened window repeats its bounds: the number of photos known at that time tells it apart
        return f"{key}:{self.reopened}" if self.reopened is not None else key


@dataclass(frozen=True)
class WatchCursor:
    """The newest modification time launched, and which photos had exactly that time.

    S3's LastModified has whole seconds (some file systems too): a photo can arrive with the
    very time of the last launch after the listing that launched it. The short hashes of the
    photos already launched at that time tell such a late arrival from them, so it is launched
    too. Only one time's photos are kept, so the cursor stays small.
    """

    mtime_ns: int = NOTHING_SEEN
    # path_tag of each photo launched with exactly mtime_ns; None when too many to keep (a flood
    # within one second), and late arrivals at that time are left to the nightly re-check
    at_mtime: frozenset | None = frozenset()

    @classmethod
    def read(cls, cursor: str | None, source: str) -> "WatchCursor":
        saved = json.loads(cursor) if cursor else {}
        if saved.get("source") != source:  # a new watch, or its source changed: start over
            return cls()
        at_mtime = saved.get("at_mtime", ())
        return cls(int(saved["mtime_ns"]), None if at_mtime is None else frozenset(at_mtime))

    def write(self, source: str) -> str:
        at_mtime = None if self.at_mtime is None else sorted(self.at_mtime)
        return json.dumps({"source": source, "mtime_ns": self.mtime_ns, "at_mtime": at_mtime})

    def after(self, batches: list[Batch], files: list) -> "WatchCursor":
        """The cursor once `batches` are launched: their newest time and every listed photo at it."""
        if not batches:
            return self
        until = batches[-1].until_ns
        at_until = {path_tag(f.path) for f in files if f.mtime_ns == until}
        if until == self.mtime_ns:
            if self.at_mtime is None:
                return self
            at_until |= self.at_mtime
        return WatchCursor(until, frozenset(at_until) if len(at_until) <= MAX_TAGS_IN_CURSOR else None)


MAX_TAGS_IN_CURSOR = 10_000


def path_tag(path: str) -> str:
    return hashlib.blake2b(path.encode(), digest_size=5).hexdigest()


def plan_batches(files: list, cursor: WatchCursor, max_photos: int) -> list[Batch]:
    """The photos modified after the cursor (or late at its very time), oldest first, in consecutive
    windows of at most `max_photos` photos each; a window never splits photos of the same modification
    time, so one time held by more than `max_photos` photos makes one larger batch."""
    after = cursor.mtime_ns
    known = cursor.at_mtime
    late = [] if known is None else [f for f in files if f.mtime_ns == after and path_tag(f.path) not in known]
    new = sorted(late + [f for f in files if f.mtime_ns > after], key=lambda f: (f.mtime_ns, f.path))
    # late photos re-open the cursor's time: the window starts just before it (the photos launched
    # at that time already are in it again, and the digest's ledger skips them unchanged)
    start = after - 1 if late else after
    reopened = len(known | {path_tag(f.path) for f in late}) if late else None
    batches, current = [], []
    for _, same_time in itertools.groupby(new, key=lambda f: f.mtime_ns):
        same_time = list(same_time)
        if current and len(current) + len(same_time) > max_photos:
            batches.append(Batch(start, current[-1].mtime_ns, current, reopened))
            start, current, reopened = current[-1].mtime_ns, [], None
        current.extend(same_time)
    if current:
        batches.append(Batch(start, current[-1].mtime_ns, current, reopened))
    return batches


def list_source(watch: Watch, s3: S3Resource) -> list:
    """The photos at the watch's source, as the digest will list them (path, size, mtime_ns)."""
    from facepipe.engine.sources import SourceError

    request = watch.digest_request()
    try:
        return request.list_photos(s3)
    except (OSError, SourceError) as err:
        raise WatchError(f"watch {watch.name}: cannot list {request.source}: {err}") from err


def watch_run_request(watch: Watch, batch: Batch) -> RunRequest:
    from facepipe.digests import TAG_PREFIX, run_config, run_tags

    request = watch.digest_request(modified_after_ns=batch.after_ns, modified_until_ns=batch.until_ns)
    workers = watch.workers or os.cpu_count() or 1
    return RunRequest(
        run_key=batch.run_key(watch.name),
        partition_key=watch.group_id,
        run_config=run_config(request, workers),
        tags={**run_tags(request), TAG_PREFIX + "workers": str(workers), WATCH_TAG: watch.name},
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
    def watch_sensor(context: SensorEvaluationContext, s3: S3Resource):
        source = watch.digest_request().source
        cursor = WatchCursor.read(context.cursor, source)
        files = list_source(watch, s3)
        batches = plan_batches(files, cursor, watch.max_photos_per_run)
        if not batches:
            return SensorResult(skip_reason=f"nothing modified in {source} since the last launch",
                                cursor=cursor.write(source))
        new_group = not context.instance.has_dynamic_partition(digest_groups.name, watch.group_id)
        context.log.info(f"{sum(len(b.files) for b in batches)} new or changed photos in {source}: "
                         f"{len(batches)} digest(s)")
        return SensorResult(
            run_requests=[watch_run_request(watch, batch) for batch in batches],
            cursor=cursor.after(batches, files).write(source),
            dynamic_partitions_requests=[digest_groups.build_add_request([watch.group_id])] if new_group else [],
        )

    return watch_sensor


def digest_payload(context: RunStatusSensorContext, event: str) -> dict:
    """The webhook's JSON: the digest's summary from the event log, and what happened."""
    from facepipe.digests import digest_summary

    run = context.dagster_run
    return {"event": event, **digest_summary(context.instance, run.run_id), "watch": run.tags.get(WATCH_TAG)}


def notify(context: RunStatusSensorContext, config: WatchesConfig, event: str) -> dict:
    """POST the digest's summary to every webhook; a webhook's failure is logged, never raised."""
    from facepipe.notify import post_summary

    try:
        outcomes = post_summary(config.webhook_urls(), digest_payload(context, event), context.log)
    except Exception as err:  # a notification must never fail the sensor, nor block the next runs'
        context.log.error(f"webhooks for run {context.dagster_run.run_id} failed: {err.__class__.__name__}: {err}")
        return {}
    context.log.info(f"webhooks for {event} of run {context.dagster_run.run_id}: {list(outcomes.values())}")
    return outcomes


def build_webhook_sensors(config: WatchesConfig) -> list[SensorDefinition]:
    """On digest success and failure, the summary to each webhook; no webhooks, no sensors."""
    if not config.webhooks:
        return []

    @run_status_sensor(
        name="digest_succeeded_webhooks", run_status=DagsterRunStatus.SUCCESS, monitored_jobs=[digest_job],
        minimum_interval_seconds=WEBHOOK_INTERVAL_SECONDS, default_status=DefaultSensorStatus.RUNNING,
        description="POSTs each completed digest's summary to the webhooks.",
    )
    def digest_succeeded_webhooks(context: RunStatusSensorContext):
        notify(context, config, "digest_completed")

    @run_failure_sensor(
        name="digest_failed_webhooks", monitored_jobs=[digest_job], minimum_interval_seconds=WEBHOOK_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description="POSTs each failed digest's summary, with its errors, to the webhooks.",
    )
    def digest_failed_webhooks(context: RunFailureSensorContext):
        notify(context, config, "digest_failed")

    return [digest_succeeded_webhooks, digest_failed_webhooks]


def build_sensors(config: WatchesConfig) -> list[SensorDefinition]:
    return [build_watch_sensor(watch) for watch in config.watches] + build_webhook_sensors(config)
