"""FaceStore: facepipe's face store, whichever backend holds it, in one vocabulary for faces, images
(the ledger) and people alike: `count_`, `scroll_` (every match, a page at a time), `get_` (by id),
`nearest_`, `write_`, `set_..._payload` and `delete_`. Each takes the group and the profile first (faces
and ledger rows by id take the profile only: their id names them in one group), and an optional `where`
narrows what it reads within the group. The collections themselves are the backend's (`store.backend`)."""

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facepipe import settings
from facepipe.engine.profiles import PROFILES
from facepipe.store.backend import INDEXED_AS_THEY_FILL, SCROLL_PAGE, Backend, Distance
from facepipe.store.edge import EdgeBackend
from facepipe.store.errors import RECOVER, StoreDamaged, check_room, store_errors
from facepipe.store.ids import (
    face_point_id,
    faces_collection,
    image_point_id,
    images_collection,
    kind_of,
    local_path,
    people_collection,
    person_point_id,
    stored_path,
)
from facepipe.store.lock import lock_store
from facepipe.store.migrate import (
    copy_people,
    is_local_mode_store,
    migrate_local_store,
    split_is_due,
    split_shards_by_group,
)
from facepipe.store.records import (
    PHOTO_DELETED,
    DigestedImage,
    DigestTotals,
    Payload,
    StoredPoint,
    Where,
    WriteCounts,
)

if TYPE_CHECKING:
    from facepipe.engine.faces import ImageResult

PHOTOS_PER_WRITE = 1024
# ids a ledger or face lookup asks for at once
LOOKUP_BATCH = 1024


