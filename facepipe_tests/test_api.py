"""The HTTP API as its clients use it: `facepipe serve` (uvicorn) on a loopback port, real HTTP calls.

Beside it, `facepipe ui` (Dagster webserver + daemon) on the same temporary FACEPIPE_HOME: the
service only queues runs, the daemon executes them, as in a deployment. The photos are the labelled
samples of ../shared/faces, read in place (the server's only allowed root).
"""

import base64
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from dagster import DagsterEventType, DagsterInstance

from facepipe.engine.profiles import PROFILES
from facepipe_tests.conftest import SAMPLE_IMAGES, SAMPLES, facepipe_server, facepipe_ui, faces_by_photo, run_facepipe

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
    assert started["status"] == "queued" and "warning" not in started  # the daemon is running
    assert set(seen) <= {"queued", "processing", "completed"} and job["status"] == "completed"
    assert job["job_id"] == started["job_id"]
    assert (job["progress"], job["group_id"], job["source"], job["confidence"], job["threads"]) == (
        100.0,
        "sample",
        str(SAMPLE_IMAGES),
        0.5,
        2,
    )
    assert job["images_total"] == job["images_processed"] == 64 and job["images_failed"] == 0
    assert job["total_faces"] == job["faces_in_group"] == 68 and job["faces_processed"] >= 68
    assert job["start_time"] and job["end_time"] and job["error"] is None and job["failed_images"] == []
    # the job id is the Dagster run's: the daemon executed it, from the instance's queue
    with DagsterInstance.from_config(str(service.home / "dagster")) as instance:
        run = instance.get_run_by_id(job["job_id"])
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
        service.http.get("/get-digests", params={"group_id": "sample", "status": "completed"}).json()["total_jobs"] == 1
    )
    assert service.http.get("/get-digests", params={"group_id": "sample", "status": "failed"}).json()["total_jobs"] == 0
    assert service.http.get("/get-digests", params={"since": "2999-01-01T00:00:00Z"}).json() == {
        "total_jobs": 0,
        "jobs": [],
    }
    assert service.http.get("/get-digests", params={"until": "2000-01-01"}).json()["total_jobs"] == 0
    assert service.http.get("/get-digests", params={"status": "done"}).status_code == 422

    ids, offset = [], None
    while True:
        page = service.http.get(f"/get-digests/{job_id}/face-ids", params={"limit": 30, "offset": offset}).json()
        assert len(page["face_ids"]) <= 30
        ids += page["face_ids"]
        offset = page["next_offset"]
        if offset is None:
            break
    assert len(ids) == len(set(ids)) == 68
    assert service.http.get(f"/get-digests/{job_id}/face-ids", params={"offset": "page-2"}).status_code == 422


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
    assert failed["path"] == str(folder / "notes.jpg") and "not an image" in failed["error"]
    listed = service.http.get("/get-digests", params={"group_id": "mixed"}).json()["jobs"]
    assert [j["failed_images"] for j in listed] == [job["failed_images"]]


def test_an_unknown_job_is_404(service):
    for method, path in (
        ("GET", "/get-digests/no-such-run"),
        ("GET", "/get-digests/no-such-run/face-ids"),
        ("POST", "/digest/no-such-run/cancel"),
        ("POST", "/digest/no-such-run/retry"),
    ):
        answer = service.http.request(method, path)
        assert answer.status_code == 404 and "no-such-run" in answer.json()["detail"], (path, answer.text)


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"group_id": "g"}, None, "exactly one source"),
        (
            {"local_dir_path": str(SAMPLE_IMAGES), "s3_bucket": "b", "s3_prefix": "p", "group_id": "g"},
            None,
            "exactly one source",
        ),
        ({"local_dir_path": str(SAMPLE_IMAGES), "group_id": "a group!"}, "group_id", "letters, digits"),
        ({"local_dir_path": str(SAMPLE_IMAGES)}, "group_id", "Field required"),
        (
            {"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g", "confidence": 1.5},
            "confidence",
            "less than or equal to 1",
        ),
        (
            {"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g", "confidence": -0.1},
            "confidence",
            "greater than or equal to 0",
        ),
        (
            {"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g", "threads": 0},
            "threads",
            "workers must be from 1 to",
        ),
        ({"local_dir_path": "/etc", "group_id": "g"}, "local_dir_path", "not under an allowed root"),
        (
            {"local_dir_path": f"{SAMPLE_IMAGES}/../../../etc", "group_id": "g"},
            "local_dir_path",
            "not under an allowed root",
        ),
        ({"local_dir_path": f"{SAMPLES}/no-such-folder", "group_id": "g"}, "local_dir_path", "is not a folder"),
        ({"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g", "profile": "vgg"}, "profile", "Input should be"),
    ],
)
def test_a_bad_digest_request_is_422_naming_the_field(service, body, field, words):
    answer = service.http.post("/digest", json=body)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", field] if field else error["loc"] == ["body"]
    assert words in error["msg"]


