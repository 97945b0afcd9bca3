"""Digests as Dagster runs, from Python: launch one, and read what it did from the event log.

Everything here reads the Dagster instance (run storage and event log), never a side store, so a
digest's status and counts survive restarts and are the ones the Dagster UI shows.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    ReexecutionOptions,
    RunsFilter,
    execute_job,
    reconstructable,
)

from facepipe.defs.config import DigestConfig
from facepipe.defs.partitions import digest_groups
from facepipe.engine.presets import DEFAULT_PRESET
from facepipe.engine.profiles import DEFAULT_PROFILE
from facepipe.instance import prepare_dagster_home

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
                   redigest: bool = False, chunk_size: int = 200, on_this_machine: bool = True,
                   s3_endpoint_url: str | None = None, s3_region: str | None = None,
                   preset: str = DEFAULT_PRESET, min_face_size: int | None = None) -> DigestConfig:
    """A validated digest request; raises pydantic's ValidationError naming the bad field.

    `path` is a folder or `s3://bucket/prefix`. A folder on this machine is resolved to its one
    canonical path (it is part of each photo's identity); one on a remote server is passed as it is.
    """
    from facepipe.engine.sources import parse_s3_url

    if path.startswith("s3://"):
        bucket, prefix = parse_s3_url(path)
        source = {"s3_bucket": bucket, "s3_prefix": prefix, "s3_endpoint_url": s3_endpoint_url, "s3_region": s3_region}
    else:
        source = {"local_dir_path": str(Path(path).resolve()) if on_this_machine else path}
    return DigestConfig(
        group_id=group_id, confidence=confidence, profile=profile, redigest=redigest, chunk_size=chunk_size,
        preset=preset, min_face_size=min_face_size, **source
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
    prepare_dagster_home()
    return DagsterInstance.get()


def run_digest(request: DigestConfig, workers: int | None = None, instance: DagsterInstance | None = None,
               on_progress: Callable[[dict], None] | None = None) -> dict:
    """Digest now, as a Dagster run executed by this process, and return its summary.

    No daemon is needed: the run executes here (its steps in worker processes), while a watcher
    thread reads its progress from the event log and passes the summary so far to `on_progress`.
    """
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    instance = instance or instance_for_digests()
    _add_group(instance, request.group_id)
    tags = {**run_tags(request), TAG_PREFIX + "workers": str(workers)}
    return _execute(instance, tags, on_progress, run_config=run_config(request, workers))


def retry_digest(run_id: str, instance: DagsterInstance | None = None,
                 on_progress: Callable[[dict], None] | None = None) -> dict:
    """Re-execute a failed or canceled digest: chunks that succeeded are not redone."""
    instance = instance or instance_for_digests()
    parent = _digest_run(instance, run_id)
    if parent.status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        raise ValueError(f"digest {run_id} is {STATUS_NAMES[parent.status]}: only failed or canceled digests can be retried")
    tags = {key: value for key, value in parent.tags.items() if key.startswith(TAG_PREFIX) or key == "dagster/partition"}
    return _execute(instance, tags, on_progress, run_config=parent.run_config,
                    reexecution_options=_steps_to_retry(instance, run_id))


def _steps_to_retry(instance: DagsterInstance, run_id: str) -> ReexecutionOptions:
    """Every chunk step the parent listed but did not finish (faces, write), and the last store step.

    Dagster's from-failure re-execution retries failed and interrupted steps, but not mapped steps
    that never started (a canceled run leaves those), so we select the steps ourselves. The outputs
    of the chunks that succeeded are loaded from the parent run.
    """
    succeeded = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    if "digest.list_images" not in succeeded:
        return ReexecutionOptions.from_failure(run_id, instance)
    chunk_keys = [
        event.dagster_event.step_output_data.mapping_key
        for event in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT)
        if event.step_key == "digest.list_images" and event.dagster_event.step_output_data.mapping_key
    ]
    # each chunk's two steps: its faces, then their write (a chunk written before the stop is not redone)
    chunk_steps = [f"digest.{op}[{key}]" for key in chunk_keys for op in ("extract_faces_in_chunk", "store_chunk")]
    return ReexecutionOptions(
        parent_run_id=run_id,
        step_selection=[step for step in chunk_steps if step not in succeeded] + ["digest.store_faces"],
    )


def _execute(instance: DagsterInstance, tags: dict, on_progress, **execute_options) -> dict:
    from facepipe.definitions import get_digest_job

    # a launch id finds the run in storage while it executes, before execute_job returns its id
    launch_id = str(uuid.uuid4())
    tags = {**tags, TAG_PREFIX + "launch_id": launch_id, TAG_PREFIX + "host": socket.gethostname(),
            TAG_PREFIX + "pid": str(os.getpid())}
    stop = threading.Event()

    def watch():
        run_id = None
        while not stop.wait(0.5):
            if run_id is None:
                found = instance.get_run_records(RunsFilter(tags={TAG_PREFIX + "launch_id": launch_id}), limit=1)
                run_id = found[0].dagster_run.run_id if found else None
            if run_id:
                on_progress(digest_summary(instance, run_id))

    watcher = threading.Thread(target=watch, name="facepipe-progress", daemon=True)
    if on_progress:
        watcher.start()
    try:
        # in the main thread, so that Dagster's own interrupt handling cancels the run cleanly
        with execute_job(reconstructable(get_digest_job), instance, tags=tags, **execute_options) as result:
            run_id = result.run_id
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
    summary = digest_summary(instance, run_id)
    if on_progress:
        on_progress(summary)
    return summary


def start_digest(request: DigestConfig, workers: int | None = None, instance: DagsterInstance | None = None) -> str:
    """Submit a digest to the instance's run queue and return its run id without waiting for it.

    The queue (max_concurrent_runs in dagster.yaml) starts it when a slot is free; that takes the
    Dagster daemon (`facepipe ui` runs it): check `daemon_is_running` to warn when it is not.
    Submission goes through `dagster job launch`, so the run knows its code location and can be
    re-executed from the UI.
    """
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    instance = instance or instance_for_digests()
    _add_group(instance, request.group_id)
    run_id = str(uuid.uuid4())
    tags = {**run_tags(request), TAG_PREFIX + "workers": str(workers)}
    command = [
        sys.executable, "-m", "dagster", "job", "launch", "-m", "facepipe.definitions", "-j", "digest_job",
        "--run-id", run_id, "--tags", json.dumps(tags), "--config-json", json.dumps(run_config(request, workers)),
    ]
    env = {**os.environ, "DAGSTER_HOME": instance.root_directory}
    launched = subprocess.run(command, env=env, capture_output=True, text=True)
    if launched.returncode != 0 or instance.get_run_by_id(run_id) is None:
        raise RuntimeError(f"dagster job launch failed:\n{launched.stderr[-3000:]}")
    return run_id


def daemon_is_running(instance: DagsterInstance, within_seconds: float = 120) -> bool:
    """Whether a Dagster daemon dequeues this instance's runs (it heartbeats every few seconds)."""
    heartbeat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return heartbeat is not None and time.time() - heartbeat.timestamp < within_seconds


def list_digests(instance: DagsterInstance, group_id: str | None = None, status: str | None = None,
                 since: datetime | None = None, until: datetime | None = None, limit: int = 20) -> list[dict]:
    """Digests, newest first, filtered by group, status and creation time."""
    tags = {TAG_PREFIX + "group_id": group_id} if group_id else {}
    statuses = None
    if status:
        statuses = [s for s, name in STATUS_NAMES.items() if name == status]
        if not statuses:
            raise ValueError(f"status must be one of {sorted(set(STATUS_NAMES.values()))}, not {status!r}")
    records = instance.get_run_records(
        RunsFilter(job_name="digest_job", tags=tags, statuses=statuses, created_after=since, created_before=until),
        limit=limit,
    )
    return [digest_summary(instance, record.dagster_run.run_id) for record in records]


def cancel_digest(instance: DagsterInstance, run_id: str) -> dict:
    """Cancel a queued or running digest. Faces already stored stay; a later digest does the rest."""
    run = _digest_run(instance, run_id)
    if run.is_finished:
        raise ValueError(f"digest {run_id} is already {STATUS_NAMES[run.status]}")
    executor_pid = run.tags.get(TAG_PREFIX + "pid")
    if run.remote_job_origin is None and executor_pid and run.tags.get(TAG_PREFIX + "host") == socket.gethostname():
        # executed by a `facepipe digest` process, not by a run launcher: record the request, then
        # interrupt it; Dagster stops the steps and, seeing the request, marks the run canceled
        instance.report_run_canceling(run, message="Canceled with facepipe digests cancel")
        os.kill(int(executor_pid), signal.SIGINT)
    elif not instance.run_coordinator.cancel_run(run_id):
        raise RuntimeError(f"digest {run_id} could not be canceled")
    return digest_summary(instance, run_id)


def digest_face_ids(summary: dict, limit: int = 100, offset: str | None = None) -> tuple[list[str], str | None]:
    """A page of the ids of the faces a digest stored, from Qdrant by run id, and the next page's offset."""
    from facepipe.store import faces_collection, group_filter, open_store_from_settings

    run_filter = group_filter(summary["group_id"], run_id=summary["run_id"])
    with open_store_from_settings() as store:
        points, next_offset = store.scroll_page(faces_collection(summary["profile"]), run_filter, limit, offset,
                                                with_payload=False)
    return [str(p.id) for p in points], (str(next_offset) if next_offset is not None else None)


def _digest_run(instance: DagsterInstance, run_id: str):
    run = instance.get_run_by_id(run_id)
    if run is None or run.job_name != "digest_job":
        raise DigestNotFound(f"no digest with run id {run_id!r}")
    return run


def _add_group(instance: DagsterInstance, group_id: str) -> None:
    if not instance.has_dynamic_partition(digest_groups.name, group_id):
        instance.add_dynamic_partitions(digest_groups.name, [group_id])


def _metadata_values(entry) -> dict:
    return {key: value.value for key, value in entry.metadata.items()}


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds") if timestamp else None


def digest_summary(instance: DagsterInstance, run_id: str) -> dict:
    """A digest's status, progress, counts and errors, all read from Dagster's run storage and event log."""
    record = instance.get_run_record_by_id(run_id)
    if record is None or record.dagster_run.job_name != "digest_job":
        raise DigestNotFound(f"no digest with run id {run_id!r}")
    materialized, observations, errors = {}, [], []
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
            observations.append(_metadata_values(event.asset_observation_data.asset_observation))
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            failure = event.step_failure_data
            if failure.user_failure_data and failure.user_failure_data.description:
                reason = failure.user_failure_data.description
            else:  # the user's exception is the cause of Dagster's wrapper
                reason = (failure.error.cause or failure.error).message
            errors.append(f"{event.step_key}: {reason.strip()}")
        else:
            errors.append(event_record.event_log_entry.message or event.message or "")
    run = record.dagster_run
    return summarise(run_id, run.status, run.tags, record.start_time, record.end_time,
                     materialized, observations, errors)


def summarise(run_id: str, status: DagsterRunStatus, tags: dict, start_time: float | None, end_time: float | None,
              materialized: dict[str, dict], observations: list[dict], errors: list[str]) -> dict:
    """The seed's digest fields, from a run's status, tags, times and asset events (local or remote)."""
    observed = {key: sum(o.get(key, 0) for o in observations)
                for key in ("images_done", "images_failed", "faces_detected", "faces_dropped", "faces_too_small")}
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
        "group_id": tags.get(TAG_PREFIX + "group_id"),
        "source": tags.get(TAG_PREFIX + "source"),
        "profile": tags.get(TAG_PREFIX + "profile"),
        "workers": int(tags[TAG_PREFIX + "workers"]) if TAG_PREFIX + "workers" in tags else None,
        "progress_percent": progress,
        "images_listed": listing.get("images_listed"),
        "entries_not_listed": listing.get("entries_not_listed", 0),
        "images_skipped": listing.get("images_skipped"),
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
