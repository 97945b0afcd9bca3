"""The face store: Qdrant collections, payloads and deterministic point ids; the only code that talks
to Qdrant.

Per model profile there are three collections (ids.py):
- `faces_<profile>`: one point per face, its embedding (cosine) and payload.
- `images_<profile>`: one point per (group, image path), the ledger of what was digested
  (content hash, size, mtime, faces, errors), so a re-digest skips unchanged photos without
  reading them, and a changed photo's old faces are replaced, not duplicated.
- `people_<profile>`: one point per group and person (facepipe.domain.people), its vector the mean of
  its faces' unit embeddings.

Two backends behind one typed base class (backend.py), chosen in `FaceStore.open` (face_store.py):
- embedded (the default, `path=`): Qdrant Edge (`qdrant-edge-py`, edge.py), Qdrant's own engine
  inside the process: a shard folder per group and collection under `<path>/groups/<group>/`,
  persistent segments, a write-ahead log, payload indexes. A group's shards are opened when first
  used, so what a digest or a search costs does not grow with the other groups, and memory does not
  grow with the store (segments are memory-mapped).
- a Qdrant server (`url=`), through qdrant-client (server.py). qdrant-client's local mode
  (`QdrantClient(path=)`) goes through the same backend: the tests use it as the server's stand-in,
  and the migration (migrate.py) reads stores written by facepipe before Qdrant Edge with it.

One process opens an embedded store at a time (a lock file, lock.py, and Qdrant Edge's own lock on
each shard's WAL); the pipeline keeps to that with a Dagster pool of size 1 around the steps that
open it. A process that finds the store held waits for it by time (`wait=`, marked as waiting), and
`StoreBusy` tells a user that another process held it all that time. A service keeps the store
open between its requests (`StoreLease`, lease.py) and hands it over as soon as another process waits.
Errors reach users as the StoreError family (errors.py), each message naming the store and what to do.
"""

from facepipe.store.backend import Backend
from facepipe.store.edge import INDEXING_THRESHOLD_KB
from facepipe.store.errors import (
    MIN_FREE_BYTES,
    RECOVER,
    StoreBusy,
    StoreDamaged,
    StoreError,
    StoreNotWritable,
    StoreUnavailable,
    free_bytes,
)
from facepipe.store.face_store import FaceStore, open_store_from_settings
from facepipe.store.ids import (
    ID_NAMESPACE,
    face_point_id,
    faces_collection,
    image_point_id,
    images_collection,
    local_path,
    people_collection,
    person_point_id,
    stored_path,
)
from facepipe.store.lease import StoreLease, lease_from_settings
from facepipe.store.migrate import (
    is_local_mode_store,
    is_shard_per_collection_store,
    migrate_local_store,
    split_shards_by_group,
)
from facepipe.store.records import (
    PHOTO_DELETED,
    DigestedImage,
    DigestTotals,
    StoredPoint,
    Where,
    WriteCounts,
    group_filter,
)

__all__ = [
    "ID_NAMESPACE",
    "INDEXING_THRESHOLD_KB",
    "MIN_FREE_BYTES",
    "PHOTO_DELETED",
    "RECOVER",
    "Backend",
    "DigestTotals",
    "DigestedImage",
    "FaceStore",
    "StoreBusy",
    "StoreDamaged",
    "StoreError",
    "StoreLease",
    "StoreNotWritable",
    "StoreUnavailable",
    "StoredPoint",
    "Where",
    "WriteCounts",
    "face_point_id",
    "faces_collection",
    "free_bytes",
    "group_filter",
    "image_point_id",
    "images_collection",
    "is_local_mode_store",
    "is_shard_per_collection_store",
    "lease_from_settings",
    "local_path",
    "migrate_local_store",
    "open_store_from_settings",
    "people_collection",
    "person_point_id",
    "split_shards_by_group",
    "stored_path",
]