def test_a_symlink_out_of_an_allowed_root_is_refused(service, tmp_path):
    # a link under an allowed root that leads out of it: the server resolves it before deciding
    link = service.home / "allowed" / "photos"
    link.symlink_to(tmp_path)
    answer = service.http.post("/digest", json={"local_dir_path": str(link), "group_id": "g"})
    assert answer.status_code == 422 and "not under an allowed root" in answer.text


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


def no_face_photo() -> bytes:
    """A real photo's top-left corner (400 px of couple.jpg's wall, above both faces)."""
    image = cv2.imread(str(SAMPLE_IMAGES / "couple.jpg"))
    assert image is not None
    return cv2.imencode(".jpg", image[:400, :400])[1].tobytes()


def test_search_says_what_is_wrong(service, sample_job):
    selfie = (SAMPLE_IMAGES / "img1.jpg").read_bytes()
    cases = [
        ({"file": ("img1.jpg", selfie)}, {"group_id": "nobody-here"}, 404, "unknown group"),
        (
            {"file": ("wall.jpg", no_face_photo())},
            {"group_id": "sample"},
            400,
            "no face found in the selfie 'wall.jpg'",
        ),
        ({"file": ("notes.jpg", b"a text file named .jpg")}, {"group_id": "sample"}, 422, "not an image"),
        ({"file": ("img1.jpg", selfie)}, {}, 422, "group_id"),
        ({"file": ("img1.jpg", selfie)}, {"group_id": "sample", "top_k": 0}, 422, "top_k"),
        ({"file": ("img1.jpg", selfie)}, {"group_id": "sample", "threshold": 2}, 422, "threshold"),
        ({}, {"group_id": "sample"}, 422, "file"),
    ]
    for files, data, status, words in cases:
        answer = service.http.post("/search-face", files=files or None, data=data)
        assert answer.status_code == status and words in answer.text, (data, answer.text)
        assert "Traceback" not in answer.text


def test_cluster_the_group_then_name_merge_and_split_people(service, sample_job, identities):
    answer = service.http.post("/cluster-faces", json={"group_id": "sample"})
    assert answer.status_code == 200, answer.text
    clustered = answer.json()
    people = clustered["people"]
    assert clustered["total_people"] == len(people) and sum(p["face_count"] for p in people) == 68
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

    named = service.http.post(f"/groups/sample/people/{her}/name", json={"name": "Alice"}).json()
    assert named["name"] == "Alice"
    couple_face = next(f["face_id"] for f in person["faces"] if f["image_path"].endswith("couple.jpg"))
    split = service.http.post(f"/groups/sample/people/{her}/split", json={"face_ids": [couple_face]}).json()
    assert split["face_count"] == 1 and split["person_id"] not in {p["person_id"] for p in people}
    merged = service.http.post("/groups/sample/people/merge", json={"keep": her, "others": [split["person_id"]]}).json()
    assert merged["name"] == "Alice" and merged["face_count"] == person["face_count"]

    assert service.http.post("/groups/sample/people/9999/name", json={"name": "x"}).status_code == 404
    assert service.http.post(f"/groups/sample/people/{her}/split", json={"face_ids": []}).status_code == 422
    assert service.http.post("/cluster-faces", json={"group_id": "never-digested"}).status_code == 404
    assert service.http.get("/groups/never-digested/people").status_code == 404


