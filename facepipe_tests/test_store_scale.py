"""The embedded store as it grows: each group in shards of its own, so that work in one group opens
nothing of the others; faces indexed segment by segment as writes fill them; an optimisation
killed midway leaves nothing that later opens keep; a store of one shard per collection (facepipe
before) is split by group when opened.

Real Qdrant Edge stores of synthetic faces (random unit vectors: what is tested is where they are
kept and indexed, not who they are); the speed of it all is benchmarks/store_scale.py's.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from facepipe.engine.faces import Face, ImageResult
from facepipe.store import INDEXING_THRESHOLD_KB, FaceStore, edge, faces_collection
from facepipe_tests.conftest import run_facepipe

FACES_TO_INDEX = INDEXING_THRESHOLD_KB * 1024 // (128 * 4)  # dlib faces in a segment due for indexing


def photos(group: str, first: int, count: int, seed: int) -> list[ImageResult]:
    vectors = np.random.default_rng(seed).standard_normal((count, 2, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    return [
        ImageResult(
            f"/photos/{group}/{first + i}.jpg",
            size=10,
            mtime_ns=1,
            content_hash=f"h{first + i}",
            width=400,
            height=300,
            faces=[Face(j, (10 * j, 20, 30, 30), [(1.0, 2.0)] * 5, 0.9, vectors[i, j]) for j in range(2)],
        )
        for i in range(count)
    ]


@pytest.mark.slow
def test_writes_index_the_faces_as_a_segment_fills_leaving_a_tail_below_the_threshold(tmp_path):
    """As digests write (1,000 photos at a time here), the write that takes the group's unindexed
    segment past the threshold indexes it: no digest step or search later finds a backlog."""
    with FaceStore.open(path=tmp_path / "store") as store:
        written = 0
        for n in range(12):
            store.write_images("big", "dlib", photos("big", n * 1000, 1000, seed=n), run_id=f"r{n}")
            written += 2000
        info = store.backend._shard(faces_collection("dlib"), "big").info()
        assert info.points_count == written == 24_000
        assert info.indexed_vectors_count >= FACES_TO_INDEX  # the first 20,000 faces, indexed by the tenth write
        assert written - info.indexed_vectors_count < FACES_TO_INDEX
        assert store.count_faces("big", "dlib") == written
        query = photos("big", 1000, 1, seed=1)[0].faces[0].embedding  # a face of the second write
        (best,) = store.nearest_faces("big", "dlib", query, limit=1)
        assert np.isclose(best.score, 1.0) and best.payload["image_path"] == "/photos/big/1000.jpg"


def cached_fraction(files: list) -> float:
    """How much of `files` is in the OS's page cache (util-linux's fincore)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    resident, size = sum(map(int, out[0::2])), sum(map(int, out[1::2]))
    return resident / size


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore to see the OS's cache")
def test_the_first_search_of_a_shard_reads_its_vectors_and_graph_in_whole(tmp_path):
    """Qdrant Edge drops a shard's files from the OS's cache when it is closed; the next process's
    first search reads the group's vectors and graph back in one pass, not a page at a time as the
    search wanders the graph (benchmarks/store_scale.py measures what that saves)."""
    with FaceStore.open(path=tmp_path / "store") as store:
        for n in range(11):  # 22,000 faces: one indexed segment
            store.write_images("big", "dlib", photos("big", n * 1000, 1000, seed=n), run_id=f"r{n}")
    shard = tmp_path / "store" / "groups" / "big" / faces_collection("dlib")
    searched = list(edge.searched_files(shard))
    graphs = [f for f in searched if "vector_index" in f.parts and f.stat().st_size > 0]
    assert graphs, "the faces were never indexed: nothing to read in"
    assert cached_fraction(searched) < 0.5  # what closing the store left in the cache
    with FaceStore.open(path=tmp_path / "store") as store:
        store.count_faces("big", "dlib")  # the shard opened: its files are not read yet
        assert cached_fraction(searched) < 0.5
        query = photos("big", 1000, 1, seed=1)[0].faces[0].embedding
        (best,) = store.nearest_faces("big", "dlib", query, limit=1)
        assert best.payload["image_path"] == "/photos/big/1000.jpg"
        assert cached_fraction(searched) > 0.95


