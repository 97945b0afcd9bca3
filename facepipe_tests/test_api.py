"""The HTTP API as its clients use it: `facepipe serve` (uvicorn) on a loopback port, real HTTP calls.

Beside it, `facepipe ui` (Dagster webserver + daemon) on the same temporary FACEPIPE_HOME: the
service only queues runs, the daemon executes them, as in a deployment. The photos are the labelled
samples of ../shared/faces, read in place (the server's only allowed root).

Only what needs real processes is here: the daemon running queued digests and clustering runs, the
server holding the store against other processes, many clients at once. Every endpoint's answers
and errors are in test_api_inprocess.py, the OpenAPI document and the docs in test_api_schema.py.
"""

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from dagster import DagsterEventType, DagsterInstance

from facepipe.engine.profiles import PROFILES
from facepipe_tests.conftest import (
    SAMPLE_FACES,
    SAMPLE_IMAGES,
    SAMPLES,
    SLOW_DIGEST_CHUNK,
    SLOW_DIGEST_FACES,
    SLOW_DIGEST_PHOTOS,
    copy_samples,
    facepipe_server,
    facepipe_ui,
    faces_by_photo,
    run_facepipe,
)

pytestmark = pytest.mark.e2e  # every test runs against `facepipe serve` and `facepipe ui`

KEY = "test-key-3f9a"
# budgets of this server only (the daemon's digests keep the defaults): img26.jpg (2.47 MB) is over the
# byte budget, img40.jpg (14.1 MP) over the pixel budget; img1.jpg, couple.jpg and the rest are under both
MAX_BYTES, MAX_PIXELS = 2_300_000, 10_000_000


@dataclass
class Service:
    home: Path
    url: str
    http: httpx.Client  # sends the API key


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = tmp_path_factory.mktemp("api_home")
    with facepipe_ui(home):
        (home / "allowed").mkdir()  # a second root, where a test can put a link
        env = {
            "FACEPIPE_API_KEY": KEY,
            "FACEPIPE_ALLOWED_ROOTS": os.pathsep.join([str(SAMPLES), str(home / "allowed")]),
            "FACEPIPE_MAX_IMAGE_BYTES": str(MAX_BYTES),
            "FACEPIPE_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
            "FACEPIPE_STORE_WAIT_SECONDS": "5",
        }
        with facepipe_server(
            home, "serve", lambda url: httpx.get(f"{url}/health", timeout=30).status_code == 200, **env
        ) as url:
            with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=600) as http:
                yield Service(home, url, http)


def wait_for(
    service: Service, job_id: str, until=lambda job: job["status"] not in ("queued", "processing"), timeout: float = 600
) -> tuple[dict, list[str]]:
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        answer = service.http.get(f"/get-digests/{job_id}")
        assert answer.status_code == 200, answer.text
        job = answer.json()
        seen.append(job["status"])
        if until(job):
            return job, seen
        time.sleep(1)
    raise AssertionError(f"digest {job_id} still {seen[-1]} after {timeout} s")


@pytest.fixture(scope="module")
def sample_job(service):
    """The 64 sample photos digested into "sample", launched with the old service's JSON."""
    answer = service.http.post(
        "/digest", json={"local_dir_path": str(SAMPLE_IMAGES), "group_id": "sample", "confidence": 0.5, "threads": 2}
    )
    assert answer.status_code == 202, answer.text
    started = answer.json()
    job, seen = wait_for(service, started["job_id"])
    return started, job, seen


