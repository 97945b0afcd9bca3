"""The run client: digests and clusterings as Dagster runs on the local instance, from Python.

Launch a digest here (`run_digest`) or on the instance's run queue (`start_digest`), retry and
cancel one, cluster a group (`run_people`). What a run did is read by facepipe/platform/history.py.
"""

import os
import re
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    ReexecutionOptions,
    RunsFilter,
    execute_job,
    reconstructable,
)
from dagster import __version__ as dagster_version
from dagster._cli.workspace.cli_target import get_remote_job_from_remote_repo, get_remote_repository_from_code_location
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, ROOT_RUN_ID_TAG
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_aws.s3 import S3Resource

from facepipe import settings
from facepipe.clients.digests import DigestsClient, LaunchError, OnProgress, Summary
from facepipe.definitions import get_digest_job, get_people_job
from facepipe.defs.digest.jobs import digest_run_config, local_photos
from facepipe.defs.partitions import GROUPS
from facepipe.defs.people.assets import people_run_config
from facepipe.defs.resources import s3_client
from facepipe.domain.request import (
    GROUP_TAG,
    PARTITION_TAG,
    PROFILE_TAG,
    TAG_PREFIX,
    DigestRequest,
    default_workers,
    request_from_config,
    run_tags,
    valid_workers,
)
from facepipe.domain.thumbnails import read_stored_photo
from facepipe.engine.listing import ImageError
from facepipe.engine.profiles import DEFAULT_PROFILE
from facepipe.engine.sources import S3Reader
from facepipe.platform import history
from facepipe.platform.history import DIGEST_JOB, STATUS_NAMES, DigestNotFound, digest_summary
from facepipe.platform.instance import (
    EXECUTOR_HOST_TAG,
    EXECUTOR_PID_TAG,
    INTERNAL_TAG_PREFIX,
    open_instance,
    run_process,
)
from facepipe.platform.worker_check import check_workers
from facepipe.settings import STORE_POOL
from facepipe.store import FaceStore, StoredPoint, open_store_from_settings

# Tags only facepipe reads, under the prefix Dagster keeps out of the UI's run lists; the machine
# and process executing a `facepipe digest` (to cancel it, and for run monitoring: facepipe.platform.instance)
LAUNCH_TAG = INTERNAL_TAG_PREFIX + "launch_id"  # finds a run in storage while it executes
HOST_TAG, PID_TAG = EXECUTOR_HOST_TAG, EXECUTOR_PID_TAG

# The code location's one name: workspace.yaml, `facepipe ui`, `--detach` launches and the UI's
# re-executions must agree on it, or a run launched under one is "not found" under another.
LOCATION_NAME = "facepipe"


def instance_for_digests() -> DagsterInstance:
    """The local Dagster instance in $FACEPIPE_HOME (or $DAGSTER_HOME)."""
    return open_instance()


def workspace_file(instance: DagsterInstance) -> str:
    """A workspace file in the instance's folder naming the code location as workspace.yaml does, for
    `dagster dev` (facepipe ui) and the CodeServer that plans queued runs."""
    path = os.path.join(instance.root_directory, "workspace.yaml")
    with open(path, "w") as f:
        f.write(
            "# Written by facepipe: the code location, named as in the project's workspace.yaml\n"
            f"load_from:\n  - python_module:\n      module_name: facepipe.definitions\n"
            f"      location_name: {LOCATION_NAME}\n"
        )
    return path


def _workers(workers: int | None) -> int:
    return valid_workers(workers or default_workers())


def free_store_slots(instance: DagsterInstance) -> list[str]:
    """Give back the store pool's slots that runs which will never free them still claim, without a
    daemon (its run monitoring does the same, a poll or two later, when one runs): those of runs that
    ended, and those of runs whose process on this machine is gone (marked failed first, as run
    monitoring would). Every digest, retry and cancel of this client calls it first, so a killed or
    canceled digest never leaves the next one waiting for ever. The run ids freed."""
    info = instance.event_log_storage.get_concurrency_info(STORE_POOL)
    holders = {slot.run_id for slot in info.claimed_slots} | {step.run_id for step in info.pending_steps}
    freed = []
    for run_id in sorted(holders):
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            host, pid, alive = run_process(instance, run)
            if alive is not False:  # running, or on another machine: its own business
                continue
            instance.report_run_failed(run, f"the process {pid} that executed it on {host} is gone")
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        freed.append(run_id)
    return freed


