"""The instance's dagster.yaml: what facepipe needs in it, kept current in facepipe's own file,
merged into a user's file without changing a value the user set, and read by Dagster as meant."""

import subprocess
from types import SimpleNamespace

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.launcher import WorkerStatus

from facepipe.platform.instance import (
    EXECUTOR_HOST_TAG,
    EXECUTOR_PID_TAG,
    PREVIOUS_MANAGED,
    InstanceConfigError,
    RunLauncher,
    prepare_dagster_home,
    process_alive,
)
from facepipe.platform.postgres_storage import psycopg2_url


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_HOME", str(tmp_path))
    for name in ("DAGSTER_HOME", "QDRANT_URL", "FACEPIPE_POSTGRES_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "dagster"


def loaded(dagster_home):
    return DagsterInstance.from_config(str(dagster_home))


def test_facepipes_file_limits_the_embedded_store_and_monitors_runs(home):
    prepare_dagster_home()
    with loaded(home) as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs == 1
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert isinstance(instance.run_launcher, RunLauncher)
        assert instance.run_coordinator.dequeue_interval_seconds == 1  # a queued digest starts within a second


def test_with_a_qdrant_server_the_store_limits_are_lifted_and_come_back_without_it(home, monkeypatch):
    prepare_dagster_home()
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:6333")
    prepare_dagster_home()
    with loaded(home) as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit is None  # no limit on the store pool
        assert concurrency.run_queue_config.max_concurrent_runs != 1  # Dagster's default
        assert instance.run_monitoring_enabled
    monkeypatch.delenv("QDRANT_URL")
    prepare_dagster_home()
    with loaded(home) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_a_users_file_gets_what_is_missing_and_keeps_every_value_it_set(home, capsys):
    home.mkdir()
    mine = (
        "# my instance\nconcurrency:\n  runs:\n    max_concurrent_runs: 3\n"
        "retention:\n  schedule:\n    purge_after_days: 7\n"
    )
    (home / "dagster.yaml").write_text(mine)
    prepare_dagster_home()
    merged = yaml.safe_load((home / "dagster.yaml").read_text())
    assert merged["concurrency"] == {"runs": {"max_concurrent_runs": 3}, "pools": {"default_limit": 1}}
    assert merged["retention"] == {"schedule": {"purge_after_days": 7}}
    assert merged["run_monitoring"]["enabled"] is True
    assert (home / "dagster.yaml.orig").read_text() == mine
    told = capsys.readouterr().err
    assert "concurrency.pools" in told and "run_monitoring" in told and "max_concurrent_runs" not in told
    with loaded(home) as instance:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 3

    # once it has everything, it is left alone
    before = (home / "dagster.yaml").read_text()
    prepare_dagster_home()
    assert (home / "dagster.yaml").read_text() == before and capsys.readouterr().err == ""


QUEUED = "  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"


# an operator's own file, in each form Dagster documents for limiting runs (and its older pool limit)
@pytest.mark.parametrize(
    "mine, runs_limit",
    [
        ("concurrency:\n  runs:\n    max_concurrent_runs: 4\n", 4),
        ("run_coordinator:\n" + QUEUED + "  config:\n    max_concurrent_runs: 4\n", 4),
        ("run_queue:\n  max_concurrent_runs: 4\n", 4),
        (
            "run_coordinator:\n"
            + QUEUED
            + "  config:\n    tag_concurrency_limits:\n      - key: team\n        limit: 2\n",
            10,  # Dagster's default
        ),
        ("concurrency:\n  default_op_concurrency_limit: 1\n", 1),
    ],
)
def test_a_users_file_in_each_documented_form_loads_with_the_store_limited(home, mine, runs_limit):
    home.mkdir()
    (home / "dagster.yaml").write_text(mine)
    prepare_dagster_home()
    with loaded(home) as instance:
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.run_queue_config.max_concurrent_runs == runs_limit
    assert prepare_dagster_home() == home  # once merged, the file loads again as it is


@pytest.mark.e2e
def test_every_command_works_on_a_users_file_that_limits_runs_in_the_run_coordinator(tmp_path):
    from facepipe_tests.conftest import SAMPLE_IMAGES, run_facepipe

    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text(
        "run_coordinator:\n" + QUEUED + "  config:\n    max_concurrent_runs: 4\n"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(sorted(SAMPLE_IMAGES.glob("*.jpg"))[0].read_bytes())
    import json

    summary = json.loads(run_facepipe(tmp_path, "digest", str(photos), "--group", "g", "--json").stdout)
    assert summary["status"] == "completed", summary
    assert json.loads(run_facepipe(tmp_path, "digests", "list", "--json").stdout)[0]["run_id"] == summary["run_id"]
    run_facepipe(tmp_path, "digests", "show", summary["run_id"])


def test_a_users_storage_that_contradicts_the_postgres_url_is_named(home, monkeypatch):
    home.mkdir()
    (home / "dagster.yaml").write_text("storage:\n  sqlite:\n    base_dir: /somewhere\n")
    monkeypatch.setenv("FACEPIPE_POSTGRES_URL", "postgresql://u:pw@127.0.0.1:5432/db")
    with pytest.raises(InstanceConfigError, match=r"dagster.yaml sets storage, and FACEPIPE_POSTGRES_URL") as raised:
        prepare_dagster_home()
    assert "pw" not in str(raised.value)


def test_the_file_facepipe_wrote_before_is_taken_over(home):
    home.mkdir()
    (home / "dagster.yaml").write_text(PREVIOUS_MANAGED)
    prepare_dagster_home()
    assert not (home / "dagster.yaml.orig").exists()
    assert yaml.safe_load((home / "dagster.yaml").read_text())["run_monitoring"]["enabled"] is True


def test_the_plain_url_is_given_to_dagster_postgres_with_its_driver():
    assert psycopg2_url("postgresql://u:p%40ss@h:5433/db") == "postgresql+psycopg2://u:p%40ss@h:5433/db"
    assert psycopg2_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    with pytest.raises(ValueError, match="not a URL starting mysql://") as raised:
        psycopg2_url("mysql://u:secret@h/db")
    assert "secret" not in str(raised.value)


def test_the_run_launcher_says_whether_the_process_executing_a_run_lives(home):
    import os
    import socket
    import uuid

    gone = subprocess.Popen(["true"])
    gone.wait()
    prepare_dagster_home()
    with loaded(home) as instance:

        def health(pid, host=None, launched=False):
            run_id, tags = str(uuid.uuid4()), {EXECUTOR_HOST_TAG: host or socket.gethostname()}
            if launched:  # a code server's run process reports its pid in an engine event, not a tag
                if pid is not None:
                    instance.report_engine_event(f"Started process for run (pid: {pid}).", run_id=run_id, job_name="j")
            elif pid is not None:
                tags[EXECUTOR_PID_TAG] = str(pid)
            run = SimpleNamespace(run_id=run_id, tags=tags, remote_job_origin=object() if launched else None)
            return instance.run_launcher.check_run_worker_health(run).status

        for launched in (False, True):
            assert health(gone.pid, launched=launched) == WorkerStatus.FAILED
            assert health(os.getpid(), launched=launched) == WorkerStatus.RUNNING
            # another host's process, or one not started: nothing here can tell
            assert health(gone.pid, host="elsewhere", launched=launched) == WorkerStatus.RUNNING
            assert health(None, launched=launched) == WorkerStatus.RUNNING
        # a launched run (a UI re-execution) carrying its parent's pid tag is judged by its own process
        run = SimpleNamespace(
            run_id=str(uuid.uuid4()),
            tags={EXECUTOR_HOST_TAG: socket.gethostname(), EXECUTOR_PID_TAG: str(gone.pid)},
            remote_job_origin=object(),
        )
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING


def test_a_process_is_the_runs_only_if_it_started_before_the_run_and_is_not_a_zombie():
    import time

    started = time.time()
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert process_alive(child.pid) and process_alive(child.pid, started_by=time.time())
        # a run that started before this process did: the pid was reused, the run's process is gone
        assert not process_alive(child.pid, started_by=started - 60)
        child.kill()
        time.sleep(0.5)
        assert not process_alive(child.pid)  # killed, not yet reaped: a zombie
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)


# a facepipe command's first use of the instance, in a process of its own, held until `go` exists
FIRST_USE = """
import os, sys, time
from facepipe.clients import local as runs
from facepipe.platform.history import list_digests
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
list_digests(runs.instance_for_digests())
"""


@pytest.mark.e2e
def test_commands_started_at_once_on_a_new_home_all_work_and_leave_it_usable(tmp_path):
    """Four commands open a home no command has opened before at the same moment (each has imported
    everything first, so only the instance's first use races): each works, and so does the next."""
    import os
    import sys
    import time

    from facepipe_tests.conftest import run_facepipe

    go = tmp_path / "go"
    env = {**os.environ, "FACEPIPE_HOME": str(tmp_path)}
    env.pop("DAGSTER_HOME", None)
    started = [
        subprocess.Popen([sys.executable, "-c", FIRST_USE, str(go)], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(10)  # every process has imported facepipe and Dagster (a few seconds each on a busy machine)
    go.touch()
    errors = [process.communicate(timeout=300)[1] for process in started]
    assert [process.returncode for process in started] == [0] * 4, "\n".join(e[-2000:] for e in errors)
    run_facepipe(tmp_path, "digests", "list")
