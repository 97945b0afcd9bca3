"""Stores written by earlier facepipes, brought to the current layout when opened: qdrant-client's
local mode (the embedded store before Qdrant Edge) and Qdrant Edge with one shard per collection
(before a shard per group) become a shard per group and collection; people collections of a
server from before people had vectors get them."""

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facepipe.engine.profiles import PROFILES
from facepipe.store.backend import INDEXED_AS_THEY_FILL, SCROLL_PAGE, UPSERT_BATCH, Backend, stored_point
from facepipe.store.edge import SPECS, EdgeBackend
from facepipe.store.errors import store_errors
from facepipe.store.ids import faces_collection, kind_of, profile_of
from facepipe.store.lock import lock_store
from facepipe.store.records import StoredPoint

if TYPE_CHECKING:
    import qdrant_edge


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
    with _held(root, locked):
        if not is_local_mode_store(root):
            return {}
        building = root / "shards.migrating"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        old = ServerBackend.connect(path=root)
        copied: dict[str, int] = {}
        try:
            new = EdgeBackend(building)  # shards.migrating/groups/<group>/<name>
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
        _move_in(building, root)
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
                    "(../groups). Delete this folder once the migrated store has served you well.",
                },
                indent=2,
            )
        )
        return copied


def is_shard_per_collection_store(root: str | os.PathLike[str]) -> bool:
    """A Qdrant Edge store with one shard per collection (`<root>/shards/<name>`), facepipe's layout
    before a shard per group."""
    return (Path(root) / "shards").is_dir()


# where a split puts the old shards while it deletes them
OLD_SHARDS = "shards.migrated"


def split_is_due(root: str | os.PathLike[str]) -> bool:
    """A store of one shard per collection to split, or the old shards a killed split left to delete."""
    return is_shard_per_collection_store(root) or (Path(root) / OLD_SHARDS).exists()


def split_shards_by_group(root: str | os.PathLike[str], locked: bool = False) -> dict[str, int]:
    """Copy each collection's shard of a store at `root` (`shards/<name>`) into a shard per group
    (`groups/<group>/<name>`), same ids, payloads and vectors; then delete the old shards. Returns
    points per collection. `locked`: the caller holds the store's lock already.

    Safe to interrupt: the new shards are built in `<root>/groups.migrating` and take their place
    only once complete; the old ones are renamed away (`shards.migrated`) before they are deleted,
    so a store is always one layout or the other (and the next open deletes what a kill left there).
    """
    import qdrant_edge

    root = Path(root)
    with _held(root, locked):
        # the old shards of a split killed after the new ones took their place (see below)
        shutil.rmtree(root / OLD_SHARDS, ignore_errors=True)
        if not is_shard_per_collection_store(root):
            return {}
        building = root / "groups.migrating"
        shutil.rmtree(building, ignore_errors=True)
        copied: dict[str, int] = {}
        new = EdgeBackend(building)
        try:
            for old_path in sorted(p for p in (root / "shards").iterdir() if (p / "edge_config.json").is_file()):
                name = old_path.name
                vectors = json.loads((old_path / "edge_config.json").read_text())["vectors"][""]
                size = None if kind_of(name) == "images" else vectors["size"]  # the ledger's is a placeholder
                new.create(name, size, "dot" if vectors["distance"] == "Dot" else "cosine")
                with store_errors(root, name, old_path):
                    old = qdrant_edge.EdgeShard.load(str(old_path))
                try:
                    copied[name] = _upsert_in_batches(new, name, _shard_points(old, with_vectors=size is not None))
                finally:
                    old.close()
        finally:
            new.close()
        _move_in(building, root)
        (root / "shards").rename(root / OLD_SHARDS)
        shutil.rmtree(root / OLD_SHARDS)
        shutil.rmtree(building)
        return copied


def _shard_points(shard: "qdrant_edge.EdgeShard", with_vectors: bool) -> Iterator[StoredPoint]:
    """Every point of a Qdrant Edge shard, a page at a time."""
    import qdrant_edge

    offset = None
    while True:
        records, offset = shard.scroll(
            qdrant_edge.ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=True, with_vector=with_vectors)
        )
        yield from (stored_point(r, with_vectors) for r in records)
        if offset is None:
            return


@contextmanager
def _held(root: Path, locked: bool) -> Iterator[None]:
    """The store's lock for a migration, unless its caller holds it already (`locked`)."""
    lock = None if locked else lock_store(root)
    try:
        yield
    finally:
        if lock is not None:
            lock.close()


def _move_in(building: Path, root: Path) -> None:
    """The shards built in `building` (an EdgeBackend's folder) become the store's at `root`."""
    if (building / SPECS).is_file():  # none when the old store had no collection yet
        (building / SPECS).replace(root / SPECS)
    shutil.rmtree(root / "groups", ignore_errors=True)  # what an interrupted migration left
    (building / "groups").rename(root / "groups")


def _copy_collection(old: Backend, new: Backend, name: str) -> int:
    kind, dimension = kind_of(name), PROFILES[profile_of(name)].dimension
    if kind == "people":
        # people were vectorless; their vector is now the mean of their faces' unit embeddings
        new.create(name, dimension, distance="dot")
        return copy_people(new, new, name, old.scroll(name, None))
    new.create(name, dimension if kind == "faces" else None)
    return _upsert_in_batches(new, name, old.scroll(name, None, with_vectors=kind == "faces"))


def _upsert_in_batches(backend: Backend, name: str, points: Iterable[StoredPoint]) -> int:
    """Write `points` (of any groups) UPSERT_BATCH of a group at a time (they may come from a scroll
    of any size); how many. Indexed as they fill, as FaceStore writes them."""
    n, batches = 0, defaultdict(list)
    for point in points:
        group_id = point.payload["group_id"]
        batches[group_id].append(point)
        n += 1
        if len(batches[group_id]) == UPSERT_BATCH:
            _upsert(backend, name, group_id, batches.pop(group_id))
    for group_id, batch in batches.items():
        _upsert(backend, name, group_id, batch)
    return n


def _upsert(backend: Backend, name: str, group_id: str, points: list[StoredPoint]) -> None:
    backend.upsert(name, group_id, points)
    if kind_of(name) in INDEXED_AS_THEY_FILL:
        backend.optimize(name, group_id)  # free unless this write took a segment past the indexing threshold


def copy_people(faces_from: Backend, to: Backend, name: str, people: Iterable[StoredPoint]) -> int:
    """Write the people collection `name` of `to`, each person with their vector: the mean unit
    embedding of their faces in `faces_from`. How many people."""
    profile = profile_of(name)
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = {}
    for face in faces_from.scroll(
        faces_collection(profile), None, with_vectors=True, payload_keys=("group_id", "person_id")
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
