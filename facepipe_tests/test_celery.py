"""Workers on many machines: a digest on dagster-celery, with a real Redis broker on loopback and two
real `facepipe worker` processes whose FACEPIPE_HOME folders differ (two machines' stand-ins).

Only the launching machine's worker serves the store queue: every face must end in the launching
machine's embedded store, and none in the other worker's, while the chunks run on both. Where the
other machine must not see this one's folders (step outputs, photos), its worker runs in its own
mount namespace with an empty tmpfs over them: the namespace stands in for another machine.
"""

import json
import socket
import time
from contextlib import ExitStack

import boto3
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from facepipe.settings import DEFAULT_QUEUE, STORE_QUEUE
from facepipe_tests.celery_workers import facepipe_worker, redis_server, why_no_mount_namespace, why_no_redis, workers
from facepipe_tests.conftest import SAMPLE_IMAGES, copy_samples, facepipe_ui, faces_by_photo, run_facepipe

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
    copy_samples(folder, PHOTOS)
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
                ran[event.step_key] = str(worker.value)
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
    # dagster-celery registers its task again for every step: Celery's warning about it is silenced
    assert "DuplicateTaskNameWarning" not in result.stderr, result.stderr

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


def test_a_run_launched_from_the_ui_that_no_worker_would_run_fails_at_once_with_the_reason(broker, photos, tmp_path):
    """Not through the `facepipe` command (whose check refuses before a run exists): through the GraphQL
    mutation the UI's Launchpad uses, with a worker serving only the chunks' queue. The run itself asks
    the workers before it sends a step, and fails instead of waiting for ever on the store's queue."""
    from dagster_graphql import DagsterGraphQLClient

    home, there = tmp_path / "here", tmp_path / "there"
    with ExitStack() as stack:
        stack.enter_context(facepipe_worker(there, broker, "there", (DEFAULT_QUEUE,)))
        url = stack.enter_context(facepipe_ui(home, FACEPIPE_CELERY_BROKER=broker))
        client = DagsterGraphQLClient("127.0.0.1", port_number=int(url.rsplit(":", 1)[1]))
        instance = stack.enter_context(DagsterInstance.from_config(str(home / "dagster")))
        instance.add_dynamic_partitions("digest_groups", ["ui"])  # the group, as the Launchpad's picker adds it
        run_id = client.submit_job_execution(
            "digest_job",
            repository_location_name="facepipe",
            repository_name="__repository__",
            run_config={
                "ops": {
                    "digest": {"ops": {"list_images": {"config": {"source": {"local_folder": {"path": str(photos)}}}}}}
                }
            },
            tags={"dagster/partition": "ui"},
        )
        status = wait_for_the_end(instance, run_id)
        logs = instance.all_logs(run_id)
        shown = json.loads(run_facepipe(home, "digests", "show", run_id, "--json").stdout)
    assert status == DagsterRunStatus.FAILURE
    (failure,) = [e.dagster_event for e in logs if e.dagster_event and e.dagster_event.is_run_failure]
    error = failure.event_specific_data.error
    assert error.message.startswith(
        "facepipe.platform.worker_check.WorkerConfigError: no facepipe worker serves the store's queue 'facepipe_store'"
    )
    assert not [e for e in logs if e.dagster_event and e.dagster_event.event_type == DagsterEventType.STEP_START]
    # and the CLI says why, in the words of the check
    assert shown["status"] == "failed"
    assert shown["errors"] == [error.message.strip().removeprefix("facepipe.platform.worker_check.WorkerConfigError: ")]