def test_work_in_one_group_opens_only_that_groups_shards(tmp_path):
    """A digest's store steps and a search read their group's shards and no other's: what they cost
    does not grow with the other groups (benchmarks/store_scale.py measures it)."""
    path = tmp_path / "store"
    with FaceStore.open(path=path) as store:
        for group in ("big", "small"):
            store.write_images(group, "dlib", photos(group, 0, 50, seed=len(group)), run_id="r")
    assert sorted(p.name for p in (path / "groups").iterdir()) == ["big", "small"]
    with FaceStore.open(path=path) as store:
        query = photos("small", 0, 1, seed=5)[0].faces[0].embedding
        (best,) = store.nearest_faces("small", "dlib", query, limit=1)
        assert best.payload["image_path"] == "/photos/small/0.jpg"
        assert store.count_images("small", "dlib") == 50 and store.count_faces("small", "dlib") == 100
        assert {group for _, group in store.backend.shards} == {"small"}
        assert store.get_faces("small", "dlib", [best.id]) and not store.get_faces("big", "dlib", [best.id])
        store.delete_group("small", "dlib")
    assert sorted(p.name for p in (path / "groups").iterdir()) == ["big"]


def test_a_long_lived_process_keeps_at_most_open_shards_and_reopens_a_closed_one(tmp_path, monkeypatch):
    """A service that serves many groups keeps OPEN_SHARDS shards open at most (the least recently
    used closed, its Qdrant Edge lock released); a group whose shards were closed reads again."""
    monkeypatch.setattr(edge, "OPEN_SHARDS", 3)
    with FaceStore.open(path=tmp_path / "store") as store:
        for group in ("a", "b", "c"):
            store.write_images(group, "dlib", photos(group, 0, 3, seed=1), run_id="r")  # two shards each
            assert len(store.backend.shards) <= 3
        assert ("faces_dlib", "a") not in store.backend.shards
        query = photos("a", 0, 1, seed=1)[0].faces[0].embedding
        (best,) = store.nearest_faces("a", "dlib", query, limit=1)
        assert best.payload["image_path"] == "/photos/a/0.jpg" and store.count_images("a", "dlib") == 3
        assert len(store.backend.shards) <= 3


OLD_LAYOUT = {"faces_dlib": 128, "images_dlib": 1}


@pytest.mark.parametrize("how", ["first open", "facepipe store migrate"])
def test_a_store_of_one_shard_per_collection_is_split_by_group(tmp_path, how):
    """facepipe before kept one Qdrant Edge shard per collection (`shards/<name>`): written here as it
    did, with Qdrant Edge itself; the first open (or the CLI) moves every point to its group's shard."""
    import qdrant_edge as q

    path = tmp_path / "qdrant"  # FACEPIPE_HOME's store
    for name, size in OLD_LAYOUT.items():
        config = q.EdgeConfig(vectors=q.EdgeVectorParams(size=size, distance=q.Distance.Cosine))
        shard = q.EdgeShard.create(str(path / "shards" / name), config)
        for group in ("a", "b"):
            points = []
            for r in photos(group, 0, 700, seed=0):  # past a scroll page (1,024) in all
                image = {"group_id": group, "image_path": r.path, "status": "done", "faces": 2}
                if size == 1:
                    points.append(q.Point(str(uuid.uuid5(uuid.NAMESPACE_URL, r.path)), [1.0], image))
                    continue
                for face in r.faces:
                    face_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{r.path}{face.face_index}"))
                    payload = {"group_id": group, "image_path": r.path, "face_index": face.face_index}
                    points.append(q.Point(face_id, face.embedding.tolist(), payload))
            shard.update(q.UpdateOperation.upsert_points(points))
        shard.close()

    if how == "facepipe store migrate":
        out = run_facepipe(tmp_path, "store", "migrate").stdout
        assert f"split {path} into a shard per group: 2800 faces_dlib, 1400 images_dlib" in out
        assert "nothing to migrate" in run_facepipe(tmp_path, "store", "migrate").stdout
    with FaceStore.open(path=path) as store:
        assert not (path / "shards").exists() and sorted(p.name for p in (path / "groups").iterdir()) == ["a", "b"]
        for group in ("a", "b"):
            assert store.count_faces(group, "dlib") == 1400 and store.count_images(group, "dlib") == 700
            query = photos(group, 0, 1, seed=0)[0].faces[1].embedding
            (best,) = store.nearest_faces(group, "dlib", query, limit=1)
            assert np.isclose(best.score, 1.0) and best.payload == {
                "group_id": group,
                "image_path": f"/photos/{group}/0.jpg",
                "face_index": 1,
            }
        assert not store.count_faces("c", "dlib")


