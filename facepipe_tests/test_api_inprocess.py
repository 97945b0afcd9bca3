"""The HTTP API in process: the app of `facepipe serve` called with FastAPI's TestClient, on a real
Dagster instance and a real embedded face store in a temporary FACEPIPE_HOME, with the real models
on real photos. No server, no daemon: a posted digest is queued and stays queued (test_api.py has the
daemon run it). Every endpoint's answers and errors, at its /v1 path and at the seed's.

The group "party" is digested and clustered beforehand by the digest and people assets in this
process (dagster.materialize, as test_assets.py does): four photos, person01 in three of them.
"""

import base64
import json
import os
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
from dagster import DagsterRunStatus, materialize
from dagster._core.test_utils import create_run_for_test
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster_aws.s3 import S3Resource
from fastapi.testclient import TestClient

from facepipe import settings
from facepipe.api.app import create_app
from facepipe.api.dependencies import StoreAccess, face_store
from facepipe.api.routes import digests as digests_routes
from facepipe.api.schemas import DIGEST_EXAMPLE
from facepipe.clients.local import instance_for_digests
from facepipe.defs.digest.assets import digest
from facepipe.defs.digest.jobs import digest_run_config
from facepipe.defs.partitions import GROUPS
from facepipe.defs.people.assets import people, people_run_config
from facepipe.defs.resources import FaceStoreResource
from facepipe.domain.request import DIGEST_JOB, PARTITION_TAG, digest_request
from facepipe.engine.profiles import PROFILES
from facepipe.store import RECOVER, FaceStore, StoreLease, image_point_id
from facepipe_tests.conftest import SAMPLE_IMAGES, SAMPLES, run_facepipe