def _check_workers(instance: DagsterInstance, run_config: Mapping[str, Any]) -> None:
    """On Celery, refuse before creating a run a digest the workers cannot run (the run asks again)."""
    check_workers(instance.storage_directory(), local_photos(run_config))


def run_digest(
    request: DigestRequest,
    workers: int | None = None,
    instance: DagsterInstance | None = None,
    on_progress: OnProgress | None = None,
) -> dict:
    """Digest now, as a Dagster run executed by this process, and return its summary.

    No daemon is needed: the run executes here (its steps in worker processes), while a watcher
    thread reads its progress from the event log and passes the summary so far to `on_progress`.
    """
    workers = _workers(workers)
    instance = instance or instance_for_digests()
    run_config = digest_run_config(request, workers)
    _check_workers(instance, run_config)
    free_store_slots(instance)
    _add_group(instance, request.group_id)
    return _execute(instance, run_tags(request, workers), on_progress, run_config=run_config)


def retry_digest(run_id: str, instance: DagsterInstance | None = None, on_progress: OnProgress | None = None) -> dict:
    """Re-execute a failed or canceled digest here: chunks that succeeded are not redone."""
    instance = instance or instance_for_digests()
    parent = _retryable(instance, run_id)
    _check_workers(instance, parent.run_config)
    free_store_slots(instance)  # the parent's first: a canceled or killed run may still claim the slot
    summary = _execute(
        instance,
        _retry_tags(parent),
        on_progress,
        run_config=parent.run_config,
        reexecution_options=steps_to_retry(instance, run_id),
    )
    # a retry does not list again: what the listing said is the first run's
    listed = digest_summary(instance, parent.root_run_id or parent.run_id)
    return {**summary, **{key: listed[key] for key in LISTING_FIELDS if summary[key] is None}}


LISTING_FIELDS = ("images_listed", "images_skipped", "images_to_digest", "min_face_size")


def _retryable(instance: DagsterInstance, run_id: str) -> DagsterRun:
    parent = _digest_run(instance, run_id)
    if parent.status not in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        raise ValueError(
            f"digest {run_id} is {STATUS_NAMES[parent.status]}: only failed or canceled digests can be retried"
        )
    return parent


def _retry_tags(parent: DagsterRun) -> dict[str, str]:
    return {key: value for key, value in parent.tags.items() if key.startswith(TAG_PREFIX) or key == PARTITION_TAG}


def start_retry(run_id: str, instance: DagsterInstance, code_server: "CodeServer | None" = None) -> str:
    """Submit a re-execution of a failed or canceled digest to the run queue (the steps retry_digest
    would redo) and return its run id without waiting for it."""
    parent = _retryable(instance, run_id)
    free_store_slots(instance)
    return _submit(instance, DIGEST_JOB, parent.run_config, _retry_tags(parent), parent, code_server)


def start_people(
    group_id: str, profile: str, full: bool, instance: DagsterInstance, code_server: "CodeServer | None" = None
) -> str:
    """Submit a run of the group's people asset to the run queue; its run id."""
    tags = {PARTITION_TAG: group_id, GROUP_TAG: group_id, PROFILE_TAG: profile}
    return _submit(instance, "people_job", people_run_config(profile, full), tags, code_server=code_server)