class FaceStore:
    """facepipe's face store. Which backend holds it is decided in `open` and hidden from callers."""

    def __init__(self, backend: Backend):
        self.backend = backend

    @classmethod
    @contextmanager
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
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
        layout is migrated to Qdrant Edge on first open, its old files kept in a backup folder; one
        of Qdrant Edge with a shard per collection (before facepipe kept a shard per group) is split
        by group on first open.
        """
        if url or backend == "local":
            from facepipe.store.server import ServerBackend  # qdrant-client takes seconds to import

            store = cls(ServerBackend.connect(url=url, api_key=api_key, path=path))
            try:
                yield store
            finally:
                store.backend.close()
            return

        if path is None:
            raise ValueError("an embedded store needs its path")
        root = Path(path)
        with store_errors(root):
            root.mkdir(parents=True, exist_ok=True)
            check_room(root)
            lock = lock_store(root, wait)
        try:
            if migrate and is_local_mode_store(root):
                migrate_local_store(root, locked=True)
            if migrate and split_is_due(root):
                split_shards_by_group(root, locked=True)
            store = cls(EdgeBackend(root))
            try:
                yield store
            finally:
                store.backend.close()
        finally:
            lock.close()  # releases the flock

    # -- collections ------------------------------------------------------------------------------

    def _create(self, collection: str, size: int | None, distance: Distance = "cosine") -> None:
        if not self.backend.exists(collection):
            self.backend.create(collection, size, distance)

    def ensure_collections(self, profile: str) -> None:
        self._create(faces_collection(profile), PROFILES[profile].dimension)
        self._create(images_collection(profile), None)

    def ensure_people_collection(self, profile: str) -> None:
        """The people collection, its vector the mean of a person's unit face embeddings (dot product).

        A people collection without vectors (facepipe before Qdrant Edge, on a server) is rebuilt
        with them, names and ids kept.
        """
        name, dimension = people_collection(profile), PROFILES[profile].dimension
        if self.backend.exists(name) and not self.backend.has_vectors(name):
            people = list(self.backend.scroll(name, None))
            self.backend.drop(name)
            self.backend.create(name, dimension, "dot")
            copy_people(self.backend, self.backend, name, people)
            return
        self._create(name, dimension, distance="dot")

    def _upsert(self, collection: str, group_id: str, points: Sequence[StoredPoint]) -> None:
        self.backend.upsert(collection, group_id, points)
        self._index_as_it_fills(collection, group_id)

    def _set_payload(self, collection: str, group_id: str, payload: Payload, ids: Sequence[str]) -> None:
        self.backend.set_payload(collection, group_id, payload, ids)
        self._index_as_it_fills(collection, group_id)  # Qdrant moves an indexed point it updates into the tail

    def _index_as_it_fills(self, collection: str, group_id: str) -> None:
        """Index the group's segment a write of faces or ledger rows took past the indexing
        threshold, in that write: the unindexed tail (scanned by every search, read by every open)
        never grows past the threshold and one write's batch. Free (~50 µs) when no segment is due;
        when one is, bounded by the largest segment it may build (edge.py), whatever the group holds."""
        if kind_of(collection) in INDEXED_AS_THEY_FILL:
            self.backend.optimize(collection, group_id)

    def optimize(self, group_id: str, profile: str) -> None:
        """Index what is due in the group (Qdrant Edge builds indexes only when asked; a server does
        it by itself). Every write already does (see _index_as_it_fills): this is for a store written
        by an older facepipe, or by hand."""
        for collection in (faces_collection(profile), images_collection(profile)):
            self.backend.optimize(collection, group_id)

    # -- faces --------------------------------------------------------------------------------------

    def count_faces(self, group_id: str, profile: str, where: Where | None = None) -> int:
        return self.backend.count(faces_collection(profile), group_id, where)

    def scroll_faces(
        self,
        group_id: str,
        profile: str,
        where: Where | None = None,
        with_vectors: bool = False,
        payload_keys: Iterable[str] | None = None,
        page: int = SCROLL_PAGE,
    ) -> Iterator[StoredPoint]:
        """The group's faces (matching `where`), a page at a time."""
        return self.backend.scroll(faces_collection(profile), group_id, where, with_vectors, payload_keys, page)

    def get_faces(
        self, group_id: str, profile: str, face_ids: Sequence[str], with_vectors: bool = False
    ) -> list[StoredPoint]:
        """The group's faces among `face_ids` (a face of another group is not found)."""
        return self.backend.retrieve(faces_collection(profile), group_id, face_ids, with_vectors)

    def nearest_faces(
        self,
        group_id: str,
        profile: str,
        vector: Sequence[float],
        limit: int = 10,
        min_score: float | None = None,
        where: Where | None = None,
    ) -> list[StoredPoint]:
        """The group's faces most similar (cosine) to `vector`, best first."""
        return self.backend.query(faces_collection(profile), group_id, vector, where, limit, min_score)

    def set_faces_payload(self, group_id: str, profile: str, face_ids: Sequence[str], payload: Payload) -> None:
        self._set_payload(faces_collection(profile), group_id, payload, face_ids)

    def delete_faces(self, group_id: str, profile: str, face_ids: Sequence[str]) -> None:
        """Delete faces by id; their people are left to facepipe.domain.people to recount."""
        if face_ids:
            self.backend.delete(faces_collection(profile), group_id, ids=face_ids)

    def delete_faces_of_images(self, group_id: str, profile: str, paths: Sequence[str]) -> int:
        """Delete the faces of the group's photos at `paths`; how many. Their people are marked stale,
        and facepipe.domain.people recounts them."""
        faces = faces_collection(profile)
        stale = Where({"image_path": [stored_path(path) for path in paths]})
        dropped = self.backend.count(faces, group_id, stale)
        losing = {
            p.payload["person_id"]
            for p in self.backend.scroll(faces, group_id, stale, payload_keys=("person_id",))
            if p.payload.get("person_id") is not None
        }
        if losing:
            self.set_people_payload(group_id, profile, losing, {"stale": True})
        self.backend.delete(faces, group_id, stale)
        return dropped

    def face_ids_of_run(
        self, group_id: str, profile: str, run_id: str, limit: int = 100, offset: str | None = None
    ) -> tuple[list[str], str | None]:
        """A page of the ids of the faces a digest run stored, and the next page's offset."""
        points, next_offset = self.backend.scroll_page(
            faces_collection(profile), group_id, Where({"run_id": run_id}), limit, offset, payload_keys=[]
        )
        return [p.id for p in points], next_offset

    # -- images: the ledger of what was digested ----------------------------------------------------

    def count_images(self, group_id: str, profile: str, where: Where | None = None) -> int:
        return self.backend.count(images_collection(profile), group_id, where)

    def scroll_images(
        self,
        group_id: str,
        profile: str,
        where: Where | None = None,
        payload_keys: Iterable[str] | None = None,
        page: int = SCROLL_PAGE,
    ) -> Iterator[StoredPoint]:
        """The group's ledger rows (matching `where`), a page at a time."""
        return self.backend.scroll(images_collection(profile), group_id, where, False, payload_keys, page)

    def images_page(
        self,
        group_id: str,
        profile: str,
        where: Where | None,
        limit: int,
        offset: str | None = None,
        payload_keys: Iterable[str] | None = None,
    ) -> tuple[list[StoredPoint], str | None]:
        """A page of the group's ledger rows (matching `where`) from `offset` on, and the next page's offset."""
        return self.backend.scroll_page(
            images_collection(profile), group_id, where, limit, offset, payload_keys=payload_keys
        )

    def get_images(self, group_id: str, profile: str, image_ids: Sequence[str]) -> list[StoredPoint]:
        """The group's ledger rows by id (a photo's id: ids.image_point_id of its group and path),
        those the store has."""
        images = images_collection(profile)
        return [
            row for batch in _batches(image_ids, LOOKUP_BATCH) for row in self.backend.retrieve(images, group_id, batch)
        ]

    def set_images_payload(self, group_id: str, profile: str, image_ids: Sequence[str], payload: Payload) -> None:
        self._set_payload(images_collection(profile), group_id, payload, image_ids)

    def delete_images(self, group_id: str, profile: str, image_ids: Sequence[str], tombstones: bool = True) -> None:
        """Delete ledger rows by id. With `tombstones`, each row is replaced by a tombstone (its group
        and path only, status PHOTO_DELETED) so that later digests leave the photo out; without, the
        photo is forgotten and the same path digested later is a new photo."""
        if not tombstones:
            if image_ids:
                self.backend.delete(images_collection(profile), group_id, ids=image_ids)
            return
        now = datetime.now(UTC).isoformat(timespec="seconds")
        keep = ("group_id", "image_path")
        self._upsert(
            images_collection(profile),
            group_id,
            [
                StoredPoint(row.id, {**{k: row.payload[k] for k in keep}, "status": PHOTO_DELETED, "deleted_at": now})
                for row in self.get_images(group_id, profile, image_ids)
            ],
        )

    def write_images(self, group_id: str, profile: str, results: Iterable["ImageResult"], run_id: str) -> WriteCounts:
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
            counts.faces_replaced = self.delete_faces_of_images(group_id, profile, redone)
        # the faces a user deleted from a photo stay deleted whenever it is read again (facepipe.domain.forget);
        # a photo that fails keeps them in its ledger row, for the digest that reads it next
        deleted_faces = self._deleted_faces(group_id, profile, [r.path for r in results if not r.unchanged])

        # a batch of photos at a time: memory holds one batch's points, not the digest's
        for start in range(0, len(results), PHOTOS_PER_WRITE):
            face_points, image_points = self._points(
                group_id, profile, results[start : start + PHOTOS_PER_WRITE], run_id, now, deleted_faces
            )
            # faces before the ledger: a photo is recorded as digested only once its faces are stored
            self._upsert(faces, group_id, face_points)
            self._upsert(images, group_id, image_points)
            counts.faces_stored += len(face_points)
            counts.images_recorded += len(image_points)
        return counts

    def _deleted_faces(self, group_id: str, profile: str, paths: list[str]) -> dict[str, list[Payload]]:
        """The boxes (facial_area) of the faces a user deleted from the group's photos at `paths`, by path."""
        rows = self.get_images(group_id, profile, [image_point_id(group_id, path, profile) for path in paths])
        return {
            local_path(row.payload["image_path"]): row.payload["deleted_faces"]
            for row in rows
            if row.payload.get("deleted_faces")
        }

    def _points(
        self,
        group_id: str,
        profile: str,
        results: list["ImageResult"],
        run_id: str,
        now: str,
        deleted_faces: dict[str, list[Payload]],
    ) -> tuple[list[StoredPoint], list[StoredPoint]]:
        face_points, image_points = [], []
        for r in results:
            if r.unchanged:  # same bytes, new mtime: keep its faces, note the mtime
                self.set_images_payload(
                    group_id,
                    profile,
                    [image_point_id(group_id, r.path, profile)],
                    {"mtime_ns": r.mtime_ns, "size": r.size, "etag": r.etag},
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
            assert r.content_hash is not None  # a photo read without error has its hash
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
        points: Iterable[StoredPoint]
        if paths is None:
            points = self.scroll_images(group_id, profile, Where({"status": "done"}), payload_keys=keys, page=4096)
        else:
            points = self.get_images(group_id, profile, [image_point_id(group_id, path, profile) for path in paths])
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
        for batch in _batches([text for text, (_, n) in done.items() if n], LOOKUP_BATCH):
            held: dict[str, int] = {}
            for face in self.scroll_faces(
                group_id, profile, Where({"image_path": batch}), payload_keys=("image_path",)
            ):
                held[face.payload["image_path"]] = held.get(face.payload["image_path"], 0) + 1
            lost.update(text for text in batch if held.get(text, 0) < done[text][1])
        if faces_lost is not None:
            faces_lost.extend(local_path(text) for text in sorted(lost))
        return {local_path(text): image for text, (image, _) in done.items() if text not in lost}

    def count_faces_in_ledger(self, group_id: str, profile: str, run_id: str | None = None) -> int:
        """The faces the group's ledger says its digested photos have (those a run digested, with `run_id`)."""
        where = Where({"status": "done", **({"run_id": run_id} if run_id else {})})
        return sum(
            p.payload.get("faces", 0) for p in self.scroll_images(group_id, profile, where, ("faces",), page=4096)
        )

    def check_group_kept(self, group_id: str, profile: str) -> None:
        """StoreDamaged if the group has no faces although its ledger records photos digested with
        faces: a damaged store must never pass for an empty (unknown) group."""
        if self.count_faces(group_id, profile):
            return
        ledger = self.scroll_images(group_id, profile, Where({"status": "done"}), payload_keys=("faces",))
        if any(p.payload.get("faces") for p in ledger):
            raise StoreDamaged(
                f"the face store at {self.backend.location} has lost the faces of group {group_id!r}: its ledger "
                f"({images_collection(profile)}) records photos digested with faces, its "
                f"{faces_collection(profile)} none; {RECOVER}"
            )

    def finish_digest(self, group_id: str, profile: str, run_id: str) -> DigestTotals:
        """What a digest's last step counts in the store: what its chunks wrote, and what the ledger
        says they wrote (they indexed it as they wrote)."""
        return DigestTotals(
            faces_in_group=self.count_faces(group_id, profile),
            faces_of_run=self.count_faces(group_id, profile, Where({"run_id": run_id})),
            faces_in_ledger_of_run=self.count_faces_in_ledger(group_id, profile, run_id),
        )

    # -- people: facepipe.domain.people decides who is who; these read and write its records -------

    def count_people(self, group_id: str, profile: str, where: Where | None = None) -> int:
        return self.backend.count(people_collection(profile), group_id, where)

    def scroll_people(
        self, group_id: str, profile: str, where: Where | None = None, payload_keys: Iterable[str] | None = None
    ) -> Iterator[StoredPoint]:
        """The group's people (matching `where`), a page at a time."""
        return self.backend.scroll(people_collection(profile), group_id, where, payload_keys=payload_keys)

    def get_people(self, group_id: str, profile: str, person_ids: Iterable[int]) -> list[StoredPoint]:
        ids = [person_point_id(group_id, p, profile) for p in person_ids]
        return self.backend.retrieve(people_collection(profile), group_id, ids)

    def nearest_people(
        self, group_id: str, profile: str, vector: Sequence[float], limit: int = 1, min_score: float | None = None
    ) -> list[StoredPoint]:
        """The group's people whose mean face is nearest to `vector` (dot product), best first."""
        return self.backend.query(people_collection(profile), group_id, vector, None, limit, min_score)

    def write_people(self, group_id: str, profile: str, people: Iterable[tuple[Payload, list[float]]]) -> None:
        """Upsert people, each a payload (with its `person_id`) and its vector (the mean of its faces)."""
        self._upsert(
            people_collection(profile),
            group_id,
            [
                StoredPoint(person_point_id(group_id, payload["person_id"], profile), payload, vector)
                for payload, vector in people
            ],
        )

    def set_people_payload(self, group_id: str, profile: str, person_ids: Iterable[int], payload: Payload) -> None:
        """Set these payload fields on the group's people `person_ids` (those the store has)."""
        if self.backend.exists(people_collection(profile)):
            ids = [person_point_id(group_id, p, profile) for p in person_ids]
            self._set_payload(people_collection(profile), group_id, payload, ids)

    def delete_people(self, group_id: str, profile: str, person_ids: Iterable[int]) -> None:
        ids = [person_point_id(group_id, p, profile) for p in person_ids]
        if ids:
            self.backend.delete(people_collection(profile), group_id, ids=ids)

    # -- the group ----------------------------------------------------------------------------------

    def delete_group(self, group_id: str, profile: str) -> None:
        """Delete every face, ledger row (tombstones too) and person of the group."""
        for collection in (faces_collection(profile), images_collection(profile), people_collection(profile)):
            self.backend.drop_group(collection, group_id)


def _same_face(box: tuple[int, int, int, int], area: Payload) -> bool:
    """Whether a detected box (x, y, w, h) is the face at `area` (a stored facial_area): they overlap
    by half their union at least, as detections of one face in one photo do."""
    x, y, w, h = box
    overlap_w = min(x + w, area["x"] + area["w"]) - max(x, area["x"])
    overlap_h = min(y + h, area["y"] + area["h"]) - max(y, area["y"])
    if overlap_w <= 0 or overlap_h <= 0:
        return False
    overlap = overlap_w * overlap_h
    return bool(overlap >= 0.5 * (w * h + area["w"] * area["h"] - overlap))


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def open_store_from_settings(wait: float | None = None) -> AbstractContextManager[FaceStore]:
    """The store this deployment uses: a Qdrant server when QDRANT_URL is set, else the embedded one,
    waited for up to `wait` seconds (default FACEPIPE_STORE_WAIT_SECONDS) while another process holds it."""
    return FaceStore.open(
        path=settings.qdrant_path(),
        url=settings.qdrant_url(),
        api_key=settings.qdrant_api_key(),
        wait=settings.store_wait_seconds() if wait is None else wait,
    )