def test_a_store_of_the_old_layout_that_holds_nothing_opens_as_a_new_one(tmp_path):
    """facepipe before made `shards/` at the first open, before any write: such a store (a home
    whose store was opened, never written) is split into nothing, and takes writes."""
    path = tmp_path / "store"
    (path / "shards").mkdir(parents=True)
    with FaceStore.open(path=path) as store:
        assert not (path / "shards").exists() and not store.count_faces("g", "dlib")
        store.write_images("g", "dlib", photos("g", 0, 2, seed=0), run_id="r")
        assert store.count_faces("g", "dlib") == 4


def test_the_old_shards_a_killed_split_left_are_deleted_at_the_next_open(tmp_path):
    """A split killed after the new shards took their place, while it deleted the old ones
    (`shards.migrated`, as big as the store), leaves them to the next open to delete."""
    path = tmp_path / "store"
    with FaceStore.open(path=path) as store:
        store.write_images("g", "dlib", photos("g", 0, 2, seed=0), run_id="r")
    leftover = path / "shards.migrated" / faces_collection("dlib") / "segments"
    leftover.mkdir(parents=True)
    (leftover / "points.dat").write_bytes(b"old" * 1000)
    with FaceStore.open(path=path) as store:
        assert not (path / "shards.migrated").exists()
        assert store.count_faces("g", "dlib") == 4


UNINDEXED_STORE = """
import sys
import uuid
import numpy as np
from facepipe.store import FaceStore, StoredPoint, faces_collection
# a store written without indexing (by facepipe before it indexed as it wrote), then optimised
with FaceStore.open(path=sys.argv[1]) as store:
    store.ensure_collections("dlib")
    rng = np.random.default_rng(0)
    for start in range(0, {faces}, 2000):
        vectors = rng.standard_normal((2000, 128)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [str(uuid.UUID(int=start + i + 1)) for i in range(2000)]
        points = [StoredPoint(id, {{"group_id": "g"}}, v.tolist()) for id, v in zip(ids, vectors)]
        store.backend.upsert(faces_collection("dlib"), "g", points)
    print("written", flush=True)
    store.optimize("g", "dlib")
    print("optimised", flush=True)
"""


@pytest.mark.slow
def test_an_optimisation_killed_midway_leaves_nothing_the_next_open_keeps(tmp_path):
    """SIGKILL while Qdrant Edge builds a segment's index: the half-built segment in
    `temp_segments/` is removed by the next open, and every face written is there."""
    faces = 2 * FACES_TO_INDEX
    script = tmp_path / "optimise.py"
    script.write_text(textwrap.dedent(UNINDEXED_STORE.format(faces=faces)))
    path = tmp_path / "store"
    shard = path / "groups" / "g" / faces_collection("dlib")
    process = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert process.stdout.readline().strip() == "written"
        deadline = time.time() + 600
        while not any(p.is_file() for p in (shard / "temp_segments").rglob("*")):
            assert process.poll() is None, "the optimisation ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert any((shard / "temp_segments").iterdir()), "the kill left nothing to clean: the test proves nothing"

    with FaceStore.open(path=path) as store:
        assert store.count_faces("g", "dlib") == faces
        assert not (shard / "temp_segments").exists()
        rng = np.random.default_rng(0)
        first = rng.standard_normal(128).astype(np.float32)
        (best,) = store.nearest_faces("g", "dlib", first / np.linalg.norm(first), limit=1)
        assert best.id == str(uuid.UUID(int=1))
