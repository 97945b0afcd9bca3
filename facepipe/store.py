"""The face store: Qdrant collections, payloads and deterministic point ids.

Per model profile there are three collections:
- `faces_<profile>`: one point per face, its embedding (cosine) and payload.
- `images_<profile>`: one point per (group, image path), the ledger of what was digested
  (content hash, size, mtime, faces, errors), so a re-digest skips unchanged photos without
  reading them, and a changed photo's old faces are replaced, not duplicated.
- `people_<profile>`: one point per group and person (facepipe.domain.people), its vector the mean of
  its faces' unit embeddings.

Two backends behind one interface (`FaceStore`), chosen in `FaceStore.open`:
- embedded (the default, `path=`): Qdrant Edge (`qdrant-edge-py`), Qdrant's own engine inside
  the process: one shard folder per collection under `<path>/shards/`, persistent segments, a
  write-ahead log, payload indexes. Opening costs ~0.1 s whatever the size, and memory does not
  grow with the store (segments are memory-mapped).
- a Qdrant server (`url=`), through qdrant-client. qdrant-client's local mode (`QdrantClient(path=)`)
  goes through the same backend: the tests use it as the server's stand-in, and the migration
  reads stores written by facepipe before Qdrant Edge with it.

One process opens an embedded store at a time (a lock file, and Qdrant Edge's own lock on each
shard's WAL); the pipeline keeps to that with a Dagster pool of size 1 around the steps that open
it. A process that finds the store held waits for it by time (`wait=`, marked as waiting), and
`StoreBusy` tells a user that another process held it all that time. A service keeps the store
open between its requests (`StoreLease`) and hands it over as soon as another process waits.
"""

import errno
import fcntl
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facepipe import settings
from facepipe.engine.profiles import PROFILES

if TYPE_CHECKING:
    from facepipe.engine.faces import ImageResult

# Fixed namespace: the same face always gets the same point id, on every machine.
ID_NAMESPACE = uuid.UUID("5b4c1a8e-6f3d-4d52-9c1e-3a7f0e2b9d10")
UPSERT_BATCH = 512
PHOTOS_PER_WRITE = 1024
SCROLL_PAGE = 1024

# How the embedded store lays out and indexes faces, so that a write, a digest or a search costs
# what its own faces cost, never what else the store holds (README "The face store", "Indexing"):
# - group_id is the tenant: no HNSW graph of the whole store (m=0), one graph per group per
#   segment (payload_m), built only where a group has more faces in a segment than a search would
#   scan (FULL_SCAN_KB); below that a group's faces in a segment are scanned exactly.
# - a segment is indexed once its vectors pass INDEXING_THRESHOLD_KB, by the write that took it
#   there (every write ends with optimize()), so the unindexed tail a search scans stays below it;
# - no optimisation builds a segment larger than MAX_SEGMENT_KB: that bounds what any one
#   optimize() can cost, whatever the store holds (the default let merges rebuild the whole store).
# Sizes are of the vectors, in KiB: a dlib face (128 floats) takes 0.5 KiB, a 512-d one 2 KiB.
INDEXING_THRESHOLD_KB = 10_000  # 20,000 dlib faces
FULL_SCAN_KB = 10_000
MAX_SEGMENT_KB = 40_000  # 80,000 dlib faces
TENANT_GRAPH_M = 16

# Payload fields filtered on, indexed by both backends (keyword: exact match; integer: person ids).
KEYWORD_INDEXES = {
    "faces": ("group_id", "image_path", "run_id"),
    "images": ("group_id", "image_path", "status", "run_id"),
    "people": ("group_id",),
}
INTEGER_INDEXES = {"faces": ("person_id",), "images": (), "people": ("person_id",)}


# The ledger status of a photo a user deleted from its group: a tombstone, so that the next digest
# of the same source leaves it out (facepipe.domain.forget)
PHOTO_DELETED = "deleted"


def face_point_id(group_id: str, image_path: str, content_hash: str, face_index: int, profile: str) -> str:
    """A face's id: its group, its photo's path and bytes, its index in the photo, the profile. The
    path is part of it, so the same photo under two names has a set of faces each: both paths are
    found by search, and editing one copy leaves the other's faces alone. (Before, ids had no path:
    such faces keep their ids until their photo is digested again; see digested_images.)"""
    key = f"face:{group_id}:{stored_path(image_path)}:{content_hash}:{face_index}:{profile}"
    return str(uuid.uuid5(ID_NAMESPACE, key))


def stored_path(path: str) -> str:
    """A photo's path as the store keeps it (in payloads and ids): the path itself, unless its name
    holds bytes that are not UTF-8 (Python keeps them as surrogates, which no JSON, payload or id
    can hold): then each such byte is written `\\xNN` and each backslash `\\\\`, as bash's
    `$'...'` reads them. `local_path` turns it back into the path that opens the file.

    A UTF-8 name is kept as it is, so its ledger id and payloads are what stores written before hold.
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        raw = os.fsencode(path).replace(b"\\", b"\\\\")
        return raw.decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def local_path(text: str) -> str:
    """The path `stored_path` wrote `text` for: the file's name with its bytes that are not UTF-8.

    Text whose escapes do not spell such bytes is a path of its own (a UTF-8 name may hold
    backslashes), returned as it is.
    """
    if "\\x" not in text or _ESCAPE.sub("", text).count("\\"):
        return text
    raw = _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)
    try:
        path = os.fsdecode(os.fsencode(raw))
    except UnicodeEncodeError:  # an escape of a byte below 0x80: never written by stored_path
        return text
    return path if stored_path(path) == text else text


def image_point_id(group_id: str, image_path: str, profile: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"image:{group_id}:{stored_path(image_path)}:{profile}"))


def person_point_id(group_id: str, person_id: int, profile: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"person:{group_id}:{person_id}:{profile}"))


def faces_collection(profile: str) -> str:
    return "faces_" + profile.replace("-", "_")


def images_collection(profile: str) -> str:
    return "images_" + profile.replace("-", "_")


def people_collection(profile: str) -> str:
    return "people_" + profile.replace("-", "_")


def _kind(collection: str) -> str:
    return collection.split("_", 1)[0]


@dataclass(frozen=True)
class Where:
    """A filter both backends understand: every `match` field equals its value (a list: any of
    them), no `exclude` field equals its value, and every field in `missing` is absent or null."""

    match: dict = field(default_factory=dict)
    exclude: dict = field(default_factory=dict)
    missing: tuple = ()


def group_filter(group_id: str, **match) -> Where:
    return Where({"group_id": group_id, **match})


@dataclass
class StoredPoint:
    """A point read back from the store, whichever the backend: id, payload, vector, score."""

    id: str
    payload: dict
    vector: list[float] | None = None
    score: float | None = None


@dataclass(frozen=True)
class DigestedImage:
    """What the ledger knows of one image path in a group."""

    content_hash: str
    size: int
    mtime_ns: int
    etag: str | None = None


@dataclass
class WriteCounts:
    faces_stored: int = 0
    faces_replaced: int = 0  # old faces of changed or re-digested photos, deleted
    images_recorded: int = 0


@dataclass
class DigestTotals:
    """The group as a digest leaves it, for its summary and its checks. What is checked is the run's
    own work (as costly as the digest, not as the group: a watch's digest of ten photos into a group
    of a million faces must not read the group's whole ledger)."""

    faces_in_group: int
    faces_of_run: int  # the faces in the store that the run stored
    faces_in_ledger_of_run: int  # what the ledger rows the run wrote say their photos have
    unsound_faces: list[dict]  # the run's faces with a bad vector or box


class StoreError(RuntimeError):
    """The face store cannot answer; the message names it and says what to do (one line for a user)."""


class StoreBusy(StoreError):
    """The embedded store is held by another process: one process opens it at a time."""


class StoreUnavailable(StoreError):
    """The Qdrant server cannot be reached (down, refusing, a wrong URL): the message names the URL."""


class StoreDamaged(StoreError):
    """A file of the embedded store cannot be read (truncated, emptied, overwritten), or the store
    has lost faces its ledger records: never answered as an empty or smaller group."""


class StoreNotWritable(StoreError):
    """The embedded store's folder cannot be written: its disk is full, its file system read-only,
    or the folder is not this user's to write. Qdrant Edge writes even to open a store (it cannot
    open one read-only), so reading fails too. Nothing stored is lost: fix the disk, and it opens."""


# Qdrant Edge memory-maps its files and grows them as it writes: a write into a mapped page the
# disk has no room for kills the process with SIGBUS (no error to catch), and a store opened on a
# disk with no room at all fails with "No space left on device". So the embedded store is opened
# only with this much room: measured on tmpfs (qdrant-edge-py 0.9.0), a new store took 15 MB, and
# one open and write of a 500-face store 34 MB at most (a new segment); 100 faces take ~0.15 MB.
MIN_FREE_BYTES = 64 * 2**20

# What to do about a damaged store, in every StoreDamaged message
RECOVER = (
    "restore the folder from a backup; or move it aside (keep it for a bug report) and digest each "
    "group again with --redigest, then `facepipe people cluster --full` (names are lost)"
)


def _damaged(root, name: str, err: BaseException) -> StoreDamaged:
    reason = " ".join(str(err).split())
    reason = reason if len(reason) <= 300 else reason[:300] + "..."
    return StoreDamaged(
        f"the face store at {root} is damaged: its collection {name} ({root}/shards/{name}) cannot be read "
        f"({reason}); {RECOVER}"
    )


def _is_storage_error(err: BaseException) -> bool:
    """Qdrant Edge's errors of its files: its storage errors (plain Exception, 'Service runtime
    error: ...') and the panics of its Rust code on a short file (pyo3's PanicException, a
    BaseException)."""
    return type(err).__name__ == "PanicException" or str(err).startswith("Service runtime error")


# the errors of a disk, not of the store's files: the OS's errno, or the same in Qdrant Edge's
# messages ("... No space left on device (os error 28)")
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _disk_errno(err: BaseException) -> int | None:
    """The errno of a disk fault behind `err` (an OSError, or a Qdrant Edge error that quotes one)."""
    if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found and int(found.group(1)) in _DISK_ERRNOS else None


def _not_writable(root, code: int) -> StoreNotWritable:
    """The one message for each disk fault: the folder, what is wrong, what to do."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(root)
        room = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        return StoreNotWritable(
            f"the face store at {root} cannot be written: no space left on its disk{room}, and facepipe needs "
            f"{MIN_FREE_BYTES // 2**20} MiB there to open the store. Free space on it (`df -h {root}`) or move "
            "FACEPIPE_HOME to a larger disk, then digest again (`facepipe digests retry RUN_ID` finishes a "
            "failed digest); what the store holds is kept"
        )
    if code == errno.EROFS:
        return StoreNotWritable(
            f"the face store at {root} is on a read-only file system: remount it read-write, or set "
            "FACEPIPE_HOME to a writable folder (the embedded store cannot be opened read-only, so search "
            "and people need it writable too); what the store holds is kept"
        )
    return StoreNotWritable(
        f"the face store at {root} cannot be written by this user ({os.strerror(code)}): give it the "
        f"folder (`chown -R $(id -un) {root}`), or run facepipe as the user who owns it"
    )


def _free_bytes(root) -> int | None:
    """The room left for an unprivileged user on the file system of `root` (or its nearest existing parent)."""
    path = Path(root)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


@contextmanager
def _store_errors(root: Path, name: str = "") -> Iterator[None]:
    """The errors of the embedded store at `root` (of its collection `name`) as what they mean to a
    user (see _edge_error); any other error as it is."""
    try:
        yield
    except BaseException as err:  # qdrant_edge raises plain Exception, or panics
        if known := _edge_error(root, name, err):
            raise known from None
        raise


def _check_room(root: Path) -> None:
    free = _free_bytes(root)
    if free is not None and free < MIN_FREE_BYTES:
        raise _not_writable(root, errno.ENOSPC)


def _busy(path) -> StoreBusy:
    return StoreBusy(
        f"the face store at {path} is in use by another process (a digest or clustering run?); "
        "try again when it has finished"
    )


# --------------------------------------------------------------------------------------------
# Backends: the few operations FaceStore needs, on Qdrant Edge and on qdrant-client.
# --------------------------------------------------------------------------------------------


class EdgeBackend:
    """Qdrant Edge: one EdgeShard (folder) per collection, opened on first use, closed with the store."""

    def __init__(self, root: Path):
        import qdrant_edge

        self.q = qdrant_edge
        self.root = root / "shards"
        with _store_errors(root):
            self.root.mkdir(parents=True, exist_ok=True)
        self.shards: dict[str, Any] = {}

    def _shard(self, name: str):
        shard = self.shards.get(name)
        if shard is None and (self.root / name).is_dir():
            with _store_errors(self.root.parent, name):
                loaded = self.q.EdgeShard.load(str(self.root / name))
            # what an optimisation killed midway was building (Qdrant Edge never removes it); the
            # shard is ours now (its WAL lock), so no other process is building there
            shutil.rmtree(self.root / name / "temp_segments", ignore_errors=True)
            shard = self.shards[name] = _Checked(loaded, self.root.parent, name)
        return shard

    def exists(self, name: str) -> bool:
        return self._shard(name) is not None

    def create(self, name: str, size: int | None, distance: str = "cosine") -> None:
        q = self.q
        cold = q.Memory.Cold
        # Everything memory-mapped and read on demand ("cold"), nothing loaded at open: with the
        # default in-RAM indexes a 100k-face shard took 0.8-1.1 s to open, cold 0.15-0.25 s.
        # A shard needs a vector: the ledger stores a 1-d placeholder (4 bytes a point).
        params = q.EdgeVectorParams(
            size=size or 1, distance=q.Distance.Cosine if distance == "cosine" else q.Distance.Dot, memory=cold
        )
        config = q.EdgeConfig(
            vectors=params,
            payload_memory=cold,
            id_tracker_memory=cold,
            hnsw_config=q.HnswIndexConfig(
                m=0, payload_m=TENANT_GRAPH_M, ef_construct=100, full_scan_threshold=FULL_SCAN_KB, memory=cold
            ),
            optimizers=self._optimizers(),
        )
        with _store_errors(self.root.parent, name):
            created = q.EdgeShard.create(str(self.root / name), config)
        shard = self.shards[name] = _Checked(created, self.root.parent, name)
        kind = _kind(name)
        for key in KEYWORD_INDEXES[kind]:
            # group_id is the tenant: the optimizer keeps a group's points together on disk and gives
            # each group its own graph; no graph for the other fields (filters, never searched by)
            tenant = key == "group_id"
            schema = q.KeywordIndexParams(is_tenant=tenant, enable_hnsw=tenant, memory=cold)
            shard.update(q.UpdateOperation.create_field_index(key, schema))
        for key in INTEGER_INDEXES[kind]:
            schema = q.IntegerIndexParams(lookup=True, range=False, enable_hnsw=False, memory=cold)
            shard.update(q.UpdateOperation.create_field_index(key, schema))

    def _optimizers(self):
        return self.q.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB, max_segment_size=MAX_SEGMENT_KB)

    def _filter(self, where: Where | None):
        if where is None:
            return None
        q = self.q

        def condition(key, value):
            match = q.MatchAny(list(value)) if isinstance(value, (list, tuple, set)) else q.MatchValue(value)
            return q.FieldCondition(key, match=match)

        must = [condition(k, v) for k, v in where.match.items()]
        must += [q.IsEmptyCondition(key) for key in where.missing]
        must_not = [condition(k, v) for k, v in where.exclude.items()]
        return q.Filter(must=must or None, must_not=must_not or None)

    def _point(self, record, with_vectors: bool) -> StoredPoint:
        vector = record.vector if with_vectors else None
        if isinstance(vector, dict):  # the default (unnamed) vector
            vector = vector.get("")
        return StoredPoint(str(record.id), record.payload or {}, vector, getattr(record, "score", None))

    def upsert(self, name: str, points: list[StoredPoint]) -> None:
        q = self.q
        shard = self._shard(name)
        for start in range(0, len(points), UPSERT_BATCH):
            batch = points[start : start + UPSERT_BATCH]
            shard.update(
                q.UpdateOperation.upsert_points(
                    [q.Point(p.id, p.vector if p.vector is not None else [1.0], p.payload) for p in batch]
                )
            )

    def scroll(self, name, where, limit, offset, with_vectors, payload_keys=None):
        shard = self._shard(name)
        if shard is None:
            return [], None
        records, next_offset = shard.scroll(
            self.q.ScrollRequest(
                offset=offset,
                limit=limit,
                filter=self._filter(where),
                with_payload=list(payload_keys) if payload_keys is not None else True,
                with_vector=with_vectors,
            )
        )
        return [self._point(r, with_vectors) for r in records], (str(next_offset) if next_offset is not None else None)

    def count(self, name: str, where: Where | None) -> int:
        shard = self._shard(name)
        return shard.count(self.q.CountRequest(exact=True, filter=self._filter(where))) if shard else 0

    def delete(self, name: str, where: Where | None = None, ids: list[str] | None = None) -> None:
        shard, op = self._shard(name), self.q.UpdateOperation
        if shard is not None:
            shard.update(
                op.delete_points(list(ids)) if ids is not None else op.delete_points_by_filter(self._filter(where))
            )

    def set_payload(self, name: str, payload: dict, ids: list[str]) -> None:
        if ids:
            self._shard(name).update(self.q.UpdateOperation.set_payload(list(ids), payload))

    def retrieve(self, name: str, ids: list[str], with_vectors: bool = False) -> list[StoredPoint]:
        shard = self._shard(name)
        if shard is None or not ids:
            return []
        return [
            self._point(r, with_vectors) for r in shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        ]

    def query(self, name, vector, where, limit, min_score=None, with_vectors=False) -> list[StoredPoint]:
        shard = self._shard(name)
        if shard is None:
            return []
        q = self.q
        found = shard.query(
            q.QueryRequest(
                limit=limit,
                query=q.Query.Nearest([float(x) for x in vector]),
                filter=self._filter(where),
                score_threshold=min_score,
                with_payload=True,
                with_vector=with_vectors,
            )
        )
        return [self._point(r, with_vectors) for r in found]

    def optimize(self, name: str) -> None:
        shard = self._shard(name)
        if shard is not None:
            shard.optimize()

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()  # flushes segments: the next open replays no WAL
        self.shards.clear()


class _Checked:
    """An EdgeShard whose storage errors (see _is_storage_error) are StoreDamaged naming the store:
    a file emptied under a segment fails a scroll or a search, not only the open; a disk that
    fills or turns read-only meanwhile is StoreNotWritable."""

    def __init__(self, shard, root: Path, name: str):
        self._shard, self._root, self._name = shard, root, name

    def __getattr__(self, attr):
        method = getattr(self._shard, attr)

        def call(*args, **kwargs):
            with _store_errors(self._root, self._name):
                return method(*args, **kwargs)

        return call


def _edge_error(root: Path, name: str, err: BaseException) -> RuntimeError | None:
    """What an error of the embedded store (of its collection `name`) means for a user: another
    process holds it (StoreBusy), a full or read-only disk (StoreNotWritable; not a damaged store),
    or a file of the store it cannot read (StoreDamaged); None for any other error."""
    if "WouldBlock" in str(err):  # "failed to open WAL ...: Kind(WouldBlock)": another process
        return _busy(root)
    if code := _disk_errno(err):
        return _not_writable(root, code)
    if _is_storage_error(err):
        return _damaged(root, name, err)
    return None


class ClientBackend:
    """qdrant-client: a Qdrant server (`url`), or its local mode (`path`) for tests and migration."""

    def __init__(self, client):
        from qdrant_client import models

        self.client, self.m = client, models
        self.local = client._client.__class__.__name__ == "QdrantLocal"

    def exists(self, name: str) -> bool:
        return self.client.collection_exists(name)

    def create(self, name: str, size: int | None, distance: str = "cosine") -> None:
        m = self.m
        vectors = (
            m.VectorParams(size=size, distance=m.Distance.COSINE if distance == "cosine" else m.Distance.DOT)
            if size
            else {}
        )
        self.client.create_collection(name, vectors_config=vectors)
        if self.local:  # local mode scans and ignores payload indexes (it warns); a server uses them
            return
        kind = _kind(name)
        for key in KEYWORD_INDEXES[kind]:
            self.client.create_payload_index(name, key, m.PayloadSchemaType.KEYWORD)
        for key in INTEGER_INDEXES[kind]:
            self.client.create_payload_index(name, key, m.PayloadSchemaType.INTEGER)

    def _filter(self, where: Where | None):
        if where is None:
            return None
        m = self.m

        def condition(key, value):
            match = m.MatchAny(any=list(value)) if isinstance(value, (list, tuple, set)) else m.MatchValue(value=value)
            return m.FieldCondition(key=key, match=match)

        must = [condition(k, v) for k, v in where.match.items()]
        must += [m.IsEmptyCondition(is_empty=m.PayloadField(key=key)) for key in where.missing]
        must_not = [condition(k, v) for k, v in where.exclude.items()]
        return m.Filter(must=must or None, must_not=must_not or None)

    @staticmethod
    def _point(record, with_vectors: bool) -> StoredPoint:
        vector = record.vector if with_vectors else None
        if isinstance(vector, dict):
            vector = vector.get("") if vector else None
        return StoredPoint(str(record.id), record.payload or {}, vector, getattr(record, "score", None))

    def upsert(self, name: str, points: list[StoredPoint]) -> None:
        for start in range(0, len(points), UPSERT_BATCH):
            self.client.upsert(
                name,
                [
                    self.m.PointStruct(id=p.id, vector=p.vector if p.vector is not None else {}, payload=p.payload)
                    for p in points[start : start + UPSERT_BATCH]
                ],
            )

    def scroll(self, name, where, limit, offset, with_vectors, payload_keys=None):
        if not self.exists(name):
            return [], None
        records, next_offset = self.client.scroll(
            name,
            scroll_filter=self._filter(where),
            limit=limit,
            offset=offset,
            with_payload=list(payload_keys) if payload_keys is not None else True,
            with_vectors=with_vectors,
        )
        return [self._point(r, with_vectors) for r in records], (str(next_offset) if next_offset is not None else None)

    def count(self, name: str, where: Where | None) -> int:
        if not self.exists(name):
            return 0
        return self.client.count(name, count_filter=self._filter(where), exact=True).count

    def delete(self, name: str, where: Where | None = None, ids: list[str] | None = None) -> None:
        if not self.exists(name):
            return
        selector = (
            self.m.PointIdsList(points=list(ids))
            if ids is not None
            else self.m.FilterSelector(filter=self._filter(where))
        )
        self.client.delete(name, points_selector=selector)

    def set_payload(self, name: str, payload: dict, ids: list[str]) -> None:
        if ids:
            self.client.set_payload(name, payload=payload, points=list(ids))

    def retrieve(self, name: str, ids: list[str], with_vectors: bool = False) -> list[StoredPoint]:
        if not ids or not self.exists(name):
            return []
        return [self._point(r, with_vectors) for r in self.client.retrieve(name, list(ids), with_vectors=with_vectors)]

    def query(self, name, vector, where, limit, min_score=None, with_vectors=False) -> list[StoredPoint]:
        if not self.exists(name):
            return []
        found = self.client.query_points(
            name,
            query=[float(x) for x in vector],
            query_filter=self._filter(where),
            limit=limit,
            score_threshold=min_score,
            with_payload=True,
            with_vectors=with_vectors,
        ).points
        return [self._point(r, with_vectors) for r in found]

    def has_vectors(self, name: str) -> bool:
        vectors = self.client.get_collection(name).config.params.vectors
        return bool(vectors) and not (isinstance(vectors, dict) and not vectors)

    def optimize(self, name: str) -> None:
        pass  # a server's optimizers run by themselves; local mode has no index

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class FaceStore:
    """facepipe's face store. Which backend holds it is decided in `open` and hidden from callers."""

    def __init__(self, backend, embedded: bool):
        self.backend = backend
        self.embedded = embedded

    @classmethod
    @contextmanager
    def open(
        cls,
        path: str | os.PathLike | None = None,
        url: str | None = None,
        api_key: str | None = None,
        backend: str = "edge",
        migrate: bool = True,
        wait: float = 0.0,
    ) -> Iterator["FaceStore"]:
        """A store on a Qdrant server (`url`) or embedded at `path`; closed on exit. An embedded store
        held by another process is waited for up to `wait` seconds (StoreBusy past them).

        `backend="local"` opens `path` with qdrant-client's local mode instead of Qdrant Edge (the
        tests' stand-in for a server; the old default). An embedded folder still in that old
        layout is migrated to Qdrant Edge on first open, its old files kept in a backup folder.
        """
        if url or backend == "local":
            from qdrant_client import QdrantClient

            try:
                # qdrant-client's own version check runs in a thread and only warns, also when the
                # server cannot be reached: _reachable asks the server once and says so in one line
                client = (
                    QdrantClient(url=url, api_key=api_key, check_compatibility=False)
                    if url
                    else QdrantClient(path=str(path))
                )
            except RuntimeError as err:
                if "already accessed" not in str(err):
                    raise
                raise _busy(path) from None
            if url:
                _reachable(client, url)
            store = cls(ClientBackend(client), embedded=not url)
            try:
                yield store
            finally:
                store.backend.close()
            return

        if path is None:
            raise ValueError("an embedded store needs its path")
        root = Path(path)
        with _store_errors(root):
            root.mkdir(parents=True, exist_ok=True)
            _check_room(root)
            lock = _lock(root, wait)
        try:
            if migrate and is_local_mode_store(root):
                migrate_local_store(root, _locked=True)
            store = cls(EdgeBackend(root), embedded=True)
            try:
                yield store
            finally:
                store.backend.close()
        finally:
            lock.close()  # releases the flock

    # -- generic access by collection: for the methods below and the migration ------------------

    def exists(self, collection: str) -> bool:
        return self.backend.exists(collection)

    def create(self, collection: str, size: int | None, distance: str = "cosine") -> None:
        if not self.backend.exists(collection):
            self.backend.create(collection, size, distance)

    def scroll(
        self,
        collection: str,
        where: Where | None = None,
        with_vectors: bool = False,
        payload_keys: Iterable[str] | None = None,
        page: int = SCROLL_PAGE,
    ) -> Iterator[StoredPoint]:
        """Every point matching `where`, a page at a time (memory holds one page)."""
        offset = None
        while True:
            points, offset = self.backend.scroll(collection, where, page, offset, with_vectors, payload_keys)
            yield from points
            if offset is None:
                return

    def scroll_page(
        self, collection: str, where: Where | None, limit: int, offset: str | None = None, with_payload: bool = True
    ) -> tuple[list[StoredPoint], str | None]:
        return self.backend.scroll(collection, where, limit, offset, False, None if with_payload else [])

    def count(self, collection: str, where: Where | None = None) -> int:
        return self.backend.count(collection, where)

    def upsert(self, collection: str, points: list[StoredPoint]) -> None:
        self.backend.upsert(collection, points)
        self._index_as_it_fills(collection)

    def set_payload(self, collection: str, payload: dict, ids: list[str]) -> None:
        self.backend.set_payload(collection, payload, ids)
        self._index_as_it_fills(collection)  # Qdrant moves an indexed face it updates into the unindexed tail

    def _index_as_it_fills(self, collection: str) -> None:
        """Index the faces segment a write took past the indexing threshold, in that write: the
        unindexed tail (scanned by every search, held by every writer) never grows past the
        threshold and one write's batch. Free (~50 µs) when no segment is due; when one is, bounded
        by MAX_SEGMENT_KB, whatever the store holds."""
        if _kind(collection) == "faces":
            self.backend.optimize(collection)

    def delete(self, collection: str, where: Where | None = None, ids: list[str] | None = None) -> None:
        self.backend.delete(collection, where, ids)

    def retrieve(self, collection: str, ids: list[str], with_vectors: bool = False) -> list[StoredPoint]:
        return self.backend.retrieve(collection, ids, with_vectors)

    def query(
        self,
        collection: str,
        vector,
        where: Where | None,
        limit: int,
        min_score: float | None = None,
        with_vectors: bool = False,
    ) -> list[StoredPoint]:
        return self.backend.query(collection, vector, where, limit, min_score, with_vectors)

    # -- faces and the ledger -------------------------------------------------------------------

    def ensure_collections(self, profile: str) -> None:
        self.create(faces_collection(profile), PROFILES[profile].dimension)
        self.create(images_collection(profile), None)

    def ensure_people_collection(self, profile: str) -> None:
        """The people collection, its vector the mean of a person's unit face embeddings (dot product).

        A people collection without vectors (facepipe before Qdrant Edge, on a server) is rebuilt
        with them, names and ids kept.
        """
        name = people_collection(profile)
        if isinstance(self.backend, ClientBackend) and self.backend.exists(name) and not self.backend.has_vectors(name):
            people = list(self.scroll(name))
            self.backend.client.delete_collection(name)
            self.backend.create(name, PROFILES[profile].dimension, "dot")
            _copy_people(self, self, name, people)
            return
        self.create(name, PROFILES[profile].dimension, distance="dot")

    def digested_images(
        self,
        group_id: str,
        profile: str,
        paths: Iterable[str] | None = None,
        faces_lost: list[str] | None = None,
        deleted: list[str] | None = None,
    ) -> dict[str, DigestedImage]:
        """Image paths of the group digested without error, with what they were when digested.

        With `paths` (a digest's listing), only those are looked up, by their ledger ids: the cost
        is the listing's, not the group's. A photo whose ledger row counts faces that the faces
        collection no longer holds (a damaged store) is left out, so that a digest reads it again
        rather than skip it, and its path is added to `faces_lost`. Photos a user deleted from the
        group (a tombstone row, facepipe.domain.forget) are added to `deleted`.
        """
        keys = ("image_path", "content_hash", "size", "mtime_ns", "etag", "status", "faces")
        if paths is None:
            points = self.scroll(
                images_collection(profile), group_filter(group_id, status="done"), page=4096, payload_keys=keys
            )
        else:
            points = (
                p
                for batch in _batches([image_point_id(group_id, path, profile) for path in paths], 1024)
                for p in self.retrieve(images_collection(profile), batch)
            )
        done: dict[str, tuple[DigestedImage, int]] = {}
        for point in points:
            p = point.payload
            if p.get("status") == "done":
                image = DigestedImage(p["content_hash"], p["size"], p["mtime_ns"], p.get("etag"))
                done[p["image_path"]] = (image, p.get("faces") or 0)
            elif p.get("status") == PHOTO_DELETED and deleted is not None:
                deleted.append(local_path(p["image_path"]))
        # the faces each photo has in the store, by path (whatever their ids), a batch of photos at a time
        lost: set[str] = set()
        for batch in _batches([text for text, (_, n) in done.items() if n], 1024):
            held: dict[str, int] = {}
            for face in self.scroll(
                faces_collection(profile), group_filter(group_id, image_path=batch), payload_keys=("image_path",)
            ):
                held[face.payload["image_path"]] = held.get(face.payload["image_path"], 0) + 1
            lost.update(text for text in batch if held.get(text, 0) < done[text][1])
        if faces_lost is not None:
            faces_lost.extend(local_path(text) for text in sorted(lost))
        return {local_path(text): image for text, (image, _) in done.items() if text not in lost}

    def check_group_kept(self, group_id: str, profile: str) -> None:
        """StoreDamaged if the group has no faces although its ledger records photos digested with
        faces: a damaged store must never pass for an empty (unknown) group."""
        if self.count_faces(group_id, profile):
            return
        ledger = self.scroll(images_collection(profile), group_filter(group_id, status="done"), payload_keys=("faces",))
        if any(p.payload.get("faces") for p in ledger):
            where = getattr(self.backend, "root", None)
            where = where.parent if where is not None else "(the Qdrant server)"
            raise StoreDamaged(
                f"the face store at {where} has lost the faces of group {group_id!r}: its ledger "
                f"({images_collection(profile)}) records photos digested with faces, its "
                f"{faces_collection(profile)} none; {RECOVER}"
            )

    def write(self, group_id: str, profile: str, results: Iterable["ImageResult"], run_id: str) -> WriteCounts:
        """Store the faces of digested photos and record every photo in the ledger.

        Idempotent: the same results written again leave the same points (ids are derived from the
        group, the photo's path and bytes, the face's index and the profile).
        """
        self.ensure_collections(profile)
        results = list(results)
        counts = WriteCounts()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        faces, images = faces_collection(profile), images_collection(profile)

        # photos digested before whose faces are rewritten now: drop their old faces first
        redone = [r.path for r in results if r.previously_digested and not r.unchanged and not r.error]
        if redone:
            counts.faces_replaced = self.drop_faces(group_id, profile, redone)
        # the faces a user deleted from a photo stay deleted whenever it is read again (facepipe.domain.forget);
        # a photo that fails keeps them in its ledger row, for the digest that reads it next
        deleted_faces = self._deleted_faces(group_id, profile, [r.path for r in results if not r.unchanged])

        # a batch of photos at a time: memory holds one batch's points, not the digest's
        for start in range(0, len(results), PHOTOS_PER_WRITE):
            face_points, image_points = self._points(
                group_id, profile, results[start : start + PHOTOS_PER_WRITE], run_id, now, deleted_faces
            )
            # faces before the ledger: a photo is recorded as digested only once its faces are stored
            self.upsert(faces, face_points)
            self.upsert(images, image_points)
            counts.faces_stored += len(face_points)
            counts.images_recorded += len(image_points)
        return counts

    def _deleted_faces(self, group_id: str, profile: str, paths: list[str]) -> dict[str, list[dict]]:
        """The boxes of the faces a user deleted from the group's photos at `paths`, by path."""
        found: dict[str, list[dict]] = {}
        for batch in _batches([image_point_id(group_id, path, profile) for path in paths], 1024):
            for row in self.retrieve(images_collection(profile), batch):
                if row.payload.get("deleted_faces"):
                    found[local_path(row.payload["image_path"])] = row.payload["deleted_faces"]
        return found

    def drop_faces(self, group_id: str, profile: str, paths: list[str]) -> int:
        """Delete the faces of the group's photos at `paths`; how many. Their people are marked stale,
        and facepipe.domain.people recounts them."""
        faces = faces_collection(profile)
        stale = group_filter(group_id, image_path=[stored_path(path) for path in paths])
        dropped = self.count(faces, stale)
        losing = {
            p.payload["person_id"]
            for p in self.scroll(faces, stale, payload_keys=("person_id",))
            if p.payload.get("person_id") is not None
        }
        if losing and self.exists(people_collection(profile)):
            self.set_payload(
                people_collection(profile), {"stale": True}, [person_point_id(group_id, p, profile) for p in losing]
            )
        self.delete(faces, stale)
        return dropped

    def _points(self, group_id: str, profile: str, results, run_id: str, now: str, deleted_faces: dict):
        face_points, image_points = [], []
        images = images_collection(profile)
        for r in results:
            if r.unchanged:  # same bytes, new mtime: keep its faces, note the mtime
                self.set_payload(
                    images,
                    {"mtime_ns": r.mtime_ns, "size": r.size, "etag": r.etag},
                    [image_point_id(group_id, r.path, profile)],
                )
                continue
            deleted = deleted_faces.get(r.path, [])
            kept = [face for face in r.faces if not any(_same_face(face.box, area) for area in deleted)]
            image_points.append(
                StoredPoint(
                    image_point_id(group_id, r.path, profile),
                    {
                        "group_id": group_id,
                        "image_path": stored_path(r.path),
                        "status": "failed" if r.error else "done",
                        "error": r.error,
                        "content_hash": r.content_hash,
                        "size": r.size,
                        "mtime_ns": r.mtime_ns,
                        "etag": r.etag,
                        "faces": len(kept),
                        "run_id": run_id,
                        "timestamp": now,
                        "model": PROFILES[profile].model_name,
                        **({"deleted_faces": deleted} if deleted else {}),
                    },
                )
            )
            if r.error:
                continue
            for face in kept:
                x, y, w, h = face.box
                face_points.append(
                    StoredPoint(
                        face_point_id(group_id, r.path, r.content_hash, face.face_index, profile),
                        {
                            "group_id": group_id,
                            "image_path": stored_path(r.path),
                            "face_index": face.face_index,
                            "detection_confidence": face.confidence,
                            "facial_area": {"x": x, "y": y, "w": w, "h": h},
                            "landmarks": [[round(px, 1), round(py, 1)] for px, py in face.landmarks],
                            "timestamp": now,
                            "model": PROFILES[profile].model_name,
                            "profile": profile,
                            "content_hash": r.content_hash,
                            "image_width": r.width,
                            "image_height": r.height,
                            "run_id": run_id,
                        },
                        face.embedding.tolist(),
                    )
                )
        return face_points, image_points

    def optimize(self, profile: str) -> None:
        """Index what is due (Qdrant Edge builds HNSW graphs only when asked; a server does it by
        itself). Every write to the faces already does (see _index_as_it_fills): this is for a
        store written by an older facepipe, or by hand."""
        self.backend.optimize(faces_collection(profile))

    def finish_digest(self, group_id: str, profile: str, run_id: str) -> DigestTotals:
        """What a digest's last step does to the store: count and check what its chunks wrote (they
        indexed it as they wrote)."""
        return DigestTotals(
            faces_in_group=self.count_faces(group_id, profile),
            faces_of_run=self.count(faces_collection(profile), group_filter(group_id, run_id=run_id)),
            faces_in_ledger_of_run=self.ledger_face_count(group_id, profile, run_id),
            unsound_faces=self.unsound_faces(group_id, profile, run_id),
        )

    def count_faces(self, group_id: str, profile: str) -> int:
        return self.count(faces_collection(profile), group_filter(group_id))

    def faces(self, group_id: str, profile: str, with_vectors: bool = False, **match) -> list[StoredPoint]:
        return list(self.scroll(faces_collection(profile), group_filter(group_id, **match), with_vectors))

    def nearest_faces(
        self,
        group_id: str,
        profile: str,
        embedding,
        limit: int = 10,
        min_score: float | None = None,
        where: Where | None = None,
    ) -> list[StoredPoint]:
        """The group's faces most similar (cosine) to `embedding`, best first."""
        return self.query(faces_collection(profile), embedding, where or group_filter(group_id), limit, min_score)

    def unsound_faces(self, group_id: str, profile: str, run_id: str) -> list[dict]:
        """The faces a digest run stored whose vector is not a finite unit vector of the profile's
        dimension, or whose box is not inside its photo: each with its id, photo and problem."""
        import numpy as np

        dimension, unsound = PROFILES[profile].dimension, []
        keys = ("image_path", "facial_area", "image_width", "image_height")
        for face in self.scroll_faces(
            profile, group_filter(group_id, run_id=run_id), with_vectors=True, payload_keys=keys
        ):
            vector = np.asarray(face.vector or [], np.float64)
            area, width, height = face.payload["facial_area"], face.payload["image_width"], face.payload["image_height"]
            if vector.shape != (dimension,) or not np.isfinite(vector).all():
                problem = f"vector of {vector.size} values, not {dimension} finite ones"
            elif abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                problem = f"vector of length {float(np.linalg.norm(vector)):.4f}, not 1"
            elif not (
                0 <= area["x"]
                and 0 <= area["y"]
                and area["w"] > 0
                and area["h"] > 0
                and area["x"] + area["w"] <= width
                and area["y"] + area["h"] <= height
            ):
                problem = f"box {area} outside the {width} x {height} photo"
            else:
                continue
            unsound.append({"face_id": face.id, "image_path": face.payload["image_path"], "problem": problem})
        return unsound

    def ledger_face_count(self, group_id: str, profile: str, run_id: str | None = None) -> int:
        """The faces the group's ledger says its digested photos have (those a run digested, with `run_id`)."""
        where = group_filter(group_id, status="done", **({"run_id": run_id} if run_id else {}))
        return sum(
            p.payload.get("faces", 0)
            for p in self.scroll(images_collection(profile), where, payload_keys=("faces",), page=4096)
        )

    def face_ids_of_run(
        self, group_id: str, profile: str, run_id: str, limit: int = 100, offset: str | None = None
    ) -> tuple[list[str], str | None]:
        """A page of the ids of the faces a digest run stored, and the next page's offset."""
        points, next_offset = self.scroll_page(
            faces_collection(profile), group_filter(group_id, run_id=run_id), limit, offset, with_payload=False
        )
        return [p.id for p in points], next_offset

    # -- people: facepipe.domain.people decides who is who; these read and write its records ------------

    def scroll_faces(
        self,
        profile: str,
        where: Where,
        with_vectors: bool = False,
        payload_keys: Iterable[str] | None = None,
        page: int = SCROLL_PAGE,
    ) -> Iterator[StoredPoint]:
        return self.scroll(faces_collection(profile), where, with_vectors, payload_keys, page)

    def count_faces_matching(self, profile: str, where: Where) -> int:
        return self.count(faces_collection(profile), where)

    def set_face_payload(self, profile: str, payload: dict, face_ids: list[str]) -> None:
        self.set_payload(faces_collection(profile), payload, face_ids)

    def people(self, group_id: str, profile: str, payload_keys: Iterable[str] | None = None) -> list[StoredPoint]:
        return list(self.scroll(people_collection(profile), group_filter(group_id), payload_keys=payload_keys))

    def count_people(self, group_id: str, profile: str) -> int:
        return self.count(people_collection(profile), group_filter(group_id))

    def get_people(self, group_id: str, profile: str, person_ids: Iterable[int]) -> list[StoredPoint]:
        return self.retrieve(people_collection(profile), [person_point_id(group_id, p, profile) for p in person_ids])

    def write_people(self, group_id: str, profile: str, people: list[tuple[dict, list[float]]]) -> None:
        """Upsert people, each a payload (with its `person_id`) and its vector (the mean of its faces)."""
        self.upsert(
            people_collection(profile),
            [
                StoredPoint(person_point_id(group_id, payload["person_id"], profile), payload, vector)
                for payload, vector in people
            ],
        )

    def delete_people(self, group_id: str, profile: str, person_ids: Iterable[int]) -> None:
        ids = [person_point_id(group_id, p, profile) for p in person_ids]
        if ids:
            self.delete(people_collection(profile), ids=ids)

    def set_people_payload(self, group_id: str, profile: str, person_ids: Iterable[int], payload: dict) -> None:
        self.set_payload(
            people_collection(profile), payload, [person_point_id(group_id, p, profile) for p in person_ids]
        )

    def nearest_person(self, group_id: str, profile: str, vector, min_score: float) -> StoredPoint | None:
        """The group's person whose mean face is nearest to `vector` (dot product), if at least `min_score`."""
        found = self.query(people_collection(profile), vector, group_filter(group_id), limit=1, min_score=min_score)
        return found[0] if found else None

    # -- deletes: facepipe.domain.forget decides what goes; these remove it -----------------------

    def faces_by_id(self, profile: str, face_ids: list[str], with_vectors: bool = False) -> list[StoredPoint]:
        return self.retrieve(faces_collection(profile), face_ids, with_vectors)

    def delete_faces(self, profile: str, face_ids: list[str]) -> None:
        if face_ids:
            self.delete(faces_collection(profile), ids=face_ids)

    def ledger_rows(self, group_id: str, profile: str, paths: Iterable[str]) -> list[StoredPoint]:
        """The ledger rows of the group's photos at `paths` (those it has)."""
        ids = [image_point_id(group_id, path, profile) for path in paths]
        return [row for batch in _batches(ids, 1024) for row in self.retrieve(images_collection(profile), batch)]

    def ledger_row(self, profile: str, photo_id: str) -> StoredPoint | None:
        """A ledger row by its id (a photo's id: image_point_id)."""
        found = self.retrieve(images_collection(profile), [photo_id])
        return found[0] if found else None

    def set_ledger_payload(self, group_id: str, profile: str, path: str, payload: dict) -> None:
        self.set_payload(images_collection(profile), payload, [image_point_id(group_id, path, profile)])

    def mark_photo_deleted(self, group_id: str, profile: str, path: str) -> None:
        """Replace a photo's ledger row by a tombstone: only its path, so that digests leave it out."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        payload = {"group_id": group_id, "image_path": stored_path(path), "status": PHOTO_DELETED, "deleted_at": now}
        self.upsert(images_collection(profile), [StoredPoint(image_point_id(group_id, path, profile), payload)])

    def delete_ledger_row(self, group_id: str, profile: str, path: str) -> None:
        self.delete(images_collection(profile), ids=[image_point_id(group_id, path, profile)])

    def delete_group(self, group_id: str, profile: str) -> dict[str, int]:
        """Delete every face, ledger row (tombstones too) and person of the group; how many faces,
        photos (digested or failed) and people it had."""
        counts = {
            "faces": self.count_faces(group_id, profile),
            "photos": self.count(images_collection(profile), group_filter(group_id, status=["done", "failed"])),
            "people": self.count_people(group_id, profile),
        }
        for collection in (faces_collection(profile), images_collection(profile), people_collection(profile)):
            self.delete(collection, group_filter(group_id))
        return counts


def _same_face(box: tuple[int, int, int, int], area: dict) -> bool:
    """Whether a detected box (x, y, w, h) is the face at `area` (a stored facial_area): they overlap
    by half their union at least, as detections of one face in one photo do."""
    x, y, w, h = box
    overlap_w = min(x + w, area["x"] + area["w"]) - max(x, area["x"])
    overlap_h = min(y + h, area["y"] + area["h"]) - max(y, area["y"])
    if overlap_w <= 0 or overlap_h <= 0:
        return False
    overlap = overlap_w * overlap_h
    return overlap >= 0.5 * (w * h + area["w"] * area["h"] - overlap)


def _reachable(client, url: str) -> None:
    """qdrant-client connects lazily: ask the server once now, so that a server that is down says so
    in one line that names it, before any work."""
    try:
        client.get_collections()
    except Exception as err:  # httpx, grpc and qdrant-client each raise their own
        client.close()
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StoreUnavailable(
            f"the Qdrant server at {url} cannot be reached ({reason[:200]}): check QDRANT_URL and that the server runs"
        ) from None


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# How often a process waiting for the store tries its lock: a store operation takes milliseconds.
LOCK_POLL_SECONDS = 0.01


def _lock(root: Path, wait: float = 0.0):
    """Hold `<root>/facepipe.lock` for as long as the store is open. While another process holds it,
    try again for up to `wait` seconds, holding a shared lock on `<root>/facepipe.waiting` meanwhile:
    a process that keeps the store open between operations (StoreLease) sees it and lets go.
    StoreBusy past `wait`."""
    handle = open(root / "facepipe.lock", "a+")
    deadline, waiting = time.monotonic() + wait, None
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _busy(root) from None
            if waiting is None:
                waiting = open(root / "facepipe.waiting", "a+")
                fcntl.flock(waiting, fcntl.LOCK_SH)
            time.sleep(LOCK_POLL_SECONDS)
    except BaseException:
        handle.close()
        raise
    finally:
        if waiting is not None:
            waiting.close()


def _others_wait(root: Path) -> bool:
    """Whether a process waits for the store at `root` (holds `facepipe.waiting` shared, see _lock)."""
    with open(root / "facepipe.waiting", "a+") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # closing the probe releases it


class StoreLease:
    """The face store kept open by a long-lived process (the HTTP service) between its operations.

    Opening the embedded store costs more as it grows (its shards' files are mapped and read again:
    benchmarks/service_load.py), so a service that opened it per request would spend its time
    opening. A lease keeps it open, one thread using it at a time (`use`), and closes it when idle
    for `idle_seconds`, and as soon as another process waits for it (a digest step, `facepipe
    search`): that process gets it after at most the one operation in progress. The next `use`
    opens it again, waiting for it as any process does; so the store's open handle always sees
    what the other processes wrote. With a Qdrant server, the client is kept open the same way.
    """

    def __init__(self, opener: Callable[[float], Any], root: Path | None, idle_seconds: float = 2.0):
        self._opener = opener  # opener(wait) -> the context manager of an open FaceStore
        self._root = root  # the embedded store's folder; None for a server (no other process waits)
        self._idle_seconds = idle_seconds
        self._turn = threading.Lock()
        self._open: tuple[Any, FaceStore] | None = None
        self._last_used = 0.0
        self._watcher: threading.Thread | None = None

    @contextmanager
    def use(self, wait: float) -> Iterator[FaceStore]:
        """The open store, for one operation of this thread; StoreBusy when it cannot be had within `wait` s."""
        deadline = time.monotonic() + wait
        if not self._turn.acquire(timeout=wait):
            raise _busy(self._root or "the server")
        try:
            if self._open is None:
                manager = self._opener(max(0.0, deadline - time.monotonic()))
                self._open = (manager, manager.__enter__())
                self._watch()
            try:
                yield self._open[1]
            except StoreError:
                self._close()  # damaged, not writable, a server gone: opened afresh next time
                raise
            finally:
                self._last_used = time.monotonic()
            if self._root is not None and _others_wait(self._root):
                self._close()
        finally:
            self._turn.release()

    def close(self) -> None:
        with self._turn:
            self._close()

    def _close(self) -> None:
        if self._open is not None:
            manager, self._open = self._open[0], None
            manager.__exit__(None, None, None)

    def _watch(self) -> None:
        """A thread that closes the store while no request uses it, when it has been idle or is waited for."""
        if self._watcher is not None and self._watcher.is_alive():
            return

        def watch() -> None:
            while True:
                time.sleep(LOCK_POLL_SECONDS * 5)
                if self._open is None or not self._turn.acquire(blocking=False):
                    continue
                try:
                    idle = time.monotonic() - self._last_used > self._idle_seconds
                    if self._open is not None and (idle or (self._root is not None and _others_wait(self._root))):
                        self._close()
                finally:
                    self._turn.release()

        self._watcher = threading.Thread(target=watch, name="store-lease", daemon=True)
        self._watcher.start()


# --------------------------------------------------------------------------------------------
# From qdrant-client's local mode (facepipe's embedded store before Qdrant Edge) to Qdrant Edge
# --------------------------------------------------------------------------------------------


def is_local_mode_store(root: Path) -> bool:
    """A folder written by qdrant-client's local mode: meta.json and collection/<name>/storage.sqlite."""
    return (Path(root) / "meta.json").is_file() and (Path(root) / "collection").is_dir()


def migrate_local_store(root, _locked: bool = False) -> dict[str, int]:
    """Copy every collection of a local-mode store at `root` into Qdrant Edge shards, same ids and
    payloads, then move the old files to `<root>/local-mode-backup/`. Returns points per collection.

    Safe to interrupt: the shards are built in `<root>/shards.migrating` and take their place only
    once complete; the old files move last, so a store is always one layout or the other.
    """
    from qdrant_client import QdrantClient

    root = Path(root)
    lock = None if _locked else _lock(root)
    try:
        if not is_local_mode_store(root):
            return {}
        building = root / "shards.migrating"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        try:
            client = QdrantClient(path=str(root))
        except RuntimeError as err:
            if "already accessed" in str(err):
                raise _busy(root) from None
            raise
        copied: dict[str, int] = {}
        try:
            old = FaceStore(ClientBackend(client), embedded=True)
            new = FaceStore(EdgeBackend(building), embedded=True)  # shards.migrating/shards/<name>
            try:
                names = [c.name for c in client.get_collections().collections]
                # faces first: people vectors are the mean of their faces
                for name in sorted(names, key=lambda n: {"faces": 0, "images": 1}.get(_kind(n), 2)):
                    copied[name] = _copy_collection(old, new, name)
            finally:
                new.backend.close()
        finally:
            client.close()
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


def _copy_collection(old: FaceStore, new: FaceStore, name: str) -> int:
    kind = _kind(name)
    profile = name.split("_", 1)[1].replace("_", "-")
    if kind == "people":
        # people were vectorless; their vector is now the mean of their faces' unit embeddings
        new.create(name, PROFILES[profile].dimension, distance="dot")
        return _copy_people(new, new, name, old.scroll(name))
    new.create(name, PROFILES[profile].dimension if kind == "faces" else None)
    return _upsert_in_batches(new, name, old.scroll(name, with_vectors=kind == "faces"))


def _upsert_in_batches(store: FaceStore, name: str, points: Iterable[StoredPoint]) -> int:
    """Write `points` UPSERT_BATCH at a time (they may come from a scroll of any size); how many."""
    n, batch = 0, []
    for point in points:
        batch.append(point)
        n += 1
        if len(batch) == UPSERT_BATCH:
            store.upsert(name, batch)
            batch = []
    store.upsert(name, batch)
    return n


def _copy_people(faces_from: FaceStore, to: FaceStore, name: str, people: Iterable[StoredPoint]) -> int:
    """Write people points with their vector: the mean unit embedding of their faces in `faces_from`."""
    import numpy as np

    profile = name.split("_", 1)[1].replace("_", "-")
    sums: dict[tuple, np.ndarray] = {}
    counts: dict[tuple, int] = {}
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


def open_store_from_settings(wait: float | None = None):
    """The store this deployment uses: a Qdrant server when QDRANT_URL is set, else the embedded one,
    waited for up to `wait` seconds (default FACEPIPE_STORE_WAIT_SECONDS) while another process holds it."""
    return FaceStore.open(
        path=settings.qdrant_path(),
        url=settings.qdrant_url(),
        api_key=settings.qdrant_api_key(),
        wait=settings.store_wait_seconds() if wait is None else wait,
    )


def lease_from_settings() -> StoreLease:
    """A StoreLease of the store this deployment uses."""
    return StoreLease(
        lambda wait: open_store_from_settings(wait), None if settings.qdrant_url() else settings.qdrant_path()
    )
