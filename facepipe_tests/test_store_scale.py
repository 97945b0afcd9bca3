"""The embedded store as it grows: faces are indexed segment by segment as writes fill them, and an
optimisation killed midway leaves nothing that later opens keep.

Real Qdrant Edge stores of synthetic faces (random unit vectors: what is tested is where they are
kept and indexed, not who they are); the speed of it all is benchmarks/store_scale.py's.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from facepipe.engine.faces import Face, ImageResult
from facepipe.store import INDEXING_THRESHOLD_KB, FaceStore, faces_collection

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
    """As digests write (1,000 photos at a time here), the write that takes the unindexed segment
    past the threshold indexes it: no digest step or search later finds a backlog."""
    with FaceStore.open(path=tmp_path / "store") as store:
        written = 0
        for n in range(12):
            group = "big" if n % 3 else "small"
            store.write_images(group, "dlib", photos(group, n * 1000, 1000, seed=n), run_id=f"r{n}")
            written += 2000
        info = store.backend._shard(faces_collection("dlib")).info()
        assert info.points_count == written == 24_000
        assert info.indexed_vectors_count >= FACES_TO_INDEX  # the first 20,000 faces, indexed by the tenth write
        assert written - info.indexed_vectors_count < FACES_TO_INDEX
        assert store.count_faces("big", "dlib") + store.count_faces("small", "dlib") == written
        query = photos("big", 1000, 1, seed=1)[0].faces[0].embedding  # a face of the second write
        (best,) = store.nearest_faces("big", "dlib", query, limit=1)
        assert np.isclose(best.score, 1.0) and best.payload["image_path"] == "/photos/big/1000.jpg"


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
        store.backend.upsert(faces_collection("dlib"), points)
    print("written", flush=True)
    store.optimize("dlib")
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
    shard = path / "shards" / faces_collection("dlib")
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
