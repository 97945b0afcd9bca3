"""The embedded store's promises across processes and versions: a store written by facepipe's
previous store code (qdrant-client's local mode) is migrated with a backup and answers as before;
faces acknowledged before a SIGKILL are there after it; a second process is told the store is busy."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from facepipe.domain.people import list_people
from facepipe.domain.search import search_faces
from facepipe.engine.results import ImageResult
from facepipe.store import FaceStore, StoreBusy, is_local_mode_store
from facepipe_tests.conftest import REPO, SAMPLE_IMAGES, run_facepipe


def write_as_local_mode(path, faces, people) -> None:
    """What facepipe wrote before Qdrant Edge, call for call (store.py and people.py of that version):
    qdrant-client local mode, `faces_dlib` cosine, `images_dlib` and `people_dlib` without vectors."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(path))
    client.create_collection(
        "faces_dlib", vectors_config=models.VectorParams(size=128, distance=models.Distance.COSINE)
    )
    client.create_collection("images_dlib", vectors_config={})
    client.create_collection("people_dlib", vectors_config={})
    client.upsert("faces_dlib", [models.PointStruct(id=f.id, vector=f.vector, payload=f.payload) for f in faces])
    paths = sorted({f.payload["image_path"] for f in faces})
    client.upsert(
        "images_dlib",
        [
            models.PointStruct(
                id=f"00000000-0000-0000-0000-{i:012d}",
                vector={},
                payload={
                    "group_id": "sample",
                    "image_path": p,
                    "status": "done",
                    "content_hash": "h",
                    "size": 1,
                    "mtime_ns": 1,
                    "faces": 1,
                },
            )
            for i, p in enumerate(paths)
        ],
    )
    client.upsert("people_dlib", [models.PointStruct(id=p.id, vector={}, payload=p.payload) for p in people])
    client.close()


@pytest.fixture(scope="module")
def old_store(sample_people, tmp_path_factory):
    """The clustered sample group rewritten in the old layout, beside the searches it answered."""
    home, _ = sample_people
    with FaceStore.open(path=home / "qdrant") as store:
        faces = list(store.scroll_faces("sample", "dlib", with_vectors=True))
        people = list(store.scroll_people("sample", "dlib"))
        expected = search_faces(store, str(SAMPLE_IMAGES / "img1.jpg"), "sample").to_dict()
        expected_people = list_people(store, "sample")
    for p in people:  # the old people had no internal keys and no vectors
        p.payload.pop("stale", None)
    old = tmp_path_factory.mktemp("old_home") / "home"
    shutil.copytree(home, old, ignore=shutil.ignore_patterns("qdrant"))  # the Dagster instance, as it was
    write_as_local_mode(old / "qdrant", faces, people)
    assert is_local_mode_store(old / "qdrant")
    return old, len(faces), expected, expected_people


@pytest.mark.e2e
def test_a_local_mode_store_is_migrated_on_first_open_and_answers_as_before(old_store, tmp_path):
    source, n_faces, expected, expected_people = old_store
    home = tmp_path / "home"
    shutil.copytree(source, home)
    with FaceStore.open(path=home / "qdrant") as store:
        assert store.count_faces("sample", "dlib") == n_faces
        photos = {f.payload["image_path"] for f in store.scroll_faces("sample", "dlib")}
        assert set(store.digested_images("sample", "dlib")) == photos
        assert search_faces(store, str(SAMPLE_IMAGES / "img1.jpg"), "sample").to_dict() == expected
        assert list_people(store, "sample") == [{**p} for p in expected_people]
    backup = home / "qdrant" / "local-mode-backup"
    assert (backup / "collection" / "faces_dlib").is_dir() and not is_local_mode_store(home / "qdrant")
    assert json.loads((backup / "MIGRATED.json").read_text())["points"]["faces_dlib"] == n_faces

    # the migrated people table takes part in clustering as before: nothing to place, no one renumbered
    counts = json.loads(run_facepipe(home, "people", "cluster", "--group", "sample", "--json").stdout)
    assert counts["faces_assigned"] == 0 and counts["people"] == len(expected_people)
    full = json.loads(run_facepipe(home, "people", "cluster", "--group", "sample", "--full", "--json").stdout)
    assert full["faces_assigned"] == 0 and full["new_people"] == 0


