"""The embedded store: Qdrant Edge (`qdrant-edge-py`), Qdrant's own engine inside the process, one
shard folder per collection under `<store>/shards/`."""

import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facepipe.store.backend import (
    INTEGER_INDEXES,
    KEYWORD_INDEXES,
    UPSERT_BATCH,
    Backend,
    Distance,
    stored_point,
)
from facepipe.store.errors import store_errors
from facepipe.store.ids import kind_of
from facepipe.store.records import Payload, StoredPoint, Where

if TYPE_CHECKING:
    import qdrant_edge

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


class EdgeBackend(Backend):
    """Qdrant Edge: one EdgeShard (folder) per collection, opened on first use, closed with the store."""

    def __init__(self, root: Path):
        import qdrant_edge

        self.q = qdrant_edge
        self.location = str(root)
        self.root = root / "shards"
        with store_errors(root):
            self.root.mkdir(parents=True, exist_ok=True)
        self.shards: dict[str, _Checked] = {}

    def _shard(self, name: str) -> "_Checked | None":
        shard = self.shards.get(name)
        if shard is None and (self.root / name).is_dir():
            with store_errors(self.root.parent, name):
                loaded = self.q.EdgeShard.load(str(self.root / name))
            # what an optimisation killed midway was building (Qdrant Edge never removes it); the
            # shard is ours now (its WAL lock), so no other process is building there
            shutil.rmtree(self.root / name / "temp_segments", ignore_errors=True)
            shard = self.shards[name] = _Checked(loaded, self.root.parent, name)
        return shard

    def _existing(self, name: str) -> "_Checked":
        shard = self._shard(name)
        if shard is None:
            raise KeyError(f"the face store at {self.location} has no collection {name}")
        return shard

    def exists(self, name: str) -> bool:
        return self._shard(name) is not None

    def create(self, name: str, size: int | None, distance: Distance = "cosine") -> None:
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
            optimizers=q.EdgeOptimizersConfig(
                indexing_threshold=INDEXING_THRESHOLD_KB, max_segment_size=MAX_SEGMENT_KB
            ),
        )
        with store_errors(self.root.parent, name):
            created = q.EdgeShard.create(str(self.root / name), config)
        shard = self.shards[name] = _Checked(created, self.root.parent, name)
        kind = kind_of(name)
        for key in KEYWORD_INDEXES[kind]:
            # group_id is the tenant: the optimizer keeps a group's points together on disk and gives
            # each group its own graph; no graph for the other fields (filters, never searched by)
            tenant = key == "group_id"
            schema = q.KeywordIndexParams(is_tenant=tenant, enable_hnsw=tenant, memory=cold)
            shard.update(q.UpdateOperation.create_field_index(key, schema))
        for key in INTEGER_INDEXES[kind]:
            integer = q.IntegerIndexParams(lookup=True, range=False, enable_hnsw=False, memory=cold)
            shard.update(q.UpdateOperation.create_field_index(key, integer))

    def has_vectors(self, name: str) -> bool:
        return True  # every shard has a vector (the ledger a 1-d placeholder)

    def drop(self, name: str) -> None:
        shard = self.shards.pop(name, None)
        if shard is not None:
            shard.close()
        with store_errors(self.root.parent, name):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def _filter(self, where: Where | None) -> "qdrant_edge.Filter | None":
        if where is None:
            return None
        q = self.q

        def condition(key: str, value: Any) -> "qdrant_edge.FieldCondition":
            match = q.MatchAny(list(value)) if isinstance(value, (list, tuple, set)) else q.MatchValue(value)
            return q.FieldCondition(key, match=match)

        must: list[Any] = [condition(k, v) for k, v in where.match.items()]
        must += [q.IsEmptyCondition(key) for key in where.missing]
        must_not: list[Any] = [condition(k, v) for k, v in where.exclude.items()]
        return q.Filter(must=must or None, must_not=must_not or None)

    def upsert(self, name: str, points: Sequence[StoredPoint]) -> None:
        q = self.q
        shard = self._existing(name)
        for start in range(0, len(points), UPSERT_BATCH):
            batch = points[start : start + UPSERT_BATCH]
            shard.update(
                q.UpdateOperation.upsert_points(
                    [q.Point(p.id, p.vector if p.vector is not None else [1.0], p.payload) for p in batch]
                )
            )

    def scroll_page(
        self,
        name: str,
        where: Where | None,
        limit: int,
        offset: str | None = None,
        with_vectors: bool = False,
        payload_keys: Iterable[str] | None = None,
    ) -> tuple[list[StoredPoint], str | None]:
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
        points = [stored_point(r, with_vectors) for r in records]
        return points, (str(next_offset) if next_offset is not None else None)

    def count(self, name: str, where: Where | None = None) -> int:
        shard = self._shard(name)
        return shard.count(self.q.CountRequest(exact=True, filter=self._filter(where))) if shard else 0

    def delete(self, name: str, where: Where | None = None, ids: Sequence[str] | None = None) -> None:
        shard, op = self._shard(name), self.q.UpdateOperation
        if ids is not None:
            operation = op.delete_points(list(ids))
        elif (condition := self._filter(where)) is not None:
            operation = op.delete_points_by_filter(condition)
        else:
            raise ValueError(f"a delete from {name} names neither its points nor a filter")
        if shard is not None:
            shard.update(operation)

    def set_payload(self, name: str, payload: Payload, ids: Sequence[str]) -> None:
        if ids:
            self._existing(name).update(self.q.UpdateOperation.set_payload(list(ids), payload))

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        shard = self._shard(name)
        if shard is None or not ids:
            return []
        found = shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [stored_point(r, with_vectors) for r in found]

    def query(
        self,
        name: str,
        vector: Sequence[float],
        where: Where | None,
        limit: int,
        min_score: float | None = None,
        with_vectors: bool = False,
    ) -> list[StoredPoint]:
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
        return [stored_point(r, with_vectors) for r in found]

    def optimize(self, name: str) -> None:
        shard = self._shard(name)
        if shard is not None:
            shard.optimize()

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()  # flushes segments: the next open replays no WAL
        self.shards.clear()


class _Checked:
    """An EdgeShard whose errors are what they mean to a user (see errors.edge_error): a file
    emptied under a segment fails a scroll or a search, not only the open (StoreDamaged); a disk
    that fills or turns read-only meanwhile is StoreNotWritable."""

    def __init__(self, shard: "qdrant_edge.EdgeShard", root: Path, name: str):
        self._shard, self._root, self._name = shard, root, name

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        method = getattr(self._shard, attr)

        def call(*args: Any, **kwargs: Any) -> Any:
            with store_errors(self._root, self._name):
                return method(*args, **kwargs)

        return call