class CodeServer:
    """facepipe's code location loaded in a Dagster code server, as the daemon and `dagster job
    launch` load it (workspace_file), so that a run created through it knows its code location (the
    daemon launches it, the UI re-executes it). Loading it costs ~3 s (a process that imports the
    definitions), each run planned through it ~10 ms: a process that queues many runs (the HTTP
    service) keeps one open; a command opens one for its one run. Close it to stop the code server."""

    def __init__(self, instance: DagsterInstance):
        self.instance = instance
        self._process: WorkspaceProcessContext | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "CodeServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._process is not None:
                self._process.__exit__(None, None, None)
                self._process = None

    def workspace(self) -> WorkspaceRequestContext:
        """The workspace with the code location loaded; LaunchError (one line) when it cannot be."""
        with self._lock, warnings.catch_warnings():
            # Dagster warns a failed load with its whole traceback; the LaunchError below says it in a line
            warnings.filterwarnings("ignore", "Error loading repository location", UserWarning)
            if self._process is None:
                target = WorkspaceFileTarget(paths=[workspace_file(self.instance)])
                self._process = WorkspaceProcessContext(
                    self.instance, target, version=dagster_version, read_only=False, code_server_log_level="WARNING"
                )
                self._process.__enter__()
            elif self._process.create_request_context().has_code_location_error(LOCATION_NAME):
                self._process.reload_code_location(LOCATION_NAME)  # it failed before (a busy machine?): again
            workspace = self._process.create_request_context()
        if workspace.has_code_location_error(LOCATION_NAME):
            error = workspace.get_code_location_error(LOCATION_NAME)
            raise LaunchError(_launch_failure(error.to_string() if error else "no error recorded"))
        return workspace


def _submit(
    instance: DagsterInstance,
    job_name: str,
    run_config: Mapping[str, Any],
    tags: dict[str, str],
    parent_run: DagsterRun | None = None,
    code_server: CodeServer | None = None,
) -> str:
    """Create a run of `job_name` from the code location (`code_server`, or one loaded for this run)
    and submit it to the run queue; with `parent_run`, a re-execution of the steps steps_to_retry
    selects. Dagster's CLI has no command for a queued re-execution, so this uses the internals
    `dagster job launch` uses (pinned dagster 1.13.27). LaunchError, one line, when it cannot."""
    if code_server is None:
        with CodeServer(instance) as own:
            return _submit(instance, job_name, run_config, tags, parent_run, own)

    step_keys, known_state, root_run_id = None, None, None
    if parent_run is not None:
        options = steps_to_retry(instance, parent_run.run_id)
        if options.step_selection:
            step_keys = list(options.step_selection)
            known_state = KnownExecutionState.build_for_reexecution(instance, parent_run)
        else:  # the listing itself failed: Dagster's from-failure re-execution
            failed_steps, known_state = KnownExecutionState.build_resume_retry_reexecution(instance, parent_run)
            step_keys = list(failed_steps)
        root_run_id = parent_run.root_run_id or parent_run.run_id
        tags = {**tags, PARENT_RUN_ID_TAG: parent_run.run_id, ROOT_RUN_ID_TAG: root_run_id}
    workspace = code_server.workspace()
    try:
        location = workspace.get_code_location(LOCATION_NAME)
        repo = get_remote_repository_from_code_location(location, None)
        remote_job = get_remote_job_from_remote_repo(repo, job_name)
        plan = location.get_execution_plan(
            remote_job, run_config, step_keys_to_execute=step_keys, known_state=known_state, instance=instance
        )
    except DagsterUserCodeUnreachableError as err:  # its code server died or did not answer in time
        code_server.close()  # the next run loads the code location again
        raise LaunchError(_launch_failure(str(err))) from None
    run = instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        resolved_op_selection=None,
        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
        op_selection=None,
        status=None,
        root_run_id=root_run_id,
        parent_run_id=parent_run.run_id if parent_run else None,
        tags={**remote_job.tags, **tags},
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repo.asset_graph,
    )
    instance.submit_run(run.run_id, workspace)
    return run.run_id


def steps_to_retry(instance: DagsterInstance, run_id: str) -> ReexecutionOptions:
    """Every chunk step the parent listed but did not finish (faces, write), and the last store step.

    Dagster's from-failure re-execution retries failed and interrupted steps, but not mapped steps
    that never started (a canceled run leaves those), so we select the steps ourselves. The outputs
    of the chunks that succeeded are loaded from the parent run.
    """
    succeeded = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    if "digest.list_images" not in succeeded:
        return ReexecutionOptions.from_failure(run_id, instance)
    outputs = [
        event.dagster_event
        for event in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT)
        if event.step_key == "digest.list_images" and event.dagster_event
    ]
    chunk_keys = [output.step_output_data.mapping_key for output in outputs if output.step_output_data.mapping_key]
    # each chunk's two steps: its faces, then their write (a chunk written before the stop is not redone)
    chunk_steps = [f"digest.{op}[{key}]" for key in chunk_keys for op in ("extract_faces_in_chunk", "store_chunk")]
    return ReexecutionOptions(
        parent_run_id=run_id,
        step_selection=[step for step in chunk_steps if step not in succeeded] + ["digest.store_faces"],
    )


def _execute(
    instance: DagsterInstance, tags: dict[str, str], on_progress: OnProgress | None, **execute_options: Any
) -> dict:
    # a launch id finds the run in storage while it executes, before execute_job returns its id
    launch_id = str(uuid.uuid4())
    tags = {**tags, LAUNCH_TAG: launch_id, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    stop = threading.Event()

    def watch(report: OnProgress) -> None:
        run_id = None
        while not stop.wait(0.5):
            if run_id is None:
                found = instance.get_run_records(RunsFilter(tags={LAUNCH_TAG: launch_id}), limit=1)
                run_id = found[0].dagster_run.run_id if found else None
            if run_id:
                report(digest_summary(instance, run_id))

    watcher = threading.Thread(target=watch, args=(on_progress,), name="facepipe-progress", daemon=True)
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


def start_digest(
    request: DigestRequest,
    workers: int | None = None,
    instance: DagsterInstance | None = None,
    code_server: CodeServer | None = None,
) -> str:
    """Submit a digest to the instance's run queue and return its run id without waiting for it.

    The queue (max_concurrent_runs in dagster.yaml) starts it when a slot is free; that takes the
    Dagster daemon (`facepipe ui` runs it): check `daemon_is_running` to warn when it is not. The
    run is made from the code location (`code_server`, or one loaded for it), so that the daemon
    launches it and the UI can re-execute it.
    """
    workers = _workers(workers)
    instance = instance or instance_for_digests()
    run_config = digest_run_config(request, workers)
    _check_workers(instance, run_config)
    free_store_slots(instance)
    _add_group(instance, request.group_id)
    try:
        return _submit(instance, DIGEST_JOB, run_config, run_tags(request, workers), code_server=code_server)
    except LaunchError:
        if not instance.get_runs(RunsFilter(tags={PARTITION_TAG: request.group_id}), limit=1):
            instance.delete_dynamic_partition(GROUPS, request.group_id)  # a run never queued leaves no group
        raise


EXCEPTION_LINE = re.compile(r"(?:\w+\.)*(\w+(?:Error|Exception)): (.+)")


def _launch_failure(error: str) -> str:
    """Why the code location could not plan a run, in one line: Dagster's error (the first it names;
    else the last error), without its module, and what to do."""
    errors = [found.groups() for found in EXCEPTION_LINE.finditer(error)]
    dagsters = [found for found in errors if found[0].startswith("Dagster")]
    name, message = (dagsters or errors[-1:] or [("", error.strip()[-300:] or "no error recorded")])[0]
    last = f"{name}: {message.strip()}" if name else message
    if "DEADLINE_EXCEEDED" in error or "timed out" in error:
        timeout = os.environ.get("DAGSTER_GRPC_TIMEOUT_SECONDS", "60")
        last += (
            f" (the code server did not answer within DAGSTER_GRPC_TIMEOUT_SECONDS={timeout}: the machine "
            "is busy; try again, or raise DAGSTER_GRPC_TIMEOUT_SECONDS)"
        )
    return f"the run could not be queued: the code location could not plan it: {last[:1000]}"


def daemon_is_running(instance: DagsterInstance, within_seconds: float = 120) -> bool:
    """Whether a Dagster daemon dequeues this instance's runs (it heartbeats every few seconds)."""
    heartbeat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return heartbeat is not None and time.time() - heartbeat.timestamp < within_seconds


def cancel_digest(instance: DagsterInstance, run_id: str) -> dict:
    """Cancel a queued or running digest. Faces already stored stay; a later digest does the rest."""
    run = _digest_run(instance, run_id)
    if run.is_finished:
        raise ValueError(f"digest {run_id} is already {STATUS_NAMES[run.status]}")
    host, pid, alive = run_process(instance, run)
    if run.remote_job_origin is None and alive:
        # executed by a `facepipe digest` process here, not by a run launcher: record the request,
        # then interrupt it; Dagster stops the steps and, seeing the request, marks the run canceled
        instance.report_run_canceling(run, message="Canceled with facepipe digests cancel")
        try:
            os.kill(cast(int, pid), signal.SIGINT)
            return digest_summary(instance, run_id)
        except ProcessLookupError:  # it ended between the check and the signal
            alive = False
    if alive is False:
        # the process is gone (killed, its `facepipe ui` or machine restarted): nothing will ever
        # end the run but this; marked canceled, so that `facepipe digests retry` finishes it
        executor = "facepipe digest process" if run.remote_job_origin is None else "run process"
        gone = (
            f"the {executor} that executed it (pid {pid}) had ended without finishing it: "
            f"marked canceled; `facepipe digests retry {run_id}` digests the rest"
        )
        instance.report_run_canceled(run, message=f"Canceled with facepipe digests cancel: {gone}")
        free_store_slots(instance)  # what it held, now that it ended
        return {**digest_summary(instance, run_id), "message": gone}
    if run.remote_job_origin is None:  # its tags name another machine: only a signal there stops it
        where = f"on {host} (pid {pid})" if host and pid else "that recorded no host and pid"
        raise ValueError(
            f"digest {run_id} is executed by a process {where}, not by this machine's: "
            f"cancel it there (`facepipe digests cancel {run_id}`), or stop that process"
        )
    if not instance.run_coordinator.cancel_run(run_id):
        raise RuntimeError(f"digest {run_id} could not be canceled")
    return digest_summary(instance, run_id)


def digest_face_ids(summary: dict, limit: int = 100, offset: str | None = None) -> tuple[list[str], str | None]:
    """A page of the ids of the faces a digest stored, and the next page's offset (none before it started)."""
    if not summary["group_id"] or not summary["profile"]:
        return [], None
    with open_store_from_settings() as store:
        return store.face_ids_of_run(summary["group_id"], summary["profile"], summary["run_id"], limit, offset)


def full_run_id(instance: DagsterInstance, run_id: str) -> str:
    """The digest's run id from its first characters (8 are what the progress bar and the UI show),
    if one digest's id starts with them; else the id as given (then "not found" names it)."""
    if len(run_id) >= 36 or len(run_id) < 4:
        return run_id
    found = [i for i in instance.get_run_ids(RunsFilter(job_name=DIGEST_JOB)) if i.startswith(run_id.lower())]
    if len(found) > 1:
        raise DigestNotFound(f"{len(found)} digests have run ids starting {run_id!r}: give more of the id")
    return found[0] if found else run_id


def _digest_run(instance: DagsterInstance, run_id: str) -> DagsterRun:
    run = instance.get_run_by_id(run_id)
    if run is None or run.job_name != DIGEST_JOB:
        raise DigestNotFound(f"no digest with run id {run_id!r}")
    return run


class LocalDigests(DigestsClient):
    """The digests of this machine's instance ($FACEPIPE_HOME): executed by this process, or queued
    for its daemon. A run id may be given by its first characters (full_run_id)."""

    def __init__(self, instance: DagsterInstance | None = None) -> None:
        self.instance = instance or instance_for_digests()
        self.where = self.instance.root_directory

    def start_digest(self, request: DigestRequest, workers: int) -> str:
        return start_digest(request, workers, self.instance)

    def run_digest(self, request: DigestRequest, workers: int, on_progress: OnProgress | None = None) -> Summary:
        # executed here, with no daemon: the steps in this machine's worker processes
        return run_digest(request, workers, self.instance, on_progress)

    def queue_warning(self) -> str | None:
        if daemon_is_running(self.instance):
            return None
        return (
            "no Dagster daemon is running on this instance, so the digest waits in the queue; "
            "start one with `facepipe ui` (webserver and daemon) or `dagster-daemon run`."
        )

    def list_digests(
        self,
        group_id: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
    ) -> list[Summary]:
        return history.list_digests(self.instance, group_id, status, since, until, limit)

    def digest_summary(self, run_id: str) -> Summary:
        return digest_summary(self.instance, full_run_id(self.instance, run_id))

    def cancel_digest(self, run_id: str) -> Summary:
        return cancel_digest(self.instance, full_run_id(self.instance, run_id))

    def retry_digest(self, run_id: str, on_progress: OnProgress | None = None) -> Summary:
        return retry_digest(full_run_id(self.instance, run_id), self.instance, on_progress)


def _add_group(instance: DagsterInstance, group_id: str) -> None:
    if not instance.has_dynamic_partition(GROUPS, group_id):
        instance.add_dynamic_partitions(GROUPS, [group_id])


def adopt_group(instance: DagsterInstance, store: FaceStore, group_id: str, profile: str) -> bool:
    """Whether the group has faces to cluster: a partition of the instance, or faces in the store
    (open) that this instance never saw digested (a store copied or restored, an instance reset,
    digests run elsewhere), whose partition is then added so that its people runs have one."""
    if instance.has_dynamic_partition(GROUPS, group_id):
        return True
    if not store.count_faces(group_id, profile):
        return False
    _add_group(instance, group_id)
    return True


def run_people(
    group_id: str, profile: str = DEFAULT_PROFILE, full: bool = False, instance: DagsterInstance | None = None
) -> dict:
    """Materialise the group's `people` asset as a Dagster run on the local instance; its counts.

    Raises LookupError for a group with no faces, RuntimeError (with the step's message) if the run fails.
    """
    instance = instance or instance_for_digests()
    if not instance.has_dynamic_partition(GROUPS, group_id):
        known = False
        if settings.qdrant_url() or settings.qdrant_path().exists():  # no store made to be asked
            with open_store_from_settings() as store:
                known = adopt_group(instance, store, group_id, profile)
        if not known:
            raise LookupError(f"unknown group {group_id!r}: it has no faces; digest photos into it first")
    # executed by this process: its host and pid let run monitoring tell when it was killed
    tags = {
        PARTITION_TAG: group_id,
        GROUP_TAG: group_id,
        PROFILE_TAG: profile,
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
    }
    with execute_job(
        reconstructable(get_people_job), instance, run_config=people_run_config(profile, full), tags=tags
    ) as result:
        if not result.success:
            failures = [
                e.step_failure_data.error.message.strip()
                for e in result.get_step_failure_events()
                if e.step_failure_data.error
            ]
            raise RuntimeError(failures[0] if failures else f"people run {result.run_id} failed")
        materialization = result.get_asset_materialization_events()[0].step_materialization_data.materialization
        counts = {key: value.value for key, value in materialization.metadata.items()}
        return {**counts, "run_id": result.run_id}


def photo_reader(faces: Iterable[StoredPoint]) -> Callable[[str], tuple[bytes, str]]:
    """How to read the photos of `faces` (store records) as the digests that stored them did: a local
    file, or an S3 object through the endpoint and region of that digest's request (from its run)."""
    instance = instance_for_digests()
    run_of = {face.payload["image_path"]: face.payload.get("run_id") for face in faces}
    readers: dict[str, S3Reader] = {}

    def read(path: str) -> tuple[bytes, str]:
        if not path.startswith("s3://"):
            return read_stored_photo(path)
        run_id = run_of.get(path) or ""
        if run_id not in readers:
            run = instance.get_run_by_id(run_id) if run_id else None
            if run is None:
                raise ImageError(f"no digest run {run_id!r} to read {path} as it did")
            config = cast(dict, run.run_config)["ops"]["digest"]["ops"]["list_images"]["config"]
            readers[run_id] = S3Reader(s3_client(S3Resource(), request_from_config(config, run.tags[PARTITION_TAG])))
        return readers[run_id](path)

    return read
