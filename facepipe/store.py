"""The face store: Qdrant collections, payloads and deterministic point ids.

Per model profile there are two collections:
- `faces_<profile>`: one point per face, its embedding (cosine) and payload.
- `images_<profile>`: one vectorless point per (group, image path), the ledger of what was
  digested (content hash, size, mtime, faces, errors), so a re-digest skips unchanged photos
  without reading them, and a changed photo's old faces are replaced, not duplicated.

Embedded mode (`path=`) holds a file lock, so one process opens a store at a time; the pipeline
keeps to that with a Dagster pool of size 1 around the steps that open it.
"""

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from qdrant_client import QdrantClient, models

from facepipe.engine.profiles import DIMENSIONS, MODEL_NAMES

if TYPE_CHECKING:
    from facepipe.engine.faces import ImageResult

# Fixed namespace: the same face always gets the same point id, on every machine.
ID_NAMESPACE = uuid.UUID("5b4c1a8e-6f3d-4d52-9c1e-3a7f0e2b9d10")
UPSERT_BATCH = 512


def face_point_id(group_id: str, content_hash: str, face_index: int, profile: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"face:{group_id}:{content_hash}:{face_index}:{profile}"))


def image_point_id(group_id: str, image_path: str, profile: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"image:{group_id}:{image_path}:{profile}"))


def faces_collection(profile: str) -> str:
    return "faces_" + profile.replace("-", "_")


def images_collection(profile: str) -> str:
    return "images_" + profile.replace("-", "_")


def group_filter(group_id: str, **match: str) -> models.Filter:
    conditions = [models.FieldCondition(key="group_id", match=models.MatchValue(value=group_id))]
    conditions += [
        models.FieldCondition(key=key, match=models.MatchValue(value=value)) for key, value in match.items()
    ]
    return models.Filter(must=conditions)


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


class StoreBusy(RuntimeError):
    """The embedded store's file lock is held by another process: one process opens it at a time."""


