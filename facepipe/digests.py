"""Digests as Dagster runs, from Python: launch one, and read what it did from the event log.

Everything here reads the Dagster instance (run storage and event log), never a side store, so a
digest's status and counts survive restarts and are the ones the Dagster UI shows.
"""

import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter, execute_job, reconstructable

from facepipe import settings
from facepipe.defs.config import DigestConfig
from facepipe.defs.partitions import digest_groups
from facepipe.engine.profiles import DEFAULT_PROFILE

TAG_PREFIX = "facepipe/"
STATUS_NAMES = {
    DagsterRunStatus.QUEUED: "queued", DagsterRunStatus.NOT_STARTED: "queued",
    DagsterRunStatus.STARTING: "queued", DagsterRunStatus.STARTED: "processing",
    DagsterRunStatus.SUCCESS: "completed", DagsterRunStatus.FAILURE: "failed",
    DagsterRunStatus.CANCELING: "canceled", DagsterRunStatus.CANCELED: "canceled",
}


class DigestNotFound(LookupError):
    pass


def digest_request(path: str, group_id: str, confidence: float = 0.5, profile: str = DEFAULT_PROFILE,
                   redigest: bool = False, chunk_size: int = 200) -> DigestConfig:
    """A validated digest request; raises pydantic's ValidationError naming the bad field."""
    return DigestConfig(
        group_id=group_id, local_dir_path=str(Path(path).absolute()), confidence=confidence,
        profile=profile, redigest=redigest, chunk_size=chunk_size,
    )


def run_config(request: DigestConfig, workers: int) -> dict:
    return {
        "ops": {"digest": {"ops": {"list_images": {"config": request.model_dump()}}}},
        "execution": {"config": {"workers": workers}},
        # the event log keeps every event; the console only needs to hear of trouble
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }


def run_tags(request: DigestConfig) -> dict[str, str]:
    return {
        "dagster/partition": request.group_id,
        TAG_PREFIX + "group_id": request.group_id,
        TAG_PREFIX + "source": request.source,
        TAG_PREFIX + "profile": request.profile,
    }


def instance_for_digests() -> DagsterInstance:
    """The local Dagster instance in $FACEPIPE_HOME (or $DAGSTER_HOME)."""
    settings.prepare_dagster_home()
    return DagsterInstance.get()


def run_digest(request: DigestConfig, workers: int | None = None, instance: DagsterInstance | None = None,
               on_progress: Callable[[dict], None] | None = None, poll_seconds: float = 0.5) -> dict:
    """Digest now, as a Dagster run on the instance, and return its summary.

    The run executes in this process (its steps in worker processes); a watcher reads its progress
    from the event log meanwhile and passes the summary so far to `on_progress`.
    """
    from facepipe.definitions import get_digest_job

    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    instance = instance or instance_for_digests()
    if not instance.has_dynamic_partition(digest_groups.name, request.group_id):
        instance.add_dynamic_partitions(digest_groups.name, [request.group_id])

    launch_id = str(uuid.uuid4())
    tags = {**run_tags(request), TAG_PREFIX + "launch_id": launch_id, TAG_PREFIX + "workers": str(workers)}
    outcome = {}

    def execute():
        try:
            with execute_job(reconstructable(get_digest_job), instance, run_config=run_config(request, workers),
                             tags=tags) as result:
                outcome["run_id"] = result.run_id
        except BaseException as err:  # reported by the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=execute, name="facepipe-digest", daemon=True)
    thread.start()
    run_id = None
    while thread.is_alive():
        thread.join(poll_seconds)
        if on_progress is None:
            continue
        if run_id is None:
            records = instance.get_run_records(RunsFilter(tags={TAG_PREFIX + "launch_id": launch_id}), limit=1)
            run_id = records[0].dagster_run.run_id if records else None
        if run_id:
            on_progress(digest_summary(instance, run_id))
    if "error" in outcome:
        raise outcome["error"]
    summary = digest_summary(instance, outcome["run_id"])
    if on_progress:
        on_progress(summary)
    return summary


def _metadata_values(entry) -> dict:
    return {key: value.value for key, value in entry.metadata.items()}


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds") if timestamp else None


def digest_summary(instance: DagsterInstance, run_id: str) -> dict:
    """A digest's status, progress, counts and errors, all read from Dagster's run storage and event log."""
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        raise DigestNotFound(f"no digest with run id {run_id!r}")
    run = record.dagster_run
    tags = run.tags

    materialized: dict[str, dict] = {}
    observed = {"images_done": 0, "images_failed": 0, "faces_detected": 0, "faces_dropped": 0}
    image_errors: list[dict] = []
    run_errors: list[str] = []
    events = instance.get_records_for_run(
        run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION,
                         DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE},
    ).records
    for event_record in events:
        event = event_record.event_log_entry.dagster_event
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            materialized[materialization.asset_key.to_user_string()] = _metadata_values(materialization)
        elif event.event_type == DagsterEventType.ASSET_OBSERVATION:
            values = _metadata_values(event.asset_observation_data.asset_observation)
            for key in observed:
                observed[key] += values.get(key, 0)
            image_errors += values.get("failed_images", [])
        else:
            run_errors.append(event_record.event_log_entry.message or event.message or "")

    listing = materialized.get("image_list", {})
    faces = materialized.get("faces", observed)
    stored = materialized.get("stored_faces", {})
    to_digest = listing.get("images_to_digest")
    done = faces.get("images_done", 0)
    if run.status == DagsterRunStatus.SUCCESS:
        progress = 100.0
    else:
        progress = round(100.0 * done / to_digest, 1) if to_digest else 0.0
    end = record.end_time or (time.time() if record.start_time else None)
    return {
        "run_id": run_id,
        "status": STATUS_NAMES.get(run.status, run.status.value.lower()),
        "group_id": tags.get(TAG_PREFIX + "group_id"),
        "source": tags.get(TAG_PREFIX + "source"),
        "profile": tags.get(TAG_PREFIX + "profile"),
        "workers": int(tags[TAG_PREFIX + "workers"]) if TAG_PREFIX + "workers" in tags else None,
        "progress_percent": progress,
        "images_listed": listing.get("images_listed"),
        "images_skipped": listing.get("images_skipped"),
        "images_to_digest": to_digest,
        "images_done": done,
        "images_failed": faces.get("images_failed", 0),
        "faces_detected": faces.get("faces_detected", 0),
        "faces_dropped": faces.get("faces_dropped", 0),
        "faces_stored": stored.get("faces_stored", 0),
        "faces_in_group": stored.get("faces_in_group"),
        "start_time": _iso(record.start_time),
        "end_time": _iso(record.end_time),
        "duration_seconds": round(end - record.start_time, 2) if record.start_time and end else None,
        "failed_images": faces.get("failed_images", image_errors),
        "errors": run_errors,
    }