def photo(name: str) -> dict:
    return {"file": (name, (SAMPLE_IMAGES / name).read_bytes(), "image/jpeg")}


def test_faces_embedding_and_features_of_the_couple(service, tmp_path):
    faces = service.http.post("/get-faces", files=photo("couple.jpg"), data={"crops": "true"}).json()
    assert faces["total_faces"] == 2 and faces["profile"] == "dlib"
    for face in faces["faces"]:
        assert len(face["landmarks"]) == 5 and face["confidence"] >= 0.5 and face["facial_area"]["w"] > 100
        crop = cv2.imdecode(np.frombuffer(base64.b64decode(face["crop_jpeg_base64"]), np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape[0] > face["facial_area"]["h"]  # the face with a margin
    assert faces["faces"][0]["facial_area"]["x"] < faces["faces"][1]["facial_area"]["x"]  # left to right

    embedding = service.http.post("/get-embedding", files=photo("couple.jpg")).json()
    assert (embedding["profile"], embedding["model"], embedding["total_faces"]) == ("dlib", "Dlib", 2)
    vectors = np.array([f["embedding"] for f in embedding["faces"]])
    assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    # her face in the couple is as close to img1.jpg's as the search threshold says
    img1 = np.array(service.http.post("/get-embedding", files=photo("img1.jpg")).json()["faces"][0]["embedding"])
    assert max(vectors @ img1) >= PROFILES["dlib"].search_threshold > min(vectors @ img1)

    # deepface's attribute weights are a download, which this machine cannot make: a 503 that names them
    features = service.http.post("/get-features", files=photo("couple.jpg"))
    assert features.status_code == 503
    folder = Path(os.environ["DEEPFACE_HOME"]) / ".deepface" / "weights"
    for weight in ("age_model_weights.onnx", "gender_model_weights.onnx", "facial_expression_model_weights.onnx"):
        assert weight in features.json()["detail"]
    assert str(folder) in features.json()["detail"]
    landmarks = service.http.post("/get-features", files=photo("couple.jpg"), data={"attributes": "none"}).json()
    assert landmarks["total_faces"] == 2 and landmarks["landmark_points"] == 5
    assert [f["landmarks"] for f in landmarks["faces"]] == [f["landmarks"] for f in faces["faces"]]
    assert service.http.post("/get-features", files=photo("couple.jpg"), data={"attributes": "race"}).status_code == 422
    # the other profile's weights are a download too: its name and folder, not a traceback
    other = service.http.post("/get-faces", files=photo("couple.jpg"), data={"profile": "retinaface-arcface"})
    assert other.status_code == 503 and "retinaface.onnx" in other.text and str(folder) in other.text


def test_one_photo_endpoints_refuse_what_is_not_a_photo_or_too_large(service):
    for path in ("/get-faces", "/get-embedding", "/get-features"):
        data = {"attributes": "none"} if path == "/get-features" else {}
        empty = service.http.post(path, files={"file": ("wall.jpg", no_face_photo())}, data=data)
        assert empty.status_code == 200 and empty.json()["total_faces"] == 0 and empty.json()["faces"] == []
        text = service.http.post(path, files={"file": ("notes.jpg", b"a text file named .jpg")}, data=data)
        assert text.status_code == 422 and "notes.jpg" in text.text and "not an image" in text.text
        large = service.http.post(path, files=photo("img26.jpg"), data=data)  # 2.47 MB, over this server's budget
        assert large.status_code == 413 and "FACEPIPE_MAX_IMAGE_BYTES" in large.text
        bomb = service.http.post(path, files=photo("img40.jpg"), data=data)  # 14.1 MP
        assert bomb.status_code == 413 and "FACEPIPE_MAX_IMAGE_PIXELS" in bomb.text
        # a body longer than any photo may be is refused by its length, before it is received whole
        huge = service.http.post(path, files={"file": ("huge.jpg", b"\xff\xd8\xff" + bytes(MAX_BYTES + (2 << 20)))})
        assert huge.status_code == 413 and "the request is" in huge.text
        missing = service.http.post(path, data=data)
        assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "file"]


def test_requests_without_the_key_are_refused_health_and_docs_are_open(service):
    selfie = (SAMPLE_IMAGES / "img1.jpg").read_bytes()
    for headers in ({}, {"X-API-Key": "wrong"}):
        with httpx.Client(base_url=service.url, headers=headers, timeout=60) as stranger:
            for answer in (
                stranger.post("/digest", json={"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g"}),
                stranger.get("/get-digests"),
                stranger.post("/search-face", files={"file": ("s.jpg", selfie)}, data={"group_id": "sample"}),
                stranger.post("/cluster-faces", json={"group_id": "sample"}),
                stranger.post("/get-faces", files={"file": ("s.jpg", selfie)}),
            ):
                assert answer.status_code == 401 and "X-API-Key" in answer.json()["detail"]
    for headers in ({}, {"X-API-Key": "wrong"}):  # up or not, and nothing more
        assert httpx.get(f"{service.url}/health", headers=headers, timeout=60).json() == {"status": "ok"}
    health = service.http.get("/health")
    assert health.status_code == 200
    checks = health.json()
    assert checks["status"] == "ok" and checks["store"]["up"] and checks["instance"]["daemon"] is True
    assert checks["models"]["dlib"]["up"] and not checks["models"]["retinaface-arcface"]["up"]
    assert httpx.get(f"{service.url}/docs", timeout=60).status_code == 200
    paths = httpx.get(f"{service.url}/openapi.json", timeout=60).json()["paths"]
    assert {
        "/digest",
        "/get-digests",
        "/get-digests/{job_id}",
        "/search-face",
        "/cluster-faces",
        "/get-faces",
        "/get-embedding",
        "/get-features",
        "/health",
    } <= set(paths)


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
    answer = service.http.post(
        "/digest", json={"local_dir_path": str(SAMPLE_IMAGES), "group_id": "stopped", "threads": 1, "chunk_size": 8}
    )
    job_id = answer.json()["job_id"]
    wait_for(
        service, job_id, until=lambda job: job["images_done"] >= 16 or job["status"] not in ("queued", "processing")
    )
    canceled = service.http.post(f"/digest/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    # canceling takes the run a moment; a retry waits for it to have stopped
    with DagsterInstance.from_config(str(service.home / "dagster")) as instance:
        deadline = time.time() + 120
        while not instance.get_run_by_id(job_id).is_finished and time.time() < deadline:
            time.sleep(1)
    stopped = service.http.get(f"/get-digests/{job_id}").json()
    assert stopped["status"] == "canceled" and 16 <= stopped["images_done"] < 64
    assert service.http.post(f"/digest/{job_id}/cancel").status_code == 409  # already canceled

    retried = service.http.post(f"/digest/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    job, _ = wait_for(service, retried.json()["job_id"])
    assert job["status"] == "completed" and job["images_done"] == 64 and job["faces_in_group"] == 68
    with DagsterInstance.from_config(str(service.home / "dagster")) as instance:
        run = instance.get_run_by_id(job["job_id"])
        assert run.parent_run_id == job_id and run.remote_job_origin is not None
        redone = {e.step_key for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)}
        done_before = {e.step_key for e in instance.all_logs(job_id, of_type=DagsterEventType.STEP_SUCCESS)}
    assert "digest.list_images" not in redone and not (redone & done_before)
    assert service.http.post(f"/digest/{job['job_id']}/retry").status_code == 409  # completed: nothing to retry


def test_a_digest_queued_over_http_stores_every_face_while_20_clients_search(service, sample_job):
    names = [f"img{i}.jpg" for i in range(1, 9)]
    folder = service.home / "allowed" / "crowd"  # under the server's second allowed root
    folder.mkdir()
    for name in names:
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
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
            "/digest", json={"local_dir_path": str(folder), "group_id": "crowd", "threads": 1, "chunk_size": 2}
        )
        assert started.status_code == 202, started.text
        job, _ = wait_for(service, started.json()["job_id"])
    finally:
        digest_done.set()
        for client in clients:
            client.join()
    assert job["status"] == "completed", job["error"]
    assert job["images_processed"] == 8 and job["images_failed"] == 0
    expected = sum(len(faces) for name, faces in faces_by_photo(service.home).items() if name in names)
    assert job["total_faces"] == job["faces_in_group"] == expected > 0
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