def wait_for_the_end(instance, run_id, timeout: float = 300):
    """The run's status once it has ended (a bound on a hang, not on speed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run and run.is_finished:
            return run.status
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still {run.status if run else 'missing'} after {timeout} s")


@pytest.fixture
def hidden_ok(tmp_path):
    reason = why_no_mount_namespace(tmp_path)
    if reason:
        pytest.skip(reason)


def test_a_worker_that_cannot_see_the_step_outputs_or_the_photos_is_refused_before_any_work(
    broker, photos, tmp_path, hidden_ok
):
    here, there = tmp_path / "here", tmp_path / "there"
    storage = here / "dagster" / "storage"  # Dagster's default IO manager keeps the step outputs here
    storage.mkdir(parents=True)
    env = {"FACEPIPE_CELERY_BROKER": broker}
    digest_args = ("digest", str(photos), "--group", "g", "--json")
    host = socket.gethostname()
    with facepipe_worker(here, broker, "here", (DEFAULT_QUEUE, STORE_QUEUE)):
        # another machine (its own mount namespace) that sees neither this machine's storage nor its photos
        with facepipe_worker(there, broker, "there", (DEFAULT_QUEUE,), hidden=(storage, photos)):
            refused = run_facepipe(here, *digest_args, check=False, env=env)
        assert refused.returncode != 0, refused.stdout
        assert (
            f"worker there@{host} cannot read the step outputs at {storage}: "
            "set FACEPIPE_STEP_OUTPUTS=s3://bucket/prefix on every machine, or share that folder at the same path"
        ) in refused.stderr, refused.stderr

        # the storage shared at the same path, the photos not
        with facepipe_worker(there, broker, "there2", (DEFAULT_QUEUE,), hidden=(photos,)):
            refused = run_facepipe(here, *digest_args, check=False, env=env)
        assert refused.returncode != 0, refused.stdout
        # an empty folder at the same path (the tmpfs) lists fine: it is not the photos
        assert f"worker there2@{host} does not see the photos at {photos} (no " in refused.stderr, refused.stderr
        assert (
            "in it): share that folder at the same path on every worker, or digest the photos from S3"
        ) in refused.stderr, refused.stderr

    assert json.loads(run_facepipe(here, "digests", "list", "--json", env=env).stdout) == []
    assert not list(storage.iterdir()), "a refused digest left something in the step-output folder"


def test_with_step_outputs_in_s3_a_worker_that_cannot_see_this_machines_storage_runs_chunks(
    broker, tmp_path, hidden_ok, s3_endpoint
):
    """The same other machine as above, with FACEPIPE_STEP_OUTPUTS on the moto server and the photos in
    S3: the check passes, the digest completes with chunks on both workers, and its step outputs are
    objects under the prefix, none a pickle in the instance's storage folder."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="celery-photos")
    s3.create_bucket(Bucket="celery-step-outputs")
    names = sorted(p.name for p in SAMPLE_IMAGES.glob("*.jpg"))[:8]
    for name in names:
        s3.put_object(Bucket="celery-photos", Key=f"event/{name}", Body=(SAMPLE_IMAGES / name).read_bytes())
    here, there = tmp_path / "here", tmp_path / "there"
    storage = here / "dagster" / "storage"
    storage.mkdir(parents=True)
    # every machine: the same broker, step outputs and S3 endpoint (the AWS configuration's)
    env = {
        "FACEPIPE_CELERY_BROKER": broker,
        "FACEPIPE_STEP_OUTPUTS": "s3://celery-step-outputs/facepipe",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    with ExitStack() as stack:
        stack.enter_context(facepipe_worker(here, broker, "here", (DEFAULT_QUEUE, STORE_QUEUE), env=env))
        stack.enter_context(facepipe_worker(there, broker, "there", (DEFAULT_QUEUE,), env=env, hidden=(storage,)))
        result = run_facepipe(
            here,
            *("digest", "s3://celery-photos/event/", "--group", "g", "--s3-endpoint-url", s3_endpoint),
            *("--workers", "2", "--chunk-size", "2", "--json"),
            env=env,
        )
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["images_done"] == len(names), summary

    ran = steps_by_worker(here, summary["run_id"])
    host = socket.gethostname()
    assert {w for key, w in ran.items() if "extract_faces_in_chunk" in key} == {f"here@{host}", f"there@{host}"}, ran
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="celery-step-outputs")
        for o in page.get("Contents", [])
    ]
    assert keys and all(key.startswith("facepipe/") for key in keys), keys
    assert any(summary["run_id"] in key and "extract_faces_in_chunk" in key for key in keys), keys
    pickled = [p for p in storage.rglob("*") if p.is_file() and "compute_logs" not in p.parts]
    assert pickled == [], pickled


def test_a_worker_reading_runs_from_another_database_is_refused_before_any_work(broker, photos, tmp_path):
    """A worker whose FACEPIPE_POSTGRES_URL names another database would not find the run of any step
    it is sent ("Could not load run", and a summary of Nones): refused, naming the setting."""
    from facepipe_tests.postgres_server import postgres_server, why_not_available

    reason = why_not_available()
    if reason:
        pytest.skip(reason)
    here, there = tmp_path / "here", tmp_path / "there"
    with postgres_server() as server:
        ours, theirs = server.create_database("launcher"), server.create_database("elsewhere")
        env = {"FACEPIPE_CELERY_BROKER": broker, "FACEPIPE_POSTGRES_URL": ours}
        worker_env = {"FACEPIPE_POSTGRES_URL": theirs, "FACEPIPE_HOME": str(here)}  # same store: only the runs differ
        queues = (DEFAULT_QUEUE, STORE_QUEUE)
        with facepipe_worker(there, broker, "there", queues, env=worker_env):
            refused = run_facepipe(here, "digest", str(photos), "--group", "g", "--json", check=False, env=env)
        assert refused.returncode != 0, refused.stdout
        assert "worker there@" in refused.stderr and "reads runs from the PostgreSQL database" in refused.stderr
        assert "/elsewhere" in refused.stderr and "set the same FACEPIPE_POSTGRES_URL" in refused.stderr
        assert "Traceback" not in refused.stderr and server.query("launcher", "select count(*) from runs") == [(0,)]
