"""A digest's status, progress, counts and errors, read from Dagster's run storage and event log.

Never from a side store: a digest's status and counts survive restarts and are the ones the Dagster
UI shows. `summarise` turns a run's events into the seed service's digest fields, for the local
instance (`digest_summary`) and a remote webserver (facepipe/clients/remote.py) alike. A finished run's
summary is kept in its run tags (SUMMARY_TAG), so that listing a page of runs reads the page only.
"""

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from dagster import (
    AssetMaterialization,
    AssetObservation,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRecord,
    RunsFilter,
)
from dagster._utils.error import SerializableErrorInfo

from facepipe.domain.request import (
    CONFIDENCE_TAG,
    DIGEST_JOB,
    GROUP_TAG,
    PARTITION_TAG,
    PROFILE_TAG,
    SOURCE_TAG,
    WORKERS_TAG,
)

STATUS_NAMES = {
    DagsterRunStatus.QUEUED: "queued",
    DagsterRunStatus.NOT_STARTED: "queued",
    DagsterRunStatus.STARTING: "processing",  # dequeued: its process is starting
    DagsterRunStatus.STARTED: "processing",
    DagsterRunStatus.SUCCESS: "completed",
    DagsterRunStatus.FAILURE: "failed",
    DagsterRunStatus.CANCELING: "canceled",
    DagsterRunStatus.CANCELED: "canceled",
}


JOB_PREFIX = "digest-"  # a job id, as the seed's clients know a digest: `digest-{run id}`


def job_id_of(run_id: str) -> str:
    return f"{JOB_PREFIX}{run_id}"


def run_id_of(job_id: str) -> str:
    """The run id of a job id: `digest-{run id}` as answered, or the bare run id."""
    return job_id.removeprefix(JOB_PREFIX)


def seed_fields(summary: dict) -> dict:
    """A digest summary's fields by the seed service's names (its HTTP job, `digests list --json`)."""
    return {
        "job_id": job_id_of(summary["run_id"]),
        "status": summary["status"],
        "progress": summary["progress_percent"],
        "group_id": summary["group_id"],
        "source": summary["source"],
        "confidence": summary["confidence"],
        "threads": summary["workers"],
        "images_total": summary["images_listed"],
        "images_processed": (summary["images_skipped"] or 0) + summary["images_done"],
        "images_failed": summary["images_failed"],
        "faces_processed": summary["faces_detected"],
        "total_faces": summary["faces_stored"],
        "start_time": summary["start_time"],
        "end_time": summary["end_time"],
        "error": "; ".join(summary["errors"]) or None,
    }


class DigestNotFound(LookupError):
    pass


# A finished digest's summary, kept in its run's tags the first time it is read, so that a page of
# the history is one query of the run storage (SQLite or PostgreSQL), not one read of each run's
# event log. Written only once the run has finished: nothing it is made of changes after. A summary
# too large for a tag (a digest with thousands of failed photos) is read from the events each time.
SUMMARY_TAG = "facepipe/summary"
SUMMARY_VERSION = 1
SUMMARY_TAG_MAX_CHARS = 64_000


def group_tags(group_id: str | None) -> dict[str, str]:
    """The run tags that select a group's digests, here and on a remote webserver: its partition,
    which every digest has from its launch, however it was launched (the Launchpad adds no tag of
    ours, and facepipe's own GROUP_TAG is added when the run starts, so a queued run, or one its
    launcher refused, has none)."""
    return {PARTITION_TAG: group_id} if group_id else {}


def statuses_named(status: str | None) -> list[DagsterRunStatus] | None:
    """The run statuses a digest status names (`queued` is three of Dagster's); None for any."""
    if not status:
        return None
    statuses = [s for s, name in STATUS_NAMES.items() if name == status]
    if not statuses:
        raise ValueError(f"status must be one of {sorted(set(STATUS_NAMES.values()))}, not {status!r}")
    return statuses