@pytest.mark.e2e
def test_facepipe_store_migrate_does_it_on_demand(old_store, tmp_path):
    source, n_faces, _, _ = old_store
    home = tmp_path / "home"
    shutil.copytree(source, home)
    out = run_facepipe(home, "store", "migrate").stdout
    assert f"{n_faces} faces_dlib" in out and "local-mode-backup" in out
    assert "nothing to migrate" in run_facepipe(home, "store", "migrate").stdout
    with FaceStore.open(path=home / "qdrant") as store:
        assert store.count_faces("sample", "dlib") == n_faces


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from facepipe.engine.faces import Face, ImageResult
    from facepipe.store import FaceStore, face_point_id

    rng = np.random.default_rng(0)
    with FaceStore.open(path=sys.argv[1]) as store:
        for batch in range(10_000):
            results = []
            for i in range(20):
                path = f"/photos/{batch:05d}-{i:02d}.jpg"
                vectors = rng.normal(size=(2, 128)).astype(np.float32)
                results.append(ImageResult(path, 1, 1, content_hash=path, width=10, height=10, faces=[
                    Face(k, (1, 2, 3, 4), [(1.0, 2.0)] * 5, 0.9, vectors[k] / np.linalg.norm(vectors[k]))
                    for k in range(2)]))
            store.write_images("g", "dlib", results, run_id="killed")
            # acknowledged: write() returned
            ids = (face_point_id("g", r.path, r.content_hash, k, "dlib") for r in results for k in range(2))
            print(" ".join(ids), flush=True)
""")


def test_faces_acknowledged_before_a_sigkill_are_there_after_it(tmp_path):
    store_path = tmp_path / "qdrant"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store_path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    acknowledged = []
    for line in writer.stdout:
        acknowledged += line.split()
        if len(acknowledged) >= 4000:  # 100 acknowledged writes, and more under way
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    acknowledged += (writer.stdout.read() or "").split()  # lines printed before the kill landed
    with FaceStore.open(path=store_path) as store:
        found = {p.id for p in store.get_faces("g", "dlib", acknowledged)}
        assert found == set(acknowledged)
        assert store.count_faces("g", "dlib") >= len(acknowledged)
        assert len(store.digested_images("g", "dlib")) >= len(acknowledged) // 2


def test_a_store_held_by_another_process_is_busy_whatever_holds_it(tmp_path):
    store_path = tmp_path / "qdrant"
    with FaceStore.open(path=store_path) as store:
        store.write_images("g", "dlib", [ImageResult("/a.jpg", 1, 1, content_hash="a", faces=[])], run_id="r")
    # facepipe's own lock file, held by another facepipe process
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from facepipe.store import FaceStore
        with FaceStore.open(path={str(store_path)!r}) as store:
            print("open", flush=True)
            time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreBusy, match="in use by another process"):
            with FaceStore.open(path=store_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    # Qdrant Edge's own lock on a shard's WAL ("failed to open WAL ... WouldBlock"), held by a
    # process that does not go through facepipe's lock file
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from qdrant_edge import EdgeShard
        shard = EdgeShard.load({str(store_path / "groups" / "g" / "images_dlib")!r})
        print("open", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with FaceStore.open(path=store_path) as store:
            with pytest.raises(StoreBusy, match="in use by another process"):
                store.count_images("g", "dlib")  # the shard the holder holds
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.e2e
def test_people_on_a_server_store_match_the_embedded_ones_and_old_people_get_vectors(
    old_store, sample_people, tmp_path
):
    # qdrant-client's local mode stands in for a server: the same ServerBackend code. The old layout
    # has people without vectors, as a server written by the previous code would: they are rebuilt.
    from facepipe.domain.people import merge_people, name_person, update_people

    source, n_faces, _, expected_people = old_store
    server = tmp_path / "server"
    shutil.copytree(source / "qdrant", server)
    embedded = tmp_path / "embedded"
    shutil.copytree(sample_people[0] / "qdrant", embedded)
    answers = []
    for store_of in (lambda: FaceStore.open(path=server, backend="local"), lambda: FaceStore.open(path=embedded)):
        with store_of() as store:
            assert update_people(store, "sample", "dlib")["faces_assigned"] == 0  # old people, now with vectors
            assert list_people(store, "sample") == expected_people
            full = update_people(store, "sample", "dlib", full=True)
            two = [p["person_id"] for p in list_people(store, "sample")[:2]]
            name_person(store, "sample", two[0], "Ada")
            merged = merge_people(store, "sample", two[0], [two[1]])
            answers.append((full, merged["face_count"], merged["name"], len(list_people(store, "sample"))))
    assert answers[0] == answers[1] and answers[0][0]["faces"] == n_faces
