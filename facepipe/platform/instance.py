"""The Dagster instance facepipe runs on: the dagster.yaml in $DAGSTER_HOME, made from its settings.

What facepipe needs from the instance, and why:
- one store step at a time (pool `facepipe_store`, `concurrency.pools.default_limit: 1`) and one
  run at a time (`concurrency.runs.max_concurrent_runs: 1`): the embedded face store is a folder
  that one process at a time may open. A Qdrant server (QDRANT_URL) has no such lock, so with one
  neither limit is set and Dagster's defaults apply.
- a run queue (QueuedRunCoordinator): `facepipe digest --detach` and the sensors queue their runs.
- run monitoring (RUN_MONITORING): a run whose process died is marked failed, and the pool slot
  it held is freed, instead of staying "processing" and holding the store pool for ever. A code
  server watches the runs it launched only while it lives (a restarted `facepipe ui` has a new
  one), and a `facepipe digest` process executes its run itself, with no launcher at all; so the
  run launcher is RunLauncher below: Dagster's default, which also tells the daemon whether the
  process executing a run lives (`run_process`, which `facepipe digests cancel` asks too).
- with FACEPIPE_POSTGRES_URL, run, event-log and schedule storage in PostgreSQL
  (facepipe/platform/postgres_storage.py); the URL is read from the environment, never written here.

Who owns the file: facepipe writes it when it is missing and, while its first line is MANAGED,
rewrites it whenever those settings change it. A dagster.yaml without that line is the user's:
facepipe adds what it needs and is missing (saying so on stderr, the original kept beside it as
`dagster.yaml.orig`), never changes a value the user set, and refuses a storage section that
contradicts FACEPIPE_POSTGRES_URL.
"""

import fcntl
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from facepipe import settings
from facepipe.domain.request import (
    DIGEST_JOB,
    GROUPS,
    PARTITION_TAG,
    LocalFolder,
    RunRefused,
    is_group_name,
    list_images_config,
    request_of_run,
)

MANAGED = "# Written by facepipe from its settings; rewritten when they change. Delete this line to keep your edits."

# The daemon checks running runs every poll; a run that ended with pool slots still claimed (its
# process was killed before it could free them) has them freed this long after it ended. Neither
# costs more than one query a poll.
RUN_MONITORING = {
    "enabled": True,
    "poll_interval_seconds": 5,  # a run whose process died is failed within about 5 s
    "free_slots_after_run_end_seconds": 10,
    # the default run launcher cannot resume a run in a new worker; any other value is refused by Dagster
    "max_resume_run_attempts": 0,
}

POSTGRES_STORAGE = {
    key: {
        "module": "facepipe.platform.postgres_storage",
        "class": cls,
        "config": {"postgres_url": {"env": "FACEPIPE_POSTGRES_URL"}},
    }
    for key, cls in (
        ("run_storage", "RunStorage"),
        ("event_log_storage", "EventLogStorage"),
        ("schedule_storage", "ScheduleStorage"),
    )
}
STORAGE_KEYS = ("storage", *POSTGRES_STORAGE)


# the dagster.yaml facepipe wrote before it kept the file current: facepipe's own, so it takes it over
PREVIOUS_MANAGED = """\
# Written by facepipe on first use; edit freely, facepipe will not overwrite it.
concurrency:
  pools:
    # the embedded face store admits one process at a time: one store step at a time, across runs
    default_limit: 1
  runs:
    # two digests at once would only fight over the cores and the store
    max_concurrent_runs: 1
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
telemetry:
  enabled: false
"""


# Where a run's process executes, under the prefix Dagster keeps out of the UI's run lists (they
# are facepipe's own business): the host, on every run; the pid, on a run that a `facepipe digest`
# (or people) process executes itself (facepipe/clients/local.py). A run a code server launched reports its
# process's pid in Dagster's own engine event instead (see launched_run_pid).
INTERNAL_TAG_PREFIX = ".dagster/facepipe/"
EXECUTOR_HOST_TAG, EXECUTOR_PID_TAG = INTERNAL_TAG_PREFIX + "host", INTERNAL_TAG_PREFIX + "pid"
STARTED_PROCESS = "Started process for run (pid: "  # the run process's first engine event (dagster/_grpc/impl.py)