def _runs_filter(
    group_id: str | None, status: str | None, since: datetime | None, until: datetime | None
) -> RunsFilter:
    return RunsFilter(
        job_name=DIGEST_JOB,
        tags=group_tags(group_id),
        statuses=statuses_named(status),
        created_after=since,
        created_before=until,
    )


def digest_runs(
    instance: DagsterInstance,
    group_id: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 20,
) -> list[tuple[dict, DagsterRun]]:
    """Digests, newest first, filtered by group, status and creation time: each summary with its run."""
    records = instance.get_run_records(_runs_filter(group_id, status, since, until), limit=limit)
    return [(_summary_of(instance, record), record.dagster_run) for record in records]


def list_digests(
    instance: DagsterInstance,
    group_id: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 20,
) -> list[dict]:
    """Digests, newest first, filtered by group, status and creation time."""
    return [summary for summary, _ in digest_runs(instance, group_id, status, since, until, limit)]


def count_digests(
    instance: DagsterInstance,
    group_id: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """How many digests the history holds for the filter (one count query)."""
    return instance.get_runs_count(_runs_filter(group_id, status, since, until))


def _metadata_values(entry: AssetMaterialization | AssetObservation) -> dict:
    return {key: value.value for key, value in entry.metadata.items()}


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds") if timestamp else None


def digest_summary(instance: DagsterInstance, run_id: str) -> dict:
    """A digest's status, progress, counts and errors, all read from Dagster's run storage and event log."""
    record = instance.get_run_record_by_id(run_id)
    if record is None or record.dagster_run.job_name != DIGEST_JOB:
        raise DigestNotFound(f"no digest with run id {run_id!r}")
    return _summary_of(instance, record)


def _summary_of(instance: DagsterInstance, record: RunRecord) -> dict:
    """The run's summary: from its SUMMARY_TAG when it has one, else from its events (then kept in
    the tag if the run has finished)."""
    run = record.dagster_run
    parts = kept_summary_parts(run.run_id, run.tags)
    if parts is None:
        parts = {"version": SUMMARY_VERSION, "run_id": run.run_id, **_from_events(instance, run.run_id)}
        text = json.dumps(parts, separators=(",", ":"))
        if run.is_finished and len(text) <= SUMMARY_TAG_MAX_CHARS:
            instance.add_run_tags(run.run_id, {SUMMARY_TAG: text})
    return summarise(
        run.run_id,
        run.status,
        dict(run.tags),
        record.start_time,
        record.end_time,
        parts["materialized"],
        parts["observations"],
        parts["errors"],
    )


def kept_summary_parts(run_id: str, tags: Mapping[str, str]) -> dict | None:
    """What summarise needs of the run's events, as its SUMMARY_TAG keeps it; None without one.
    A re-execution copies its parent's tags: a summary is the run's own only with its run id."""
    kept = tags.get(SUMMARY_TAG)
    parts = json.loads(kept) if kept else None
    if not parts or (parts.get("version"), parts.get("run_id")) != (SUMMARY_VERSION, run_id):
        return None
    return parts


def _from_events(instance: DagsterInstance, run_id: str) -> dict:
    """What a summary needs of a run's events: its materializations' metadata, its observations
    (summed into one, as summarise reads them), its errors."""
    materialized: dict[str, dict] = {}
    observations: list[dict] = []
    errors: list[str] = []
    events = instance.get_records_for_run(
        run_id,
        of_type={
            DagsterEventType.ASSET_MATERIALIZATION,
            DagsterEventType.ASSET_OBSERVATION,
            DagsterEventType.STEP_FAILURE,
            DagsterEventType.RUN_FAILURE,
        },
    ).records
    for event_record in events:
        event = event_record.event_log_entry.dagster_event
        assert event is not None  # the records asked for are all Dagster events
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            materialized[materialization.asset_key.to_user_string()] = _metadata_values(materialization)
        elif event.event_type == DagsterEventType.ASSET_OBSERVATION:
            observations.append(_metadata_values(event.asset_observation_data.asset_observation))
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            failure = event.step_failure_data
            if failure.user_failure_data and failure.user_failure_data.description:
                reason = failure.user_failure_data.description
            elif failure.error:  # the user's exception is the cause of Dagster's wrapper
                reason = _without_class(failure.error.cause or failure.error)
            else:
                reason = "failed"
            errors.append(f"{event.step_key}: {reason.strip()}")
        else:  # the run's failure: the error that failed it before any step (a check), else Dagster's words
            error = event.job_failure_data.error if event.job_failure_data else None
            dagsters_words = event_record.event_log_entry.message or event.message or ""
            errors.append(_without_class(error) if error else dagsters_words)
    return {
        "materialized": materialized,
        "observations": [_observed(observations)] if observations else [],
        "errors": errors,
    }


def _observed(observations: list[dict]) -> dict:
    """The chunks' observations as one: what summarise reads of them, summed."""
    keys = ("images_done", "images_failed", "faces_detected", "faces_dropped", "faces_too_small")
    return {
        **{key: sum(o.get(key, 0) for o in observations) for key in keys},
        "failed_images": [e for o in observations for e in o.get("failed_images", [])],
    }


def _without_class(error: SerializableErrorInfo) -> str:
    """An exception's message without the `module.ClassName: ` Dagster's error info starts with."""
    text = error.message.strip()
    prefix, colon, rest = text.partition(": ")
    return rest if colon and error.cls_name and prefix.endswith(error.cls_name) else text


def summarise(
    run_id: str,
    status: DagsterRunStatus,
    tags: dict,
    start_time: float | None,
    end_time: float | None,
    materialized: dict[str, dict],
    observations: list[dict],
    errors: list[str],
) -> dict:
    """The seed's digest fields, from a run's status, tags, times and asset events (local or remote)."""
    observed = {
        key: sum(o.get(key, 0) for o in observations)
        for key in ("images_done", "images_failed", "faces_detected", "faces_dropped", "faces_too_small")
    }
    faces = materialized.get("faces", observed)
    # a retry does not list again: its `faces` materialization repeats the listing's counts
    listing = materialized.get("image_list", faces)
    stored = materialized.get("stored_faces", {})
    to_digest = listing.get("images_to_digest")
    done = faces.get("images_done", 0)
    if status == DagsterRunStatus.SUCCESS:
        progress = 100.0
    else:
        progress = round(100.0 * done / to_digest, 1) if to_digest else 0.0
    end = end_time or (time.time() if start_time else None)
    return {
        "run_id": run_id,
        "status": STATUS_NAMES.get(status, status.value.lower()),
        # the digest tags its run when it starts; the partition is there from the launch
        "group_id": tags.get(GROUP_TAG) or tags.get(PARTITION_TAG),
        "source": tags.get(SOURCE_TAG),
        "profile": tags.get(PROFILE_TAG),
        "workers": int(tags[WORKERS_TAG]) if WORKERS_TAG in tags else None,
        "confidence": float(tags[CONFIDENCE_TAG]) if CONFIDENCE_TAG in tags else None,
        "progress_percent": progress,
        "images_listed": listing.get("images_listed"),
        "entries_not_listed": listing.get("entries_not_listed", 0),
        "images_skipped": listing.get("images_skipped"),
        "images_with_faces_lost": listing.get("images_with_faces_lost", 0),
        "images_to_digest": to_digest,
        "images_done": done,
        "images_failed": faces.get("images_failed", 0),
        "faces_detected": faces.get("faces_detected", 0),
        "faces_dropped": faces.get("faces_dropped", 0),
        "faces_too_small": faces.get("faces_too_small", 0),
        "min_face_size": listing.get("min_face_size"),
        "faces_stored": stored.get("faces_stored", 0),
        "faces_in_group": stored.get("faces_in_group"),
        "start_time": _iso(start_time),
        "end_time": _iso(end_time),
        "duration_seconds": round(end - start_time, 2) if start_time and end else None,
        "failed_images": faces.get("failed_images", [e for o in observations for e in o.get("failed_images", [])]),
        "not_listed": listing.get("not_listed", []),
        "errors": errors,
    }