class FaceStore:
    def __init__(self, client: QdrantClient, embedded: bool):
        self.client = client
        self.embedded = embedded

    @classmethod
    @contextmanager
    def open(cls, path: str | None = None, url: str | None = None, api_key: str | None = None
             ) -> Iterator["FaceStore"]:
        """A store on a Qdrant server (`url`) or embedded at `path`; closed on exit."""
        try:
            client = QdrantClient(url=url, api_key=api_key) if url else QdrantClient(path=str(path))
        except RuntimeError as err:
            if "already accessed" not in str(err):
                raise
            raise StoreBusy(
                f"the face store at {path} is in use by another process (a digest or clustering run?); "
                "try again when it has finished"
            ) from None
        try:
            yield cls(client, embedded=not url)
        finally:
            client.close()

    def ensure_collections(self, profile: str) -> None:
        faces, images = faces_collection(profile), images_collection(profile)
        if not self.client.collection_exists(faces):
            self.client.create_collection(
                faces,
                vectors_config=models.VectorParams(size=DIMENSIONS[profile], distance=models.Distance.COSINE),
            )
            self._index(faces, "group_id", "image_path", "content_hash")
        if not self.client.collection_exists(images):
            self.client.create_collection(images, vectors_config={})
            self._index(images, "group_id", "image_path")

    def _index(self, collection: str, *fields: str) -> None:
        # embedded Qdrant scans and ignores payload indexes (it warns); a server uses them
        if self.embedded:
            return
        for name in fields:
            self.client.create_payload_index(collection, name, models.PayloadSchemaType.KEYWORD)

    def _scroll(self, collection: str, scroll_filter: models.Filter, with_vectors: bool = False,
                limit: int = 1024) -> Iterator[models.Record]:
        if not self.client.collection_exists(collection):
            return
        offset = None
        while True:
            points, offset = self.client.scroll(
                collection, scroll_filter=scroll_filter, limit=limit, offset=offset,
                with_payload=True, with_vectors=with_vectors,
            )
            yield from points
            if offset is None:
                return

    def digested_images(self, group_id: str, profile: str) -> dict[str, DigestedImage]:
        """Image paths of the group digested without error, with what they were when digested."""
        done = {}
        for point in self._scroll(images_collection(profile), group_filter(group_id, status="done")):
            p = point.payload
            done[p["image_path"]] = DigestedImage(p["content_hash"], p["size"], p["mtime_ns"], p.get("etag"))
        return done

    def write(self, group_id: str, profile: str, results: Iterable["ImageResult"], run_id: str) -> WriteCounts:
        """Store the faces of digested photos and record every photo in the ledger."""
        self.ensure_collections(profile)
        results = list(results)
        counts = WriteCounts()
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")

        # photos digested before whose faces are rewritten now: drop their old faces first
        redone = [r.path for r in results if r.previously_digested and not r.unchanged and not r.error]
        if redone:
            stale = models.Filter(must=[
                *group_filter(group_id).must,
                models.FieldCondition(key="image_path", match=models.MatchAny(any=redone)),
            ])
            counts.faces_replaced = self.client.count(faces_collection(profile), count_filter=stale).count
            self.client.delete(faces_collection(profile), points_selector=models.FilterSelector(filter=stale))

        face_points, image_points = [], []
        for r in results:
            if r.unchanged:  # same bytes, new mtime: keep its faces, note the mtime
                self.client.set_payload(
                    images_collection(profile), payload={"mtime_ns": r.mtime_ns, "size": r.size, "etag": r.etag},
                    points=[image_point_id(group_id, r.path, profile)],
                )
                continue
            image_points.append(models.PointStruct(
                id=image_point_id(group_id, r.path, profile), vector={},
                payload={
                    "group_id": group_id, "image_path": r.path, "status": "failed" if r.error else "done",
                    "error": r.error, "content_hash": r.content_hash, "size": r.size, "mtime_ns": r.mtime_ns, "etag": r.etag,
                    "faces": len(r.faces), "run_id": run_id, "timestamp": now, "model": MODEL_NAMES[profile],
                },
            ))
            if r.error:
                continue
            for face in r.faces:
                x, y, w, h = face.box
                face_points.append(models.PointStruct(
                    id=face_point_id(group_id, r.content_hash, face.face_index, profile),
                    vector=face.embedding.tolist(),
                    payload={
                        "group_id": group_id, "image_path": r.path, "face_index": face.face_index,
                        "detection_confidence": face.confidence,
                        "facial_area": {"x": x, "y": y, "w": w, "h": h},
                        "landmarks": [[round(px, 1), round(py, 1)] for px, py in face.landmarks],
                        "timestamp": now, "model": MODEL_NAMES[profile], "profile": profile,
                        "content_hash": r.content_hash, "image_width": r.width, "image_height": r.height,
                        "run_id": run_id,
                    },
                ))
        for start in range(0, len(face_points), UPSERT_BATCH):
            self.client.upsert(faces_collection(profile), face_points[start:start + UPSERT_BATCH])
        for start in range(0, len(image_points), UPSERT_BATCH):
            self.client.upsert(images_collection(profile), image_points[start:start + UPSERT_BATCH])
        counts.faces_stored = len(face_points)
        counts.images_recorded = len(image_points)
        return counts

    def count_faces(self, group_id: str, profile: str) -> int:
        if not self.client.collection_exists(faces_collection(profile)):
            return 0
        return self.client.count(faces_collection(profile), count_filter=group_filter(group_id)).count

    def faces(self, group_id: str, profile: str, with_vectors: bool = False, **match: str) -> list[models.Record]:
        return list(self._scroll(faces_collection(profile), group_filter(group_id, **match), with_vectors))

    def nearest_faces(self, group_id: str, profile: str, embedding, limit: int = 10,
                      min_score: float | None = None) -> list[models.ScoredPoint]:
        """The group's faces most similar (cosine) to `embedding`, best first."""
        return self.client.query_points(
            faces_collection(profile), query=list(map(float, embedding)), query_filter=group_filter(group_id),
            limit=limit, score_threshold=min_score, with_payload=True,
        ).points


def open_store_from_settings():
    """The store this deployment uses: a Qdrant server when QDRANT_URL is set, else the embedded one."""
    from facepipe import settings

    return FaceStore.open(path=settings.qdrant_path(), url=settings.qdrant_url(), api_key=settings.qdrant_api_key())
