"""facepipe on a PostgreSQL instance (#15): one setting, FACEPIPE_POSTGRES_URL, in the plain form
users write (postgresql://user:password@host:port/database, with a password a URL must escape).

A real PostgreSQL server (Debian's package) runs on a free loopback port for this module; each test
gets its own database. Everything goes through the `facepipe` command, in subprocesses that inherit
FACEPIPE_POSTGRES_URL, and the tests read the database itself to see where the history went.
"""

import json
import shutil
import subprocess
import time
import uuid
from urllib.parse import quote

import pytest
from dagster import DagsterEventType, DagsterInstance

from facepipe_tests.conftest import (
    REPORTS,
    SAMPLE_IMAGES,
    SLOW_DIGEST,
    SLOW_DIGEST_CHUNK,
    SLOW_DIGEST_FACES,
    SLOW_DIGEST_PHOTOS,
    digest,
    digest_at,
    facepipe_ui,
    run_facepipe,
    start_facepipe,
)
from facepipe_tests.postgres_server import PASSWORD, postgres_server, why_not_available

pytestmark = pytest.mark.e2e  # a real PostgreSQL server and the `facepipe` command

PHOTOS = ["img1.jpg", "img2.jpg", "img3.jpg", "couple.jpg", "img5.jpg"]


@pytest.fixture(scope="module")
def server():
    reason = why_not_available()
    if reason:
        pytest.skip(reason)
    with postgres_server() as server:
        REPORTS.append(f"PostgreSQL test server\nstarted (initdb + pg_ctl start) in {server.start_seconds:.1f} s")
        yield server


@pytest.fixture
def database(server, monkeypatch):
    """A fresh database, named in FACEPIPE_POSTGRES_URL for this test and the commands it runs."""
    name = "facepipe_" + uuid.uuid4().hex[:8]
    monkeypatch.setenv("FACEPIPE_POSTGRES_URL", server.create_database(name))
    return name


def small_folder(path):
    path.mkdir(parents=True)
    for name in PHOTOS:
        shutil.copy(SAMPLE_IMAGES / name, path / name)
    (path / "notes.jpg").write_text("a text file named .jpg")
    return path


def test_digest_list_show_and_people_keep_their_history_in_postgres(server, database, tmp_path):
    home = tmp_path / "home"
    summary = digest(home, small_folder(tmp_path / "photos"), "pg", "--workers", "2")
    assert summary["status"] == "completed" and summary["images_done"] == 6 and summary["images_failed"] == 1
    assert summary["faces_stored"] == summary["faces_in_group"] == 6

    listed = json.loads(run_facepipe(home, "digests", "list", "--json").stdout)
    assert [d["run_id"] for d in listed] == [summary["run_id"]]
    shown = json.loads(run_facepipe(home, "digests", "show", summary["run_id"], "--json").stdout)
    assert (shown["status"], shown["faces_stored"]) == ("completed", 6)

    people = json.loads(run_facepipe(home, "people", "cluster", "--group", "pg", "--json").stdout)
    assert people["faces"] == 6 and people["people"] >= 1
    assert json.loads(run_facepipe(home, "people", "list", "--group", "pg", "--json").stdout)

    # the runs and their events are in the database, and nowhere else
    runs = dict(server.query(database, "SELECT run_id, status FROM runs"))
    assert runs[summary["run_id"]] == "SUCCESS" and runs[people["run_id"]] == "SUCCESS" and len(runs) == 2
    (events,) = server.query(database, f"SELECT count(*) FROM event_logs WHERE run_id = '{summary['run_id']}'")[0]
    assert events > 20
    assert list(home.rglob("*.db")) == [], "SQLite storage was created beside PostgreSQL"
    # another machine's facepipe, with its own data folder and the same URL, sees the same history
    elsewhere = json.loads(run_facepipe(tmp_path / "elsewhere", "digests", "list", "--json").stdout)
    assert [d["run_id"] for d in elsewhere] == [summary["run_id"]]

    # the password stays in the environment: not in dagster.yaml, not in anything the instance wrote
    config = (home / "dagster" / "dagster.yaml").read_text()
    assert "env: FACEPIPE_POSTGRES_URL" in config
    for path in (home / "dagster").rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert PASSWORD.encode() not in text and quote(PASSWORD, safe="").encode() not in text, path


def test_cancel_then_retry_on_postgres(database, slow_digest_photos, tmp_path):
    home = tmp_path / "home"
    run_facepipe(home, "digests", "list")  # creates the instance before the polling below
    running = start_facepipe(home, "digest", str(slow_digest_photos), *SLOW_DIGEST, stdout=subprocess.PIPE)
    try:
        run_id = digest_at(home, SLOW_DIGEST_CHUNK)
        run_facepipe(home, "digests", "cancel", run_id)
        assert json.loads(running.communicate(timeout=120)[0])["status"] == "canceled"
    finally:
        running.kill()

    retried = json.loads(run_facepipe(home, "digests", "retry", run_id, "--json").stdout)
    assert retried["status"] == "completed"
    assert retried["images_done"] == SLOW_DIGEST_PHOTOS
    assert retried["faces_in_group"] == retried["faces_stored"] == SLOW_DIGEST_FACES
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        # dagster-postgres' own storage, named in dagster.yaml through facepipe's URL translation
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.event_log_storage.inst_data.module_name == "facepipe.platform.postgres_storage"
        redone = {e.step_key for e in instance.all_logs(retried["run_id"], of_type=DagsterEventType.STEP_START)}
        done_before = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    assert "digest.list_images" not in redone and not (redone & done_before)


def test_a_watch_and_a_queued_digest_run_under_the_daemon_on_postgres(server, database, tmp_path):
    home, inbox = tmp_path / "home", tmp_path / "inbox"
    inbox.mkdir()
    watches = tmp_path / "watches.yaml"
    watches.write_text(
        f"watches:\n  - name: inbox\n    source: {inbox}\n    group_id: dropped\n"
        f"    minimum_interval_seconds: 5\n    workers: 1\n"
    )
    daemons = ("SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING")
    with facepipe_ui(home, daemons=daemons, FACEPIPE_WATCHES=str(watches)):
        queued = run_facepipe(
            home, "digest", str(small_folder(tmp_path / "photos")), "--group", "queued", "--detach", "--workers", "1"
        ).stdout.strip()
        shutil.copy(SAMPLE_IMAGES / "img1.jpg", inbox / "dropped.jpg")

        deadline, found = time.time() + 240, []
        while time.time() < deadline:
            found = json.loads(run_facepipe(home, "digests", "list", "--json").stdout)
            if len(found) == 2 and all(d["status"] in ("completed", "failed", "canceled") for d in found):
                break
            time.sleep(2)
    by_group = {d["group_id"]: d for d in found}
    assert by_group["queued"]["run_id"] == queued and by_group["queued"]["status"] == "completed"
    assert by_group["queued"]["faces_stored"] == 6
    assert by_group["dropped"]["status"] == "completed" and by_group["dropped"]["faces_stored"] == 1

    # the sensor's ticks and cursor, and the daemons' heartbeats, are in PostgreSQL too
    ticks = server.query(database, "SELECT count(*) FROM job_ticks")[0][0]
    assert ticks >= 1
    heartbeats = {row[0] for row in server.query(database, "SELECT daemon_type FROM daemon_heartbeats")}
    assert set(daemons) <= heartbeats
