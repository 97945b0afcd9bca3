"""From qdrant-client's local mode (facepipe's embedded store before Qdrant Edge) to Qdrant Edge, and
people collections of a server from before people had vectors."""

import json
import os
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from facepipe.engine.profiles import PROFILES
from facepipe.store.backend import UPSERT_BATCH, Backend
from facepipe.store.edge import EdgeBackend
from facepipe.store.ids import faces_collection, kind_of, profile_of
from facepipe.store.lock import lock_store
from facepipe.store.records import StoredPoint, Where


def is_local_mode_store(root: str | os.PathLike[str]) -> bool:
    """A folder written by qdrant-client's local mode: meta.json and collection/<name>/storage.sqlite."""
    return (Path(root) / "meta.json").is_file() and (Path(root) / "collection").is_dir()


def migrate_local_store(root: str | os.PathLike[str], locked: bool = False) -> dict[str, int]:
    """Copy every collection of a local-mode store at `root` into Qdrant Edge shards, same ids and
    payloads, then move the old files to `<root>/local-mode-backup/`. Returns points per collection.
    `locked`: the caller holds the store's lock already.

    Safe to interrupt: the shards are built in `<root>/shards.migrating` and take their place only
    once complete; the old files move last, so a store is always one layout or the other.
    """
    from facepipe.store.server import ServerBackend  # qdrant-client takes seconds to import

    root = Path(root)
    lock = None if locked else lock_store(root)
    try:
        if not is_local_mode_store(root):
            return {}
        building = root / "shards.migrating"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        old = ServerBackend.connect(path=root)
        copied: dict[str, int] = {}
        try:
            new = EdgeBackend(building)  # shards.migrating/shards/<name>
            try:
                names = [c.name for c in old.client.get_collections().collections]
                # faces first: people vectors are the mean of their faces
                for name in sorted(names, key=lambda n: {"faces": 0, "images": 1}.get(kind_of(n), 2)):
                    copied[name] = _copy_collection(old, new, name)
            finally:
                new.close()
        finally:
            old.close()
        backup = root / "local-mode-backup"
        backup.mkdir(exist_ok=True)
        shutil.rmtree(root / "shards", ignore_errors=True)  # nothing in it: the old layout had none
        (building / "shards").rename(root / "shards")
        for item in ("collection", "meta.json", ".lock"):
            if (root / item).exists():
                (root / item).rename(backup / item)
        shutil.rmtree(building, ignore_errors=True)
        (backup / "MIGRATED.json").write_text(
            json.dumps(
                {
                    "migrated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "points": copied,
                    "note": "qdrant-client local-mode files, as they were before facepipe moved this store to "
                    "Qdrant Edge "
                    "(../shards). Delete this folder once the migrated store has served you well.",
                },
                indent=2,
            )
        )
        return copied
    finally:
        if lock is not None:
            lock.close()


def _copy_collection(old: Backend, new: Backend, name: str) -> int:
    kind, dimension = kind_of(name), PROFILES[profile_of(name)].dimension
    if kind == "people":
        # people were vectorless; their vector is now the mean of their faces' unit embeddings
        new.create(name, dimension, distance="dot")
        return copy_people(new, new, name, old.scroll(name))
    new.create(name, dimension if kind == "faces" else None)
    return _upsert_in_batches(new, name, old.scroll(name, with_vectors=kind == "faces"))


def _upsert_in_batches(backend: Backend, name: str, points: Iterable[StoredPoint]) -> int:
    """Write `points` UPSERT_BATCH at a time (they may come from a scroll of any size); how many.
    Faces are indexed as they fill, as FaceStore writes them."""
    n, batch = 0, []
    for point in points:
        batch.append(point)
        n += 1
        if len(batch) == UPSERT_BATCH:
            _upsert(backend, name, batch)
            batch = []
    _upsert(backend, name, batch)
    return n


def _upsert(backend: Backend, name: str, points: list[StoredPoint]) -> None:
    backend.upsert(name, points)
    if kind_of(name) == "faces":
        backend.optimize(name)  # free unless this write took a segment past the indexing threshold


def copy_people(faces_from: Backend, to: Backend, name: str, people: Iterable[StoredPoint]) -> int:
    """Write the people collection `name` of `to`, each person with their vector: the mean unit
    embedding of their faces in `faces_from`. How many people."""
    profile = profile_of(name)
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = {}
    for face in faces_from.scroll(
        faces_collection(profile), Where(), with_vectors=True, payload_keys=("group_id", "person_id")
    ):
        person = face.payload.get("person_id")
        if person is None:
            continue
        key = (face.payload["group_id"], person)
        vector = np.asarray(face.vector, np.float64)
        sums[key] = sums.get(key, 0) + vector / max(float(np.linalg.norm(vector)), 1e-12)
        counts[key] = counts.get(key, 0) + 1

    def with_mean(point: StoredPoint) -> StoredPoint:
        key = (point.payload["group_id"], point.payload["person_id"])
        mean = sums[key] / counts[key] if key in sums else np.zeros(PROFILES[profile].dimension)
        return StoredPoint(point.id, point.payload, mean.tolist())

    return _upsert_in_batches(to, name, map(with_mean, people))