def test_a_posted_digest_is_queued_then_completed_by_the_daemon(service, sample_job):
    started, job, seen = sample_job
    # queued, or already processing: a job is processing from the moment the daemon dequeues its run
    assert started["status"] in ("queued", "processing") and "warning" not in started  # the daemon is running
    assert service.http.get("/v1/health").json()["instance"] == {"up": True, "daemon": True}
    assert set(seen) <= {"queued", "processing", "completed"} and job["status"] == "completed"
    assert job["job_id"] == started["job_id"] == f"digest-{job['run_id']}"
    assert (job["progress"], job["group_id"], job["source"], job["confidence"], job["threads"]) == (
        100.0,
        "sample",
        str(SAMPLE_IMAGES),
        0.5,
        2,
    )
    assert job["images_total"] == job["images_processed"] == 64 and job["images_failed"] == 0
    assert job["total_faces"] == job["faces_in_group"] == SAMPLE_FACES and job["faces_processed"] >= SAMPLE_FACES
    assert job["start_time"] and job["end_time"] and job["error"] is None and job["failed_images"] == []
    # the job is a Dagster run: the daemon executed it, from the instance's queue
    with DagsterInstance.from_config(str(service.home / "dagster")) as instance:
        run = instance.get_run_by_id(job["run_id"])
        assert run.job_name == "digest_job" and run.tags["dagster/partition"] == "sample"
        assert run.remote_job_origin is not None  # launched through the code location, not in a process of ours


def test_digests_are_listed_with_filters_and_their_face_ids_paged(service, sample_job):
    job_id = sample_job[1]["job_id"]
    everything = service.http.get("/get-digests").json()
    assert everything["total_jobs"] == len(everything["jobs"]) >= 1
    assert [j["job_id"] for j in service.http.get("/get-digests", params={"group_id": "sample"}).json()["jobs"]] == [
        job_id
    ]
    assert (
        service.http.get("/v1/get-digests", params={"group_id": "sample", "status": "completed"}).json()["total_jobs"]
        == 1
    )

    ids, offset = [], None
    while True:
        page = service.http.get(f"/v1/get-digests/{job_id}/face-ids", params={"limit": 30, "offset": offset}).json()
        assert len(page["face_ids"]) <= 30
        ids += page["face_ids"]
        offset = page["next_offset"]
        if offset is None:
            break
    assert len(ids) == len(set(ids)) == SAMPLE_FACES


def test_a_photo_that_cannot_be_read_is_listed_with_its_reason(service, sample_job):
    folder = service.home / "allowed" / "mixed"  # under the server's second allowed root
    folder.mkdir()
    shutil.copy(SAMPLE_IMAGES / "img1.jpg", folder / "img1.jpg")  # a copy in the test's own folder
    (folder / "notes.jpg").write_text("a text file named .jpg")
    answer = service.http.post("/digest", json={"local_dir_path": str(folder), "group_id": "mixed", "threads": 1})
    job, _ = wait_for(service, answer.json()["job_id"])
    assert job["status"] == "completed" and job["error"] is None  # one bad photo never fails a digest
    assert (job["images_total"], job["images_processed"], job["images_failed"], job["total_faces"]) == (2, 2, 1, 1)
    [failed] = job["failed_images"]
    assert failed["path"] == "notes.jpg" and "not an image" in failed["error"]  # within the folder digested
    listed = service.http.get("/get-digests", params={"group_id": "mixed"}).json()["jobs"]
    assert [j["failed_images"] for j in listed] == [job["failed_images"]]


def person01_photos(identities) -> set[str]:
    # and the two unlabelled photos where she is one of several (../shared/faces/README.md)
    return {name for name, who in identities.items() if who == "person01"} | {"couple.jpg", "selfie-many-people.jpg"}


def test_search_with_img1_finds_every_other_person01_photo_and_no_one_else(service, sample_job, identities):
    with open(SAMPLE_IMAGES / "img1.jpg", "rb") as selfie:
        answer = service.http.post(
            "/search-face", files={"file": ("img1.jpg", selfie, "image/jpeg")}, data={"group_id": "sample", "top_k": 50}
        )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    found = [Path(p["image_path"]).name for p in result["photos"]]
    assert set(found) == person01_photos(identities)  # img1.jpg itself is in the group, first
    assert found[0] == "img1.jpg" and [p["score"] for p in result["photos"]] == sorted(
        (p["score"] for p in result["photos"]), reverse=True
    )
    assert result["profile"] == "dlib" and result["threshold"] == PROFILES["dlib"].search_threshold
    face = result["photos"][1]["faces"][0]
    assert {"face_id", "score", "facial_area", "person_id"} <= set(face) and set(face["facial_area"]) == set("xywh")

    strict = service.http.post(
        "/search-face",
        files={"file": ("img1.jpg", (SAMPLE_IMAGES / "img1.jpg").read_bytes())},
        data={"group_id": "sample", "top_k": 3},
    ).json()
    assert len(strict["photos"]) == 3


