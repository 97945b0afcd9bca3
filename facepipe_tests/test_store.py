"""The face store on both its backends: deterministic ids, the ledger, changed photos replaced.

`backend` runs each test on Qdrant Edge (the embedded default) and on qdrant-client, whose local
mode stands in here for a Qdrant server: it is the same ServerBackend code a server goes through.
"""

import numpy as np
import pytest

from facepipe.defs.digest.assets import unsound_faces
from facepipe.engine.faces import Face, ImageResult
from facepipe.store import FaceStore, Where, face_point_id, faces_collection


def result(path, content_hash, faces=1, previously=False) -> ImageResult:
    vectors = np.eye(128, dtype=np.float32)
    return ImageResult(
        path,
        size=10,
        mtime_ns=1,
        content_hash=content_hash,
        width=100,
        height=80,
        previously_digested=previously,
        faces=[Face(i, (1, 2, 3, 4), [(1.0, 2.0)] * 5, 0.9, vectors[i]) for i in range(faces)],
    )


@pytest.fixture(params=["edge", "local"])
def open_store(request, tmp_path):
    return lambda: FaceStore.open(path=tmp_path / "store", backend=request.param)


def test_point_ids_are_deterministic_and_distinct():
    assert face_point_id("g", "/a.jpg", "h", 0, "dlib") == face_point_id("g", "/a.jpg", "h", 0, "dlib")
    ids = {
        face_point_id(*key)
        for key in [
            ("g", "/a.jpg", "h", 0, "dlib"),
            ("g", "/a.jpg", "h", 1, "dlib"),
            ("g2", "/a.jpg", "h", 0, "dlib"),
            ("g", "/a.jpg", "h2", 0, "dlib"),
            ("g", "/a.jpg", "h", 0, "retinaface-arcface"),
            ("g", "/copy of a.jpg", "h", 0, "dlib"),  # the same photo under another name
        ]
    }
    assert len(ids) == 6


def test_writing_the_same_results_twice_does_not_duplicate(open_store):
    with open_store() as store:
        store.write_images("g", "dlib", [result("/a.jpg", "h1", faces=2)], run_id="r1")
        store.write_images("g", "dlib", [result("/a.jpg", "h1", faces=2)], run_id="r2")
        assert store.count_faces("g", "dlib") == 2
        assert store.count_faces("other", "dlib") == 0
        assert store.digested_images("g", "dlib")["/a.jpg"].content_hash == "h1"


def test_a_changed_photo_replaces_its_old_faces(open_store):
    with open_store() as store:
        store.write_images("g", "dlib", [result("/a.jpg", "old", faces=2), result("/b.jpg", "b")], run_id="r1")
        counts = store.write_images("g", "dlib", [result("/a.jpg", "new", faces=1, previously=True)], run_id="r2")
        assert counts.faces_replaced == 2 and counts.faces_stored == 1
        hashes = sorted(p.payload["content_hash"] for p in store.scroll_faces("g", "dlib"))
        assert hashes == ["b", "new"]


def test_failed_photos_are_recorded_but_not_counted_as_digested(open_store):
    failed = ImageResult("/bad.jpg", 5, 1, error="cannot decode: not an image")
    with open_store() as store:
        store.write_images("g", "dlib", [failed], run_id="r1")
        assert store.digested_images("g", "dlib") == {}
        (record,) = store.scroll_images("g", "dlib")
        assert record.payload["status"] == "failed" and "not an image" in record.payload["error"]


def test_a_digests_totals_count_its_own_work_and_see_a_face_gone_missing(open_store):
    with open_store() as store:
        store.write_images("g", "dlib", [result("/old.jpg", "o", faces=3)], run_id="r1")
        store.write_images("g", "dlib", [result("/a.jpg", "a", faces=2), result("/b.jpg", "b")], run_id="r2")
        totals = store.finish_digest("g", "dlib", "r2")
        assert (totals.faces_in_group, totals.faces_of_run, totals.faces_in_ledger_of_run) == (6, 3, 3)
        assert unsound_faces(store, "g", "dlib", "r2") == []
        # a face of the run gone from the store (a damaged store, a write lost): the ledger disagrees
        store.backend.delete(faces_collection("dlib"), "g", Where({"image_path": "/b.jpg"}))
        totals = store.finish_digest("g", "dlib", "r2")
        assert (totals.faces_of_run, totals.faces_in_ledger_of_run) == (2, 3)


def test_the_sound_vectors_check_names_a_face_with_a_bad_vector_or_a_box_outside_its_photo(tmp_path):
    # on Qdrant Edge: qdrant-client refuses NaN before it is sent, and Qdrant stores cosine vectors
    # normalised, so a vector of another length cannot be shown
    bad = result("/bad.jpg", "x", faces=2)
    bad.faces[0].embedding = np.full(128, np.nan, np.float32)
    bad.faces[1].box = (90, 2, 20, 4)  # past the photo's right edge (100 px wide)
    with FaceStore.open(path=tmp_path / "store") as store:
        store.write_images("g", "dlib", [result("/good.jpg", "g", faces=2)], run_id="r1")
        store.write_images("g", "dlib", [bad], run_id="r2")
        assert unsound_faces(store, "g", "dlib", "r1") == []
        problems = sorted(face["problem"] for face in unsound_faces(store, "g", "dlib", "r2"))
    assert problems == [
        "box {'x': 90, 'y': 2, 'w': 20, 'h': 4} outside the 100 x 80 photo",
        "vector of 128 values, not 128 finite ones",
    ]


def test_nearest_faces_stay_within_the_group(open_store):
    with open_store() as store:
        store.write_images("g1", "dlib", [result("/a.jpg", "h", faces=3)], run_id="r")
        store.write_images("g2", "dlib", [result("/b.jpg", "h2", faces=3)], run_id="r")
        query = np.eye(128, dtype=np.float32)[1]
        best = store.nearest_faces("g1", "dlib", query, limit=2)
        assert [p.payload["group_id"] for p in best] == ["g1", "g1"]
        assert best[0].payload["face_index"] == 1 and np.isclose(best[0].score, 1.0)
        assert store.backend.exists(faces_collection("dlib"))


def test_a_qdrant_server_that_cannot_be_reached_is_one_line_naming_it_at_once(tmp_path):
    import time

    from facepipe.store import StoreUnavailable
    from facepipe_tests.conftest import SAMPLE_IMAGES, free_port, run_facepipe

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"the Qdrant server at {url} cannot be reached"):
        with FaceStore.open(url=url):
            pass
    assert time.monotonic() - started < 10
    result = run_facepipe(
        tmp_path, "search", str(SAMPLE_IMAGES / "img1.jpg"), "--group", "g", check=False, env={"QDRANT_URL": url}
    )
    assert result.returncode == 1 and f"the Qdrant server at {url} cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr
