"""Workers on many machines: a digest on dagster-celery, with a real Redis broker on loopback and two
real `facepipe worker` processes whose FACEPIPE_HOME folders differ (two machines' stand-ins).

Only the launching machine's worker serves the store queue: every face must end in the launching
machine's embedded store, and none in the other worker's, while the chunks run on both.
"""

import json
import shutil
import socket

import pytest

from facepipe.settings import DEFAULT_QUEUE, STORE_QUEUE
from facepipe_tests.celery_workers import redis_server, why_no_redis, workers
from facepipe_tests.conftest import SAMPLE_IMAGES, faces_by_photo, run_facepipe

pytestmark = pytest.mark.e2e

PHOTOS = 16


@pytest.fixture(scope="module")
def broker():
    reason = why_no_redis()
    if reason:
        pytest.skip(reason)
    with redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("celery_photos")
    for path in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:PHOTOS]:
        shutil.copy(path, folder)
    return folder


def steps_by_worker(home, run_id) -> dict[str, str]:
    """Each step key of the run and the Celery worker that ran it, from the run's engine events."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        ran = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or not event.is_engine_event or not event.step_key:
                continue
            worker = event.engine_event_data.metadata.get("Celery worker")
            if worker is not None:
                ran[event.step_key] = worker.value
    return ran


def test_digest_on_two_workers_ends_in_the_launching_machines_store(broker, photos, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"  # the launching machine, and another one
    host = socket.gethostname()
    with workers(broker, [(here, "here", (DEFAULT_QUEUE, STORE_QUEUE)), (there, "there", (DEFAULT_QUEUE,))]):
        result = run_facepipe(
            here,
            *("digest", str(photos), "--group", "g", "--workers", "2", "--json"),
            env={"FACEPIPE_CELERY_BROKER": broker},
        )
    summary = json.loads(result.stdout)

    # the same photos on today's multiprocess executor: the reference the summary must match
    reference = json.loads(
        run_facepipe(tmp_path / "reference", "digest", str(photos), "--group", "g", "--workers", "2", "--json").stdout
    )
    assert summary["status"] == "completed", summary
    for key in ("images_done", "images_failed", "faces_detected", "faces_dropped", "faces_stored", "faces_in_group"):
        assert summary[key] == reference[key], (key, summary, reference)
    assert summary["images_done"] == PHOTOS and summary["faces_stored"] > 0

    # every face in the launching machine's store, as many as the summary says; none on the other
    stored = faces_by_photo(here, "g")
    assert sum(len(faces) for faces in stored.values()) == summary["faces_in_group"]
    assert {name: len(faces) for name, faces in stored.items()} == {
        name: len(faces) for name, faces in faces_by_photo(tmp_path / "reference", "g").items()
    }
    assert not (there / "qdrant").exists(), "a worker without the store queue opened a store of its own"

    # the store's steps ran on the store's machine; the chunks on both workers
    ran = steps_by_worker(here, summary["run_id"])
    store_steps = {key: w for key, w in ran.items() if "extract_faces_in_chunk" not in key}
    chunk_steps = {key: w for key, w in ran.items() if "extract_faces_in_chunk" in key}
    assert "digest.list_images" in store_steps and "digest.store_faces" in store_steps, ran
    assert set(store_steps.values()) == {f"here@{host}"}, ran
    assert len(chunk_steps) >= 2 and set(chunk_steps.values()) == {f"here@{host}", f"there@{host}"}, ran


def test_a_digest_that_would_split_the_store_is_refused_before_any_work(broker, photos, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    digest = ("digest", str(photos), "--group", "g", "--json")
    env = {"FACEPIPE_CELERY_BROKER": broker}

    # no worker at all: the run would wait for ever
    refused = run_facepipe(here, *digest, check=False, env=env)
    assert refused.returncode != 0 and "no facepipe worker serves the queue 'dagster'" in refused.stderr

    # the store's queue served only by a worker on another store: the faces would land there
    with workers(broker, [(there, "there", (DEFAULT_QUEUE, STORE_QUEUE))]):
        refused = run_facepipe(here, *digest, check=False, env=env)
    assert refused.returncode != 0, refused.stdout
    assert "the faces would go to another store than this machine's" in refused.stderr
    assert str(there / "qdrant") in refused.stderr and "QDRANT_URL" in refused.stderr
    assert not refused.stdout.strip() and not (there / "qdrant").exists() and not (here / "qdrant").exists()
    listed = run_facepipe(here, "digests", "list", "--json", env=env)
    assert json.loads(listed.stdout) == [], "a refused digest left a run"


def test_worker_without_a_broker_says_what_to_set(tmp_path):
    result = run_facepipe(tmp_path / "home", "worker", check=False, env={"FACEPIPE_CELERY_BROKER": ""})
    assert result.returncode != 0
    assert "set FACEPIPE_CELERY_BROKER" in result.stderr