def test_the_daemon_clusters_the_group_and_her_person_is_every_photo_of_her(service, sample_job, identities):
    answer = service.http.post("/v1/cluster-faces", json={"group_id": "sample"})
    assert answer.status_code == 200, answer.text
    clustered = answer.json()
    people = clustered["people"]
    assert clustered["total_people"] == len(people) and sum(p["face_count"] for p in people) == SAMPLE_FACES
    assert all({"person_id", "name", "face_count", "representative_face_id"} <= set(p) for p in people)
    with DagsterInstance.from_config(str(service.home / "dagster")) as instance:
        run = instance.get_run_by_id(clustered["run_id"])
        assert run.job_name == "people_job" and run.tags["dagster/partition"] == "sample"
        assert run.remote_job_origin is not None  # the daemon ran it, not the service
    assert service.http.get("/groups/sample/people").json()["people"] == people

    # the person of img1.jpg's face is person01, with her face in the couple and the selfie
    search = service.http.post(
        "/search-face",
        files={"file": ("img1.jpg", (SAMPLE_IMAGES / "img1.jpg").read_bytes())},
        data={"group_id": "sample"},
    ).json()
    her = search["photos"][0]["faces"][0]["person_id"]
    person = service.http.get(f"/groups/sample/people/{her}").json()
    assert {Path(f["image_path"]).name for f in person["faces"]} == person01_photos(identities)


def test_a_store_held_by_another_process_is_a_503_with_retry_after(service, sample_job):
    from facepipe.store import FaceStore

    # this test process holds the embedded store, as a digest's store step does (waiting for the
    # service to hand it over, as a step does)
    with FaceStore.open(path=service.home / "qdrant", wait=60):
        started = time.time()
        answer = service.http.get("/groups/sample/people")
        waited = time.time() - started
    assert answer.status_code == 503 and answer.headers["Retry-After"].isdigit()
    assert "in use by another process" in answer.json()["detail"] and waited >= 5  # FACEPIPE_STORE_WAIT_SECONDS
    assert service.http.get("/groups/sample/people").status_code == 200  # free again: answered