KEY = "test-key-inprocess"
PARTY = {"img1.jpg": "person01", "img2.jpg": "person01", "couple.jpg": "person01", "img8.jpg": "person09"}
# this app's budgets: img26.jpg (2.47 MB) is over the byte budget, img40.jpg (14.1 MP) over the pixel budget
MAX_BYTES, MAX_PIXELS = 2_300_000, 10_000_000


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A FACEPIPE_HOME whose store holds the group "party", digested and clustered."""
    home = tmp_path_factory.mktemp("api_inprocess")
    photos, allowed = home / "photos", home / "allowed"
    photos.mkdir()
    allowed.mkdir()  # a second allowed root, where a test can put a link
    for name in PARTY:
        shutil.copy(SAMPLE_IMAGES / name, photos / name)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DAGSTER_HOME", raising=False)
        env.setenv("FACEPIPE_HOME", str(home))
        env.setenv("FACEPIPE_API_KEY", KEY)
        env.setenv("FACEPIPE_ALLOWED_ROOTS", os.pathsep.join([str(SAMPLES), str(photos), str(allowed)]))
        env.setenv("FACEPIPE_MAX_IMAGE_BYTES", str(MAX_BYTES))
        env.setenv("FACEPIPE_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
        env.setenv("FACEPIPE_STORE_WAIT_SECONDS", "5")
        env.setenv("FACEPIPE_SEARCH_WORKERS", "1")
        instance = instance_for_digests()
        instance.add_dynamic_partitions(GROUPS, ["party"])
        store = {"face_store": FaceStoreResource(path=str(settings.qdrant_path()))}
        # at the portraits preset: these four photos have the same five faces as at the default, in a
        # tenth of the time (the default's small faces are test_detection_recall.py's subject)
        request = digest_request(str(photos), "party", chunk_size=4, preset="portraits")
        digested = materialize(
            [digest],
            instance=instance,
            partition_key="party",
            run_config={"ops": digest_run_config(request, workers=1)["ops"]},  # the in-process executor
            resources={**store, "s3": S3Resource()},
        )
        assert digested.success
        clustered = materialize(
            [people],
            instance=instance,
            partition_key="party",
            run_config={"ops": people_run_config()["ops"]},
            resources=store,
        )
        assert clustered.success
        instance.dispose()
        yield home


@pytest.fixture(scope="module")
def app(home):
    app = create_app()
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        app.state.client = client
        yield app


@pytest.fixture
def http(app) -> TestClient:
    return app.state.client


def photo(name: str) -> dict:
    return {"file": (name, (SAMPLE_IMAGES / name).read_bytes(), "image/jpeg")}


def no_face_photo() -> bytes:
    """A real photo's top-left corner (400 px of couple.jpg's wall, above both faces)."""
    image = cv2.imread(str(SAMPLE_IMAGES / "couple.jpg"))
    assert image is not None
    return cv2.imencode(".jpg", image[:400, :400])[1].tobytes()


# ------------------------------------------------------------------------------------------------
# The key, the versioned paths, the body cap
# ------------------------------------------------------------------------------------------------


def test_requests_without_the_key_are_refused_and_health_says_only_up_or_not(app, home):
    selfie = (SAMPLE_IMAGES / "img1.jpg").read_bytes()
    for headers in ({}, {"X-API-Key": "wrong"}):
        with TestClient(app, headers=headers) as stranger:
            for prefix in ("/v1", ""):
                for answer in (
                    stranger.post(f"{prefix}/digest", json={"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g"}),
                    stranger.get(f"{prefix}/get-digests"),
                    stranger.get(f"{prefix}/get-digests/x"),
                    stranger.post(
                        f"{prefix}/search-face", files={"file": ("s.jpg", selfie)}, data={"group_id": "party"}
                    ),
                    stranger.post(f"{prefix}/cluster-faces", json={"group_id": "party"}),
                    stranger.get(f"{prefix}/groups/party/people"),
                    stranger.post(f"{prefix}/get-faces", files={"file": ("s.jpg", selfie)}),
                ):
                    assert answer.status_code == 401 and "X-API-Key" in answer.json()["detail"], answer.text
                    assert answer.headers["WWW-Authenticate"] == "X-API-Key"
            assert stranger.get("/health").json() == {"status": "ok"}
            assert stranger.get("/v1/health").json() == {"status": "ok"}
    health = app.state.client.get("/v1/health")
    assert health.status_code == 200
    checks = health.json()
    assert checks["status"] == "ok" and checks["store"] == {
        "up": True,
        "kind": "embedded",
        "path": str(home / "qdrant"),
        "exists": True,
    }
    assert checks["instance"] == {"up": True, "daemon": False}  # no `facepipe ui` here
    assert checks["models"]["dlib"]["up"] and not checks["models"]["retinaface-arcface"]["up"]


def test_a_json_body_over_the_cap_is_413_in_the_one_error_shape(http):
    big = {"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g" * (2 << 20)}
    answer = http.post("/v1/digest", json=big)
    assert answer.status_code == 413 and answer.json()["detail"].startswith("refused: the request is")


# ------------------------------------------------------------------------------------------------
# Digests: queued here (no daemon), followed, listed, canceled, retried
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def queued(app, home):
    """The schema's example digest, its folder made one of this server's: queued, and left queued."""
    answer = app.state.client.post("/v1/digest", json={**DIGEST_EXAMPLE, "local_dir_path": str(home / "photos")})
    assert answer.status_code == 202, answer.text
    return answer.json()


def test_a_posted_digest_is_queued_with_a_seed_job_id_and_a_warning_without_a_daemon(http, home, queued):
    assert queued["status"] == "queued" and queued["progress"] == 0.0
    assert queued["job_id"] == f"digest-{queued['run_id']}"
    assert (queued["group_id"], queued["source"], queued["confidence"], queued["threads"]) == (
        "wedding",
        str(home / "photos"),
        0.5,
        2,
    )
    assert "no Dagster daemon is running" in queued["warning"]
    # the job id as answered, the bare run id, and the seed's path all find it
    for path in (
        f"/v1/get-digests/{queued['job_id']}",
        f"/v1/get-digests/{queued['run_id']}",
        f"/get-digests/{queued['job_id']}",
    ):
        job = http.get(path)
        assert job.status_code == 200 and job.json()["job_id"] == queued["job_id"], path
        assert "warning" not in job.json()
    page = http.get(f"/v1/get-digests/{queued['job_id']}/face-ids").json()
    assert page == {"job_id": queued["job_id"], "face_ids": [], "next_offset": None}  # not started: none yet
    assert http.get(f"/v1/get-digests/{queued['job_id']}/face-ids", params={"offset": "page-2"}).status_code == 422


def test_a_queued_digest_is_canceled_then_retried_and_the_history_counts_both(http, queued, monkeypatch):
    # the service plans its runs in the code server it loaded for the first one (`queued`'s): a retry
    # loads none (loading one is the slow part of a submission)
    loaded = []
    load = WorkspaceProcessContext.__init__
    monkeypatch.setattr(WorkspaceProcessContext, "__init__", lambda *a, **k: loaded.append(1) or load(*a, **k))
    job_id = queued["job_id"]
    canceled = http.post(f"/v1/digest/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    again = http.post(f"/v1/digest/{job_id}/cancel")
    assert again.status_code == 409 and "already canceled" in again.json()["detail"]
    retried = http.post(f"/v1/digest/{queued['run_id']}/retry")  # the bare run id
    assert retried.status_code == 202, retried.text
    assert loaded == []
    retry = retried.json()
    assert retry["status"] == "queued" and retry["job_id"] == f"digest-{retry['run_id']}" != job_id
    assert http.post(f"/v1/digest/{retry['job_id']}/retry").status_code == 409  # queued: nothing to retry

    # total_jobs is the history's size for the filter; jobs is the page, newest first
    one = http.get("/v1/get-digests", params={"group_id": "wedding", "limit": 1}).json()
    assert one["total_jobs"] == 2 and [j["job_id"] for j in one["jobs"]] == [retry["job_id"]]
    both = http.get("/get-digests", params={"group_id": "wedding"}).json()
    assert [j["job_id"] for j in both["jobs"]] == [retry["job_id"], job_id]
    assert http.get("/v1/get-digests", params={"group_id": "wedding", "status": "canceled"}).json()["total_jobs"] == 1
    assert http.get("/v1/get-digests", params={"group_id": "wedding", "status": "failed"}).json()["total_jobs"] == 0
    assert http.get("/v1/get-digests", params={"since": "2999-01-01T00:00:00Z"}).json() == {"total_jobs": 0, "jobs": []}
    assert http.get("/v1/get-digests", params={"until": "2000-01-01"}).json()["total_jobs"] == 0
    refused = http.get("/v1/get-digests", params={"status": "done"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "status"]


def test_an_unknown_job_is_404(http):
    for method, path in (
        ("GET", "/v1/get-digests/no-such-run"),
        ("GET", "/v1/get-digests/digest-no-such-run/face-ids"),
        ("POST", "/v1/digest/no-such-run/cancel"),
        ("POST", "/digest/no-such-run/retry"),
    ):
        answer = http.request(method, path)
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
        ({"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g", "threads": 0}, "threads", "workers must be from 1 to"),
        ({"local_dir_path": "/etc", "group_id": "g"}, "local_dir_path", "not under an allowed root"),
        (
            {"local_dir_path": f"{SAMPLE_IMAGES}/../../../etc", "group_id": "g"},
            "local_dir_path",
            "not under an allowed root",
        ),
        ({"local_dir_path": f"{SAMPLES}/no-such-folder", "group_id": "g"}, "local_dir_path", "is not a folder"),
        ({"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g", "profile": "vgg"}, "profile", "Input should be"),
        ({"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g", "workers": 2}, "workers", "Extra inputs"),
        (
            {"s3_bucket": "photos", "s3_prefix": "p", "s3_region": "us-east-1.evil#", "group_id": "g"},
            "s3_region",
            "region",
        ),
    ],
)
def test_a_bad_digest_request_is_422_naming_the_field(http, body, field, words):
    answer = http.post("/v1/digest", json=body)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == (["body", field] if field else ["body"])
    assert words in error["msg"]


def test_a_symlink_out_of_an_allowed_root_is_refused(http, home, tmp_path):
    # a link under an allowed root that leads out of it: the server resolves it before deciding
    link = home / "allowed" / "photos"
    link.symlink_to(tmp_path)
    answer = http.post("/v1/digest", json={"local_dir_path": str(link), "group_id": "g"})
    assert answer.status_code == 422 and "not under an allowed root" in answer.text


# ------------------------------------------------------------------------------------------------
# Search
# ------------------------------------------------------------------------------------------------


def test_search_with_img1_finds_her_three_photos_best_first(http, home):
    answer = http.post("/v1/search-face", files=photo("img1.jpg"), data={"group_id": "party"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    found = [p["image_path"] for p in result["photos"]]  # within the digested folder, not the server's path
    assert set(found) == {name for name, who in PARTY.items() if who == "person01"} and found[0] == "img1.jpg"
    assert [p["photo_id"] for p in result["photos"]] == [
        image_point_id("party", str(home / "photos" / name), "dlib") for name in found
    ]
    scores = [p["score"] for p in result["photos"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= result["threshold"]
    assert result["profile"] == "dlib" and result["threshold"] == PROFILES["dlib"].search_threshold
    face = result["photos"][1]["faces"][0]
    assert face["person_id"] is not None and set(face["facial_area"]) == set("xywh")
    top = http.post("/search-face", files=photo("img1.jpg"), data={"group_id": "party", "top_k": 1}).json()
    assert [p["image_path"] for p in top["photos"]] == [result["photos"][0]["image_path"]]
    # each face of the couple: her photos, and his (he is in no other photo)
    both = http.post("/v1/search-face", files=photo("couple.jpg"), data={"group_id": "party", "all_faces": "true"})
    assert len(both.json()["query_faces"]) == 2


def test_search_says_what_is_wrong(http):
    selfie = (SAMPLE_IMAGES / "img1.jpg").read_bytes()
    cases = [
        ({"file": ("img1.jpg", selfie)}, {"group_id": "nobody-here"}, 404, "unknown group"),
        ({"file": ("wall.jpg", no_face_photo())}, {"group_id": "party"}, 400, "no face found in the selfie 'wall.jpg'"),
        ({"file": ("notes.jpg", b"a text file named .jpg")}, {"group_id": "party"}, 422, "not an image"),
        ({"file": ("img1.jpg", selfie)}, {}, 422, "group_id"),
        ({"file": ("img1.jpg", selfie)}, {"group_id": "party", "top_k": 0}, 422, "top_k"),
        ({"file": ("img1.jpg", selfie)}, {"group_id": "party", "threshold": 2}, 422, "threshold"),
        ({}, {"group_id": "party"}, 422, "file"),
        (
            [("file", ("a.jpg", b"a")), ("file", ("b.jpg", b"b"))],  # FastAPI would read b.jpg alone
            {"group_id": "party"},
            422,
            "give one `file`, not 2",
        ),
        (photo("img26.jpg"), {"group_id": "party"}, 413, "FACEPIPE_MAX_IMAGE_BYTES"),
    ]
    for files, data, status, words in cases:
        answer = http.post("/v1/search-face", files=files or None, data=data)
        assert answer.status_code == status and words in answer.text, (data, answer.text)
        assert isinstance(answer.json()["detail"], str if status != 422 else (str, list))


def test_a_search_past_the_queue_is_a_503_with_retry_after(app, http):
    services = app.state.services
    selfie = (SAMPLE_IMAGES / "img1.jpg").read_bytes()
    saved, services.search_slots = services.search_slots, threading.BoundedSemaphore(1)
    try:
        services.search_slots.acquire()  # the one place is taken, as by a search being embedded
        answer = http.post("/v1/search-face", files={"file": ("s.jpg", selfie)}, data={"group_id": "party"})
        assert answer.status_code == 503 and answer.headers["Retry-After"].isdigit()
        assert "FACEPIPE_SEARCH_QUEUE" in answer.json()["detail"]
        services.search_slots.release()  # free: the search goes on
        assert http.post("/v1/search-face", files={"file": ("s.jpg", selfie)}, data={"group_id": "party"}).json()[
            "photos"
        ]
    finally:
        services.search_slots = saved


# ------------------------------------------------------------------------------------------------
# People
# ------------------------------------------------------------------------------------------------


def test_people_are_listed_shown_named_split_and_merged(http, home):
    listed = http.get("/v1/groups/party/people")
    assert listed.status_code == 200, listed.text
    people = listed.json()
    # her three faces, then the man beside her in the couple and person09 of img8.jpg
    assert (people["group_id"], people["profile"], people["total_people"]) == ("party", "dlib", 3)
    assert [p["face_count"] for p in people["people"]] == [3, 1, 1]
    assert http.get("/groups/party/people").json() == people  # the seed's path

    her = people["people"][0]["person_id"]
    person = http.get(f"/v1/groups/party/people/{her}").json()
    # each photo by its path within the digested folder, and its id
    assert {f["image_path"] for f in person["faces"]} == {"img1.jpg", "img2.jpg", "couple.jpg"}
    assert person["representative_image_path"] in {"img1.jpg", "img2.jpg", "couple.jpg"}
    assert all(
        f["photo_id"] == image_point_id("party", str(home / "photos" / f["image_path"]), "dlib")
        for f in person["faces"]
    )
    assert all(not p["representative_image_path"].startswith("/") for p in people["people"])
    assert "records" not in person and all(not f["pinned"] for f in person["faces"])

    assert http.post(f"/v1/groups/party/people/{her}/name", json={"name": "Alice"}).json()["name"] == "Alice"
    couple_face = next(f["face_id"] for f in person["faces"] if f["image_path"].endswith("couple.jpg"))
    split = http.post(f"/v1/groups/party/people/{her}/split", json={"face_ids": [couple_face]}).json()
    assert split["face_count"] == 1 and split["person_id"] not in {p["person_id"] for p in people["people"]}
    merged = http.post("/v1/groups/party/people/merge", json={"keep": her, "others": [split["person_id"]]}).json()
    assert merged["name"] == "Alice" and merged["face_count"] == 3
    assert http.post(f"/v1/groups/party/people/{her}/name", json={"name": None}).json()["name"] is None


def test_people_errors_name_what_is_missing(http):
    cases = [
        ("POST", "/v1/groups/party/people/9999/name", {"name": "x"}, 404, "no person 9999"),
        ("GET", "/v1/groups/party/people/9999", None, 404, "no person 9999"),
        ("GET", "/v1/groups/never-digested/people", None, 404, "unknown group 'never-digested'"),
        ("GET", "/v1/groups/party/people", {"profile": "retinaface-arcface"}, 404, "no faces with profile"),
        ("POST", "/v1/groups/party/people/1/split", {"face_ids": []}, 422, "face_ids"),
        ("POST", "/v1/groups/party/people/merge", {"keep": 9999, "others": [1]}, 404, "no person 9999"),
        ("POST", "/v1/cluster-faces", {"group_id": "never-digested"}, 404, "unknown group"),
        ("POST", "/v1/cluster-faces", {"group_id": "party"}, 503, "no Dagster daemon is running"),
    ]
    for method, path, body, status, words in cases:
        if method == "GET":
            answer = http.get(path, params=body)
        else:
            answer = http.post(path, json=body)
        assert answer.status_code == status and words in answer.text, (path, answer.text)


def test_clustering_a_group_the_instance_never_saw_digested_adopts_it_from_the_store(app, http):
    """A store copied or restored beside a fresh instance: the group has faces but no partition. The
    request is then refused for the daemon it needs (none runs here), not as an unknown group."""
    instance = app.state.services.instance()
    instance.delete_dynamic_partition(GROUPS, "party")
    try:
        answer = http.post("/v1/cluster-faces", json={"group_id": "party"})
        assert answer.status_code == 503 and "no Dagster daemon is running" in answer.text, answer.text
        assert instance.has_dynamic_partition(GROUPS, "party")
    finally:
        if not instance.has_dynamic_partition(GROUPS, "party"):
            instance.add_dynamic_partitions(GROUPS, ["party"])


def test_a_damaged_store_is_a_500_naming_it_and_what_to_do(app, http, home, tmp_path):
    """The store the routes are given is a dependency: here, a copy of the app's store with a file of
    its faces' shard cut to half (test_store_damage.py has each kind of damage)."""
    app.state.services.lease().close()  # the app lets go of its files, so that they are copied whole
    damaged = tmp_path / "qdrant"
    shutil.copytree(home / "qdrant", damaged)
    (config,) = (damaged / "groups" / "party" / "faces_dlib").glob("segments/*/payload_storage/config.json")
    os.truncate(config, config.stat().st_size // 2)
    lease = StoreLease(lambda wait: FaceStore.open(path=damaged, wait=wait), damaged)
    app.dependency_overrides[face_store] = lambda: StoreAccess(lease)
    try:
        answer = http.get("/v1/groups/party/people")
    finally:
        app.dependency_overrides.clear()
        lease.close()
    assert answer.status_code == 500, answer.text
    assert f"the face store at {damaged} is damaged" in answer.json()["detail"] and RECOVER in answer.json()["detail"]
    assert http.get("/v1/groups/party/people").status_code == 200  # the app's own store again


# ------------------------------------------------------------------------------------------------
# One photo: faces, embeddings, features
# ------------------------------------------------------------------------------------------------

# What these tests check is the answers (fields, shapes, errors), not how small a face is found:
# the one-photo endpoints look for faces of 160 px and up here (the `portraits` preset's size),
# a tenth of the default's detection time on these photos. The default's small faces are the
# digests' tests' subject (test_detection_recall.py, test_faces.py).
PORTRAIT = {"min_face_size": "160"}


def test_faces_embedding_and_features_of_the_couple(http):
    faces = http.post("/v1/get-faces", files=photo("couple.jpg"), data={**PORTRAIT, "crops": "true"}).json()
    assert faces["total_faces"] == 2 and faces["profile"] == "dlib"
    for face in faces["faces"]:
        assert len(face["landmarks"]) == 5 and face["confidence"] >= 0.5 and face["facial_area"]["w"] > 100
        crop = cv2.imdecode(np.frombuffer(base64.b64decode(face["crop_jpeg_base64"]), np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape[0] > face["facial_area"]["h"]  # the face with a margin
    assert faces["faces"][0]["facial_area"]["x"] < faces["faces"][1]["facial_area"]["x"]  # left to right
    plain = http.post("/get-faces", files=photo("couple.jpg"), data=PORTRAIT).json()
    assert all("crop_jpeg_base64" not in f for f in plain["faces"])

    embedding = http.post("/v1/get-embedding", files=photo("couple.jpg"), data=PORTRAIT).json()
    assert (embedding["profile"], embedding["model"], embedding["total_faces"]) == ("dlib", "Dlib", 2)
    vectors = np.array([f["embedding"] for f in embedding["faces"]])
    assert vectors.shape == (2, 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    # her face in the couple is as close to img1.jpg's as the search threshold says
    img1 = np.array(
        http.post("/v1/get-embedding", files=photo("img1.jpg"), data=PORTRAIT).json()["faces"][0]["embedding"]
    )
    assert max(vectors @ img1) >= PROFILES["dlib"].search_threshold > min(vectors @ img1)

    # deepface's attribute weights are a download, which this machine cannot make: a 503 that names them
    features = http.post("/v1/get-features", files=photo("couple.jpg"), data=PORTRAIT)
    assert features.status_code == 503
    folder = Path(os.environ["DEEPFACE_HOME"]) / ".deepface" / "weights"
    for weight in ("age_model_weights.onnx", "gender_model_weights.onnx", "facial_expression_model_weights.onnx"):
        assert weight in features.json()["detail"]
    assert str(folder) in features.json()["detail"]
    landmarks = http.post("/v1/get-features", files=photo("couple.jpg"), data={**PORTRAIT, "attributes": "none"}).json()
    assert landmarks["total_faces"] == 2 and landmarks["landmark_points"] == 5
    assert [f["landmarks"] for f in landmarks["faces"]] == [f["landmarks"] for f in faces["faces"]]
    race = http.post("/v1/get-features", files=photo("couple.jpg"), data={"attributes": "race"})
    assert race.status_code == 422 and race.json()["detail"][0]["loc"] == ["body", "attributes"]
    # the other profile's weights are a download too: its name and folder, not a traceback
    other = http.post("/v1/get-faces", files=photo("couple.jpg"), data={"profile": "retinaface-arcface"})
    assert other.status_code == 503 and "retinaface.onnx" in other.text and str(folder) in other.text


def test_one_photo_endpoints_refuse_what_is_not_a_photo_or_too_large(http):
    for path in ("/v1/get-faces", "/v1/get-embedding", "/get-features"):
        data = {"attributes": "none"} if path.endswith("features") else {}
        empty = http.post(path, files={"file": ("wall.jpg", no_face_photo())}, data=data)
        assert empty.status_code == 200 and empty.json()["total_faces"] == 0 and empty.json()["faces"] == []
        text = http.post(path, files={"file": ("notes.jpg", b"a text file named .jpg")}, data=data)
        assert text.status_code == 422 and "notes.jpg" in text.text and "not an image" in text.text
        large = http.post(path, files=photo("img26.jpg"), data=data)  # 2.47 MB, over this server's budget
        assert large.status_code == 413 and "FACEPIPE_MAX_IMAGE_BYTES" in large.text
        bomb = http.post(path, files=photo("img40.jpg"), data=data)  # 14.1 MP
        assert bomb.status_code == 413 and "FACEPIPE_MAX_IMAGE_PIXELS" in bomb.text
        # a body longer than any photo may be is refused by its length, before it is received whole
        huge = http.post(path, files={"file": ("huge.jpg", b"\xff\xd8\xff" + bytes(MAX_BYTES + (2 << 20)))})
        assert huge.status_code == 413 and "the request is" in huge.text
        missing = http.post(path, data=data)
        assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "file"]


# ------------------------------------------------------------------------------------------------
# A group's photos: uploaded, digested, listed
# ------------------------------------------------------------------------------------------------


def photos(*names: str) -> list:
    return [("files", (name, (SAMPLE_IMAGES / name).read_bytes(), "image/jpeg")) for name in names]


def test_uploaded_photos_are_kept_safely_digested_and_listed_by_id_and_relative_path(http, home):
    upload = http.post("/v1/groups/uploaded/photos", files=photos("img1.jpg", "img8.jpg"))
    assert upload.status_code == 202, upload.text
    job = upload.json()
    folder = settings.uploads_dir() / "uploaded"
    assert job["status"] == "queued" and job["job_id"] == f"digest-{job['run_id']}"
    assert (job["group_id"], job["source"]) == ("uploaded", "uploads/uploaded")  # not the server's path
    assert "no Dagster daemon is running" in job["warning"]
    # a name with folders is its file name; the same photo again is the same file; another photo
    # by a name already taken is kept beside it, never over it
    img2 = (SAMPLE_IMAGES / "img2.jpg").read_bytes()
    again = [
        ("files", ("../../../outside.jpg", img2, "image/jpeg")),
        ("files", ("img1.jpg", (SAMPLE_IMAGES / "img1.jpg").read_bytes(), "image/jpeg")),
        ("files", ("img8.jpg", img2, "image/jpeg")),
    ]
    assert http.post("/groups/uploaded/photos", files=again).status_code == 202
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(kept) == ["img1.jpg", "img8-2.jpg", "img8.jpg", "outside.jpg"]
    assert kept["img8.jpg"] == (SAMPLE_IMAGES / "img8.jpg").read_bytes() and kept["img8-2.jpg"] == img2
    assert not (home / "outside.jpg").exists() and not (settings.uploads_dir() / "outside.jpg").exists()

    # the queued digest's request, run here (no daemon): the uploads are read though they are
    # under no FACEPIPE_ALLOWED_ROOTS
    instance = instance_for_digests()
    run = instance.get_run_by_id(job["run_id"])
    assert run is not None and run.run_config["ops"]["digest"]["ops"]["list_images"]["config"]["source"] == {
        "local_folder": {"path": str(folder)}
    }
    request = digest_request(str(folder), "uploaded", chunk_size=4, preset="portraits")  # as the party's
    assert materialize(
        [digest],
        instance=instance,
        partition_key="uploaded",
        run_config={"ops": digest_run_config(request, workers=1)["ops"]},
        resources={"face_store": FaceStoreResource(path=str(settings.qdrant_path())), "s3": S3Resource()},
    ).success
    instance.dispose()
    listed = http.get("/v1/groups/uploaded/photos")
    assert listed.status_code == 200, listed.text
    answer = listed.json()
    assert (answer["group_id"], answer["profile"], answer["next_offset"]) == ("uploaded", "dlib", None)
    assert sorted(p["path"] for p in answer["photos"]) == sorted(kept)  # within the source, not the server's path
    assert {p["photo_id"] for p in answer["photos"]} == {
        image_point_id("uploaded", str(folder / name), "dlib") for name in kept
    }
    assert all(p["status"] == "done" and p["faces"] == 1 for p in answer["photos"])

    # a page at a time
    first = http.get("/v1/groups/uploaded/photos", params={"limit": 3}).json()
    rest = http.get("/v1/groups/uploaded/photos", params={"limit": 3, "offset": first["next_offset"]}).json()
    assert len(first["photos"]) == 3 and rest["next_offset"] is None
    assert [p["photo_id"] for p in first["photos"] + rest["photos"]] == [p["photo_id"] for p in answer["photos"]]

    # a face's crop, until its photo is gone from the folder
    found = http.post("/v1/search-face", files=photo("img2.jpg"), data={"group_id": "uploaded"}).json()
    face_ids = {Path(p["image_path"]).name: p["faces"][0]["face_id"] for p in found["photos"]}
    assert set(face_ids) == {"img1.jpg", "img8-2.jpg", "outside.jpg"}  # img1.jpg and img2.jpg: person01
    assert http.get(f"/v1/groups/uploaded/faces/{face_ids['img8-2.jpg']}/crop").status_code == 200
    (folder / "img8-2.jpg").unlink()
    gone = http.get(f"/v1/groups/uploaded/faces/{face_ids['img8-2.jpg']}/crop")
    assert gone.status_code == 404 and "can no longer be read" in gone.json()["detail"]


def test_the_party_photos_are_listed_within_their_folder(http):
    answer = http.get("/v1/groups/party/photos").json()
    faces = {p["path"]: p["faces"] for p in answer["photos"]}
    assert faces == {"img1.jpg": 1, "img2.jpg": 1, "couple.jpg": 2, "img8.jpg": 1}
    bad_page = http.get("/v1/groups/party/photos", params={"offset": "page-2"})
    assert bad_page.status_code == 422 and bad_page.json()["detail"][0]["loc"] == ["query", "offset"]


def test_an_upload_is_refused_as_a_one_photo_endpoint_refuses_it_and_nothing_is_kept(http):
    folder = settings.uploads_dir() / "refused"
    for files, status, words in (
        ([("files", ("notes.jpg", b"not a photo", "image/jpeg"))], 422, "notes.jpg"),
        (photos("img1.jpg", "img26.jpg"), 413, "FACEPIPE_MAX_IMAGE_BYTES"),
        (photos("img40.jpg"), 413, "FACEPIPE_MAX_IMAGE_PIXELS"),
    ):
        answer = http.post("/v1/groups/refused/photos", files=files)
        assert answer.status_code == status and words in answer.json()["detail"], answer.text
    assert not folder.exists()
    small = [("files", (f"wall{n}.jpg", no_face_photo(), "image/jpeg")) for n in range(21)]
    too_many = http.post("/v1/groups/refused/photos", files=small)
    assert too_many.status_code == 422 and "at most 20" in too_many.json()["detail"][0]["msg"]
    assert http.post("/v1/groups/refused/photos").json()["detail"][0]["loc"] == ["body", "files"]
    bad_group = http.post("/v1/groups/..%2F..%2Fetc/photos", files=photos("img1.jpg"))
    assert bad_group.status_code in (404, 422)
    named = http.post("/v1/groups/a%20b/photos", files=photos("img1.jpg"))
    assert named.status_code == 422 and named.json()["detail"][0]["loc"] == ["path", "group_id"]
    assert not folder.exists() and not (settings.uploads_dir() / "a b").exists()


def test_the_photos_of_an_unknown_group_are_404(http):
    answer = http.get("/v1/groups/nobody/photos")
    assert answer.status_code == 404 and "nobody" in answer.json()["detail"]
    assert http.get("/v1/groups/party/photos", params={"profile": "vgg"}).status_code == 404


# ------------------------------------------------------------------------------------------------
# A photo in base64, wherever a file is taken
# ------------------------------------------------------------------------------------------------


def in_base64(name: str) -> str:
    return base64.b64encode((SAMPLE_IMAGES / name).read_bytes()).decode()


def test_a_photo_in_base64_is_answered_as_the_same_file(http):
    as_file = http.post("/v1/search-face", files=photo("img1.jpg"), data={"group_id": "party"}).json()
    as_text = http.post("/v1/search-face", data={"group_id": "party", "image_base64": in_base64("img1.jpg")})
    assert as_text.status_code == 200, as_text.text
    assert as_text.json() == as_file
    data_url = f"data:image/jpeg;base64,{in_base64('couple.jpg')}"
    for path in ("/v1/get-faces", "/v1/get-embedding", "/get-features"):
        data = {**PORTRAIT, "attributes": "none"} if path.endswith("features") else PORTRAIT
        file_answer = http.post(path, files=photo("couple.jpg"), data=data).json()
        text_answer = http.post(path, data={**data, "image_base64": data_url})
        assert text_answer.status_code == 200 and text_answer.json() == file_answer, (path, text_answer.text)


def test_a_photo_in_base64_is_refused_as_a_file_is(http):
    wall, img26 = no_face_photo(), in_base64("img26.jpg")  # img26.jpg is over this server's budget
    for path, data in (("/v1/search-face", {"group_id": "party"}), ("/v1/get-faces", {}), ("/get-embedding", {})):
        both = http.post(
            path, files={"file": ("wall.jpg", wall)}, data={**data, "image_base64": base64.b64encode(wall).decode()}
        )
        assert both.status_code == 422 and "give one photo" in both.json()["detail"][0]["msg"], both.text
        neither = http.post(path, data=data)
        assert neither.status_code == 422 and neither.json()["detail"][0]["loc"] == ["body", "file"]
        garbled = http.post(path, data={**data, "image_base64": "not base64!"})
        assert garbled.status_code == 422 and garbled.json()["detail"][0]["loc"] == ["body", "image_base64"]
        text = http.post(path, data={**data, "image_base64": base64.b64encode(b"a text file").decode()})
        assert text.status_code == 422 and "image_base64" in text.json()["detail"] and "not an image" in text.text
        large = http.post(path, data={**data, "image_base64": img26})
        assert large.status_code == 413 and "FACEPIPE_MAX_IMAGE_BYTES" in large.json()["detail"], large.text


def test_a_face_crop_is_the_face_cut_from_its_photo_as_a_jpeg(http):
    person = http.get("/v1/groups/party/people").json()["people"][0]
    faces = http.get(f"/v1/groups/party/people/{person['person_id']}").json()["faces"]
    face = next(f for f in faces if Path(f["image_path"]).name == "img1.jpg")
    answer = http.get(f"/v1/groups/party/faces/{face['face_id']}/crop")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    crop = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)
    area = face["facial_area"]
    side = int(max(area["w"], area["h"]) * 1.5)  # the face's box and a quarter of it on every side
    assert abs(crop.shape[0] - side) <= 2 and abs(crop.shape[1] - side) <= 2, crop.shape
    # the photo's own pixels there (JPEG saved again: close, not equal)
    photo_image = cv2.imread(str(SAMPLE_IMAGES / "img1.jpg"))
    x0 = int(area["x"] + area["w"] / 2 - side / 2)
    y0 = int(area["y"] + area["h"] / 2 - side / 2)
    original = photo_image[max(0, y0) : max(0, y0) + crop.shape[0], max(0, x0) : max(0, x0) + crop.shape[1]]
    assert original.shape == crop.shape
    assert np.abs(original.astype(int) - crop.astype(int)).mean() < 4


def test_a_crop_of_a_face_the_group_does_not_have_is_404(http):
    person = http.get("/v1/groups/party/people").json()["people"][0]
    for path in (
        f"/v1/groups/wedding/faces/{person['representative_face_id']}/crop",  # another group's face
        "/v1/groups/party/faces/5b0c3d0e-6a86-5f53-9d4e-0b8f2f6f1c27/crop",
        "/groups/party/faces/not-a-face/crop",
    ):
        answer = http.get(path)
        assert answer.status_code == 404 and "no face" in answer.json()["detail"], (path, answer.text)


# ------------------------------------------------------------------------------------------------
# The seed's fields: face ids in the job, processing once dequeued, the CLI's JSON alike
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(app, home) -> dict:
    """A digest of the party's photos into the group "seed" by `facepipe digest` (a run of the
    digest job, executed here, the store handed over by the app's lease): its job."""
    run_facepipe(
        home, "digest", str(home / "photos"), "--group", "seed", "--workers", "1", "--preset", "portraits", "--json"
    )
    [job] = app.state.client.get("/v1/get-digests", params={"group_id": "seed"}).json()["jobs"]
    return job


def test_a_finished_job_carries_its_first_face_ids_and_the_page_for_the_rest(http, finished, monkeypatch):
    job = finished
    assert job["status"] == "completed" and (job["confidence"], job["threads"]) == (0.5, 1)
    page = http.get(f"/v1/get-digests/{job['job_id']}/face-ids").json()
    assert len(job["face_ids"]) == job["total_faces"] == 5 and job["face_ids_next_offset"] is None
    assert sorted(job["face_ids"]) == sorted(page["face_ids"])
    assert http.get(f"/v1/get-digests/{job['job_id']}").json()["face_ids"] == job["face_ids"]
    # past the first FACE_IDS_IN_JOB, the paged endpoint goes on where the job stops
    monkeypatch.setattr(digests_routes, "FACE_IDS_IN_JOB", 2)
    first = http.get(f"/v1/get-digests/{job['job_id']}").json()
    rest = http.get(f"/v1/get-digests/{job['job_id']}/face-ids", params={"offset": first["face_ids_next_offset"]})
    assert len(first["face_ids"]) == 2 and first["face_ids"] + rest.json()["face_ids"] == job["face_ids"]


def test_when_its_code_server_dies_the_service_answers_503_then_loads_another(http, home, queued):
    # `queued` loaded the app's code server (a `dagster api grpc` process of this one); it dies
    (server,) = [
        child for child in psutil.Process().children(recursive=True) if {"api", "grpc"} <= set(child.cmdline())
    ]
    server.kill()
    server.wait(10)
    body = {**DIGEST_EXAMPLE, "local_dir_path": str(home / "photos"), "group_id": "after-the-code-server"}
    lost = http.post("/v1/digest", json=body)
    assert lost.status_code == 503 and lost.headers["Retry-After"] and "could not be queued" in lost.text, lost.text
    assert http.get("/v1/get-digests", params={"group_id": "after-the-code-server"}).json()["total_jobs"] == 0
    again = http.post("/v1/digest", json=body)  # a new code server
    assert again.status_code == 202 and again.json()["status"] == "queued", again.text


def test_a_dequeued_digest_is_processing(http, home):
    instance = instance_for_digests()
    run = create_run_for_test(
        instance, job_name=DIGEST_JOB, status=DagsterRunStatus.STARTING, tags={PARTITION_TAG: "dequeued"}
    )
    instance.dispose()
    answer = http.get(f"/v1/get-digests/digest-{run.run_id}").json()
    assert answer["status"] == "processing" and answer["face_ids"] == []
    listed = http.get("/v1/get-digests", params={"group_id": "dequeued", "status": "processing"}).json()
    assert [j["run_id"] for j in listed["jobs"]] == [run.run_id]


def test_the_cli_json_carries_the_seed_fields_of_the_http_job(http, home, finished):
    jobs = {j["run_id"]: j for j in http.get("/v1/get-digests", params={"limit": 1000}).json()["jobs"]}
    listed = json.loads(run_facepipe(home, "digests", "list", "--limit", "1000", "--json").stdout)
    assert {d["run_id"] for d in listed} == set(jobs)
    seed = ["job_id", "status", "progress", "group_id", "source", "confidence", "threads", "images_total"]
    seed += ["images_processed", "images_failed", "faces_processed", "total_faces", "start_time", "error"]
    for summary in listed:
        http_job = jobs[summary["run_id"]]
        if (http_job["source"] or "").startswith("uploads/"):
            # the service names its own uploads folder within its home; the CLI, on the server, by its path
            assert summary["source"] == str(home / http_job["source"])
            http_job = {**http_job, "source": summary["source"]}
        assert {k: summary[k] for k in seed} == {k: http_job[k] for k in seed}
    job = finished
    shown = json.loads(run_facepipe(home, "digests", "show", job["run_id"], "--json").stdout)
    assert {k: shown[k] for k in seed + ["end_time"]} == {k: job[k] for k in seed + ["end_time"]}


# ------------------------------------------------------------------------------------------------
# Deletes, forget me, verify
# ------------------------------------------------------------------------------------------------


def digested_and_clustered(home: Path, group_id: str) -> None:
    """The party's photos digested into `group_id` and clustered, by the assets in this process."""
    instance = instance_for_digests()
    instance.add_dynamic_partitions(GROUPS, [group_id])
    store = {"face_store": FaceStoreResource(path=str(settings.qdrant_path()))}
    request = digest_request(str(home / "photos"), group_id, chunk_size=4, preset="portraits")  # as the party's
    config = {"ops": digest_run_config(request, workers=1)["ops"]}
    assert materialize(
        [digest], instance=instance, partition_key=group_id, run_config=config, resources={**store, "s3": S3Resource()}
    ).success
    config = {"ops": people_run_config()["ops"]}
    assert materialize([people], instance=instance, partition_key=group_id, run_config=config, resources=store).success
    instance.dispose()


def test_verify_says_whether_two_faces_are_one_person(http):
    threshold = PROFILES["dlib"].search_threshold
    same = http.post("/v1/verify", files={"file1": photo("img1.jpg")["file"], "file2": photo("img2.jpg")["file"]})
    assert same.status_code == 200, same.text
    assert same.json()["verified"] is True and same.json()["similarity"] >= same.json()["threshold"] == threshold
    other = http.post(
        "/v1/verify", data={"image_base64_1": in_base64("img1.jpg"), "image_base64_2": in_base64("img8.jpg")}
    )
    assert other.json()["verified"] is False and other.json()["similarity"] < threshold
    # a stored face of the group against a photo
    person = http.get("/v1/groups/party/people").json()["people"][0]
    stored = http.post(
        "/v1/verify",
        data={"group_id": "party", "face_id": person["representative_face_id"]},
        files={"file2": photo("img2.jpg")["file"]},
    )
    assert stored.status_code == 200 and stored.json()["verified"] is True, stored.text


def test_verify_says_what_is_wrong(http):
    img1 = photo("img1.jpg")["file"]
    wall = http.post("/v1/verify", files={"file1": img1, "file2": ("wall.jpg", no_face_photo())})
    assert wall.status_code == 400 and "no face found" in wall.json()["detail"]
    missing = http.post("/v1/verify", files={"file2": img1})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "file1"]
    no_group = http.post("/v1/verify", data={"face_id": "5b0c3d0e-6a86-5f53-9d4e-0b8f2f6f1c27"}, files={"file2": img1})
    assert no_group.status_code == 422 and "group_id" in no_group.json()["detail"]
    unknown = http.post(
        "/v1/verify",
        data={"group_id": "party", "face_id": "5b0c3d0e-6a86-5f53-9d4e-0b8f2f6f1c27"},
        files={"file2": img1},
    )
    assert unknown.status_code == 404 and "has no face" in unknown.json()["detail"]


def test_deletes_and_forget_me_take_faces_out_of_search_people_and_the_ledger(http, home):
    digested_and_clustered(home, "forgetful")

    def search(name: str) -> list[str]:
        found = http.post("/v1/search-face", files=photo(name), data={"group_id": "forgetful"})
        assert found.status_code == 200, found.text
        return sorted(Path(p["image_path"]).name for p in found.json()["photos"])

    assert search("img8.jpg") == ["img8.jpg"]
    # forget me: person09's face, the photo stays without it
    forgotten = http.post("/v1/groups/forgetful/forget", files=photo("img8.jpg"))
    assert forgotten.status_code == 200, forgotten.text
    assert (forgotten.json()["faces"], forgotten.json()["photo_paths"]) == (1, ["img8.jpg"])
    assert search("img8.jpg") == []
    gone = forgotten.json()["face_ids"][0]
    assert http.get(f"/v1/groups/forgetful/faces/{gone}/crop").status_code == 404

    # a photo by its id: gone from the listing and from search
    listed = {p["path"]: p["photo_id"] for p in http.get("/v1/groups/forgetful/photos").json()["photos"]}
    deleted = http.delete(f"/v1/groups/forgetful/photos/{listed['img2.jpg']}")
    assert deleted.status_code == 200, deleted.text
    assert (deleted.json()["photos"], deleted.json()["faces"], deleted.json()["photo_paths"]) == (1, 1, ["img2.jpg"])
    assert "img2.jpg" not in {p["path"] for p in http.get("/v1/groups/forgetful/photos").json()["photos"]}
    assert search("img1.jpg") == ["couple.jpg", "img1.jpg"]
    assert http.delete(f"/v1/groups/forgetful/photos/{listed['img2.jpg']}").status_code == 404

    # a face, then a person with their photos
    her = next(p for p in http.get("/v1/groups/forgetful/people").json()["people"] if p["face_count"] == 2)
    faces = http.get(f"/v1/groups/forgetful/people/{her['person_id']}").json()["faces"]
    in_couple = next(f["face_id"] for f in faces if Path(f["image_path"]).name == "couple.jpg")
    one = http.delete(f"/v1/groups/forgetful/faces/{in_couple}")
    assert one.status_code == 200 and one.json()["face_ids"] == [in_couple]
    assert search("img1.jpg") == ["img1.jpg"]
    assert http.delete(f"/v1/groups/forgetful/faces/{in_couple}").status_code == 404
    person = http.delete(f"/v1/groups/forgetful/people/{her['person_id']}", params={"with_photos": "true"})
    assert person.status_code == 200 and person.json()["photo_paths"] == ["img1.jpg"], person.text
    assert http.get(f"/v1/groups/forgetful/people/{her['person_id']}").status_code == 404
    assert http.delete(f"/v1/groups/forgetful/people/{her['person_id']}").status_code == 404

    # the group: every photo left, then nothing to delete
    group = http.delete("/v1/groups/forgetful")
    assert group.status_code == 200 and group.json()["photos"] == 2, group.text  # couple.jpg and img8.jpg
    assert http.get("/v1/groups/forgetful/photos").status_code == 404
    again = http.delete("/v1/groups/forgetful")
    assert again.status_code == 404 and "forgetful" in again.json()["detail"]


def test_forget_says_what_is_wrong(http):
    unknown = http.post("/v1/groups/nobody/forget", files=photo("img1.jpg"))
    assert unknown.status_code == 404 and "unknown group" in unknown.json()["detail"]
    wall = http.post("/v1/groups/party/forget", files={"file": ("wall.jpg", no_face_photo())})
    assert wall.status_code == 400 and "no face found" in wall.json()["detail"]
    assert http.post("/v1/groups/party/forget").status_code == 422