def launched_run_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The pid of the process a code server started for a launched run, from its engine event; None
    before it started."""
    records = instance.event_log_storage.get_records_for_run(
        run_id, of_type=DagsterEventType.ENGINE_EVENT, limit=100
    ).records
    for record in reversed(records):  # a resumed run's last process (facepipe resumes none)
        if record.event_log_entry.message.startswith(STARTED_PROCESS):
            return int(record.event_log_entry.message[len(STARTED_PROCESS) :].split(")")[0])
    return None


class RunProcess(NamedTuple):
    """The process executing a run: where, which, and whether it lives (None when this machine cannot
    tell: it executes on another host, or has not started)."""

    host: str | None
    pid: int | None
    alive: bool | None


def run_process(instance: DagsterInstance, run: DagsterRun) -> RunProcess:
    """The process executing `run`, and whether it lives."""
    host = run.tags.get(EXECUTOR_HOST_TAG) or None
    if run.remote_job_origin is None:  # executed by the `facepipe` process that created it
        pid_tag = run.tags.get(EXECUTOR_PID_TAG)
        pid = int(pid_tag) if pid_tag else None
    else:  # launched (it has an origin): a UI re-execution may carry its parent's pid tag, never its own
        pid = launched_run_pid(instance, run.run_id)
    if pid is None or host != socket.gethostname():
        return RunProcess(host, pid, None)
    record = instance.get_run_record_by_id(run.run_id)
    return RunProcess(host, pid, process_alive(pid, started_by=record.start_time if record else None))


def process_alive(pid: int, started_by: float | None = None) -> bool:
    """Whether process `pid` lives: not gone, not a zombie, and, when `started_by` (a run's start, epoch
    seconds) is given, started by then: a process started later has only been given a pid reused
    since (pids wrap around). Without /proc (macOS), whether the pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: /proc tells whether it is the run's
    try:
        with open(f"/proc/{pid}/stat") as f:
            # after "(name)": the state, then ..., the start in clock ticks after boot (field 22)
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except FileNotFoundError:  # gone since the signal
        return False
    except OSError:  # no /proc: trust the signal
        return True
    if fields[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by its parent
        return False
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started_by is None or started <= started_by + 1  # boot time is in whole seconds


class RunLauncher(DefaultRunLauncher):
    """Dagster's default run launcher, which also answers run monitoring's "is its worker alive?".

    The default launcher cannot say (Dagster's run monitoring then only enforces timeouts), and
    leaves it to the code server that launched a run, which marks the run failed when its process
    dies, but only while that code server lives: after `facepipe ui` is stopped and started again,
    no one would. So for any run whose process executes on this host (a `facepipe digest` process,
    or a run process started by a code server here), the answer is whether that process lives.
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def launch_run(self, context: LaunchRunContext) -> None:
        refusal = digest_refusal(context.dagster_run)
        if refusal:
            # at once, in one line: the run's own process would tell the same a minute later, after
            # the run queue and the step's start, followed by a traceback
            self._instance.report_run_failed(context.dagster_run, refusal)
            group = context.dagster_run.tags.get(PARTITION_TAG)
            if group and not is_group_name(group):  # no group can ever be named so
                self._instance.delete_dynamic_partition(GROUPS, group)
            return
        super().launch_run(context)
        # a code server on this machine (dagster dev's, the daemon's own) starts the run's process
        # here: say so, or the process could not be told apart from a pid of another machine
        run_id = context.dagster_run.run_id
        launched = self._instance.get_run_by_id(run_id)
        grpc = json.loads(launched.tags.get(GRPC_INFO_TAG, "{}") if launched else "{}")
        local = "socket" in grpc or grpc.get("host") in ("localhost", "127.0.0.1", "::1", socket.gethostname())
        self._instance.add_run_tags(run_id, {EXECUTOR_HOST_TAG: socket.gethostname() if local else ""})

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        host, pid, alive = run_process(self._instance, run)
        if alive is None:  # a code server elsewhere watches what it launched; nothing else can
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not executing on this host, or not started")
        if not alive:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the process {pid} that executed it on {host} is gone")
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"the process {pid} is running")


def digest_refusal(run: DagsterRun) -> str | None:
    """Why a digest run cannot work, told from its config and partition alone (one line), or None:
    what the Launchpad's config schema cannot tell (a confidence of 1.5, a partition 'a/b', a folder
    that is not there)."""
    if run.job_name != DIGEST_JOB:
        return None
    op_config = list_images_config(run.run_config)
    try:
        request = request_of_run(op_config, run.tags.get(PARTITION_TAG))
    except RunRefused as err:
        return str(err)
    # on Celery the workers read the folder, not this machine: the workers' check tells
    if isinstance(request.source, LocalFolder) and not settings.celery_broker():
        if not os.path.isdir(request.source.path):
            return f"source: cannot list {request.source.path!r}: no such folder on {socket.gethostname()}"
    return None


class InstanceConfigError(RuntimeError):
    """The instance's dagster.yaml contradicts facepipe's settings; the message says what to change."""


def instance_config() -> dict[str, Any]:
    """What facepipe needs in dagster.yaml, from FACEPIPE_POSTGRES_URL and QDRANT_URL."""
    config: dict[str, Any] = {}
    if settings.postgres_url():
        config.update(POSTGRES_STORAGE)
    if settings.qdrant_url() is None:
        config["concurrency"] = {"pools": {"default_limit": 1}, "runs": {"max_concurrent_runs": 1}}
    # the daemon looks at the queue every second (Dagster's default is 5 s): a digest over HTTP is
    # `processing` within about a second of being accepted, as the seed's clients expect
    config["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {"dequeue_interval_seconds": 1},
    }
    config["run_launcher"] = {"module": "facepipe.platform.instance", "class": "RunLauncher"}
    config["run_monitoring"] = dict(RUN_MONITORING)
    config["python_logs"] = {"python_log_level": "INFO"}
    config["telemetry"] = {"enabled": False}
    return config


COMMENTS = {
    "run_storage": "runs, events and schedules in PostgreSQL, at FACEPIPE_POSTGRES_URL (read from the environment)",
    "concurrency": "the embedded face store admits one process at a time: one store step, and one digest, at a time",
    "run_coordinator": "a run queue, looked at every second: `facepipe digest --detach` and the sensors queue runs",
    "run_launcher": "Dagster's default launcher, which also tells run monitoring when the process executing a run died",
    "run_monitoring": "a run whose process died is marked failed, and its store pool slot freed",
    "python_logs": "a terminal shows INFO and above (not each step process's DEBUG start line); "
    "the run's events are all kept whatever the level",
}


def render(config: dict[str, Any]) -> str:
    """facepipe's dagster.yaml: the MANAGED line, then each section under a comment saying why."""
    lines = [MANAGED]
    for key, value in config.items():
        if key in COMMENTS:
            lines.append(f"# {COMMENTS[key]}")
        lines.append(yaml.safe_dump({key: value}, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"


def merge_missing(user: dict[str, Any], ours: dict[str, Any], path: str = "") -> list[str]:
    """Add to `user` each key of `ours` it lacks, keeping every value it has; return what was added."""
    added = []
    for key, value in ours.items():
        here = f"{path}.{key}" if path else key
        if key not in user:
            user[key] = value
            added.append(here)
        elif isinstance(value, dict) and isinstance(user[key], dict):
            added += merge_missing(user[key], value, here)
    return added


def _check_storage(user: dict[str, Any], path: Path) -> None:
    """With FACEPIPE_POSTGRES_URL set, a storage section of the user's other than facepipe's contradicts it."""
    theirs = [key for key in STORAGE_KEYS if key in user and user[key] != POSTGRES_STORAGE.get(key)]
    if theirs:
        raise InstanceConfigError(
            f"{path} sets {', '.join(theirs)}, and FACEPIPE_POSTGRES_URL asks for PostgreSQL storage: "
            f"remove {' and '.join(theirs)} from {path.name} to use FACEPIPE_POSTGRES_URL, "
            "or unset FACEPIPE_POSTGRES_URL"
        )


# What Dagster refuses beside `concurrency.runs` or `concurrency.pools` in the older places runs
# were limited (dagster/_core/instance/config.py, validate_concurrency_config)
RUN_QUEUE_FIELDS = ("max_concurrent_runs", "tag_concurrency_limits", "block_op_concurrency_limited_runs")


def _limits_the_users_way(user: dict[str, Any], ours: dict[str, Any]) -> None:
    """Say facepipe's limits in the form of the user's file, as Dagster documents each (it refuses a
    file that mixes them): runs limited in `run_queue` or the QueuedRunCoordinator's config rule out
    `concurrency.runs` and `.pools`, so the store's limit goes in the older
    `concurrency.default_op_concurrency_limit`; a pool limit of theirs in that key rules out `.pools`."""
    if "run_queue" in user:  # the default coordinator then is the run queue; Dagster refuses both sections
        ours.pop("run_coordinator")
    wanted = ours.get("concurrency")
    if not wanted:
        return
    coordinator = user.get("run_coordinator") or {}
    older_places = [user.get("run_queue") or {}]
    if coordinator.get("class") == "QueuedRunCoordinator":
        older_places.append(coordinator.get("config") or {})
    if any(field in place for place in older_places for field in RUN_QUEUE_FIELDS):
        ours["concurrency"] = {"default_op_concurrency_limit": wanted["pools"]["default_limit"]}
    elif "default_op_concurrency_limit" in (user.get("concurrency") or {}):  # their pool limit, the older key
        wanted.pop("pools")


def _write(path: Path, text: str) -> None:
    """Replace the file at once: a facepipe command starting meanwhile reads the old or the new, never half."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


def prepare_dagster_home() -> Path:
    """Point DAGSTER_HOME at facepipe's instance folder, with a dagster.yaml that has what facepipe needs."""
    if settings.postgres_url() and importlib.util.find_spec("dagster_postgres") is None:
        raise InstanceConfigError(
            'FACEPIPE_POSTGRES_URL is set, but dagster-postgres is not installed: pip install "facepipe[postgres]"'
        )
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    ours = instance_config()
    text = path.read_text() if path.exists() else None
    if text is None or text.startswith(MANAGED) or text == PREVIOUS_MANAGED:
        if text != render(ours):
            _write(path, render(ours))
    else:
        user = yaml.safe_load(text) or {}
        if settings.postgres_url():
            _check_storage(user, path)
        _limits_the_users_way(user, ours)
        ours.pop("telemetry")  # facepipe's choice for its own file, not a need
        added = merge_missing(user, ours)
        if added:
            path.with_name(path.name + ".orig").write_text(text)
            _write(
                path,
                f"# facepipe added {', '.join(added)} (your file as it was: {path.name}.orig)\n"
                + yaml.safe_dump(user, sort_keys=False),
            )
            print(f"facepipe: added to {path} what facepipe needs and it lacked: {', '.join(added)}", file=sys.stderr)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def open_instance() -> DagsterInstance:
    """The instance in $FACEPIPE_HOME (or $DAGSTER_HOME), its dagster.yaml prepared, opened by one
    facepipe process at a time: the first to open a new home creates its storage's tables and stamps
    their schema version, and two doing it at once (two `facepipe digest` started together) collide
    ("table run_tags already exists", a duplicate alembic version) and leave a home no command opens."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".facepipe-open.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed, or when the process dies
        prepare_dagster_home()
        return DagsterInstance.get()