def test_cancel_then_retry_over_http_completes_without_redoing(service, sample_job):
    # the photos of conftest's SLOW_DIGEST, as it digests them: canceled after its first chunk
    folder = copy_samples(service.home / "allowed" / "stopped", SLOW_DIGEST_PHOTOS)
    answer = service.http.post(
        "/digest",
        json={"local_dir_path": str(folder), "group_id": "stopped", "threads": 1, "chunk_size": SLOW_DIGEST_CHUNK},
    )
    job_id, run_id = answer.json()["job_id"], answer.json()["run_id"]
    wait_for(
        service,
        job_id,
        until=lambda job: job["images_done"] >= SLOW_DIGEST_CHUNK or job["status"] not in ("queued", "processing"),
    )
    canceled = service.http.post(f"/digest/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    # canceling takes the run a moment; a retry waits for it to have stopped
    with DagsterInstance.from_config(str(service.home / "dagster")) as instance:
        deadline = time.time() + 120
        while not instance.get_run_by_id(run_id).is_finished and time.time() < deadline:
            time.sleep(1)
    stopped = service.http.get(f"/get-digests/{job_id}").json()
    assert stopped["status"] == "canceled" and SLOW_DIGEST_CHUNK <= stopped["images_done"] < SLOW_DIGEST_PHOTOS
    assert service.http.post(f"/digest/{job_id}/cancel").status_code == 409  # already canceled

    retried = service.http.post(f"/digest/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    job, _ = wait_for(service, retried.json()["job_id"])
    assert job["status"] == "completed" and job["images_done"] == SLOW_DIGEST_PHOTOS
    assert job["faces_in_group"] == SLOW_DIGEST_FACES
    with DagsterInstance.from_config(str(service.home / "dagster")) as instance:
        run = instance.get_run_by_id(job["run_id"])
        assert run.parent_run_id == run_id and run.remote_job_origin is not None
        redone = {e.step_key for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)}
        done_before = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    assert "digest.list_images" not in redone and not (redone & done_before)
    assert service.http.post(f"/digest/{job['job_id']}/retry").status_code == 409  # completed: nothing to retry


def test_a_digest_queued_over_http_stores_every_face_while_20_clients_search_its_group(service, sample_job):
    # 4 more photos for "sample" (copies of 4 of its own, under new names), digested while 20 clients
    # search "sample": the group the digest writes is the one every search reads. The later tests of
    # this module need only that "sample" holds person01's photos.
    names = [f"img{i}.jpg" for i in range(1, 5)]
    folder = service.home / "allowed" / "more"  # under the server's second allowed root
    folder.mkdir()
    for name in names:
        shutil.copy(SAMPLE_IMAGES / name, folder / f"more-{name}")
    before = faces_by_photo(service.home)
    new_faces = sum(len(faces) for name, faces in before.items() if name in names)
    selfie = (SAMPLE_IMAGES / "img1.jpg").read_bytes()
    answers: list[int] = []
    digest_done = threading.Event()

    def search_until_the_digest_is_done():
        with httpx.Client(base_url=service.url, headers={"X-API-Key": KEY}, timeout=600) as http:
            while not digest_done.is_set():
                found = http.post("/search-face", files={"file": ("me.jpg", selfie)}, data={"group_id": "sample"})
                answers.append(found.status_code)
                assert found.status_code != 200 or found.json()["photos"], found.text

    clients = [threading.Thread(target=search_until_the_digest_is_done) for _ in range(20)]
    for client in clients:
        client.start()
    try:
        started = service.http.post(
            "/digest", json={"local_dir_path": str(folder), "group_id": "sample", "threads": 1, "chunk_size": 2}
        )
        assert started.status_code == 202, started.text
        job, _ = wait_for(service, started.json()["job_id"])
    finally:
        digest_done.set()
        for client in clients:
            client.join()
    assert job["status"] == "completed", job["error"]
    assert job["images_processed"] == len(names) and job["images_failed"] == 0
    assert job["total_faces"] == new_faces > 0 and job["faces_in_group"] == sum(map(len, before.values())) + new_faces
    after = faces_by_photo(service.home)
    assert sum(len(after[f"more-{name}"]) for name in names) == new_faces
    assert len(answers) >= 20 and set(answers) == {200}, answers  # no search failed, none was refused


def test_health_flooded_without_a_key_leaves_facepipe_search_working(service, sample_job):
    answers: list[tuple[int, dict]] = []

    def flood():
        with httpx.Client(base_url=service.url, timeout=60) as stranger:
            for _ in range(125):
                health = stranger.get("/health")
                answers.append((health.status_code, health.json()))

    flooders = [threading.Thread(target=flood) for _ in range(8)]
    for flooder in flooders:
        flooder.start()
    try:
        # the service holds the store between its requests: the command waits for it to let go
        found = run_facepipe(service.home, "search", str(SAMPLE_IMAGES / "img1.jpg"), "--group", "sample", "--json")
    finally:
        for flooder in flooders:
            flooder.join()
    assert json.loads(found.stdout)["photos"]
    assert len(answers) == 1000 and set(map(str, answers)) == {str((200, {"status": "ok"}))}
