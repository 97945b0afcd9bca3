"""The embedded store: Qdrant Edge (`qdrant-edge-py`), Qdrant's own engine inside the process. Each
group has a folder of its own, one shard (a Qdrant Edge folder) per collection in it:
`<store>/groups/<group>/<collection>/`; `<store>/collections.json` holds each collection's vectors."""

import json
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from facepipe.store.backend import (
    INTEGER_INDEXES,
    KEYWORD_INDEXES,
    SCROLL_PAGE,
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
# what its own group costs, never what the other groups hold (docs/face-store.md, "Indexing"):
# - a shard per group and collection: opening a shard reads all of it (Qdrant Edge builds each
#   segment's id and payload bitmaps at load, in proportion to its points), so a digest or a search
#   opens only its group's; a process keeps at most OPEN_SHARDS open (the least recently used closed);
# - a segment is indexed once its vectors pass INDEXING_THRESHOLD_KB, by the write that took it
#   there (every write of faces or ledger rows ends with optimize()), so the unindexed tail a search
#   scans, and every open reads into memory, stays below it; below FULL_SCAN_KB a search scans exactly;
# - no optimisation builds a segment larger than MAX_SEGMENT_KB: that bounds what any one
#   optimize() can cost, whatever the group holds.
# Sizes are of the vectors, in KiB: a dlib face (128 floats) takes 0.5 KiB, a 512-d one 2 KiB; a
# ledger row's placeholder 4 bytes (its threshold turns 25,600 rows into a mapped, cold segment).
INDEXING_THRESHOLD_KB = 10_000  # 20,000 dlib faces
FULL_SCAN_KB = 10_000
MAX_SEGMENT_KB = 40_000  # 80,000 dlib faces
LEDGER_INDEXING_THRESHOLD_KB = 100
LEDGER_MAX_SEGMENT_KB = 1_000
GRAPH_M = 16
OPEN_SHARDS = 32
SPECS = "collections.json"
# What a search reads of every segment it visits: the vectors and the graph. Read in before a
# shard's first search (see read_in).
SEARCHED_FILES = ("vector_storage", "vector_index")
READ_BUFFER = 1 << 20


def group_folder(group_id: str) -> str:
    """A group's folder name: the group id, with what a file name cannot hold escaped (`.` too, so
    that no group is `.` or `..`)."""
    return quote(group_id, safe="-_").replace(".", "%2E")


class EdgeBackend(Backend):
    """Qdrant Edge: an EdgeShard (folder) per group and collection, opened on first use, closed with
    the store (or sooner, past OPEN_SHARDS)."""

    def __init__(self, root: Path):
        import qdrant_edge

        self.q = qdrant_edge
        self.location = str(root)
        self.root = root
        self.groups = root / "groups"
        with store_errors(root):
            self.groups.mkdir(parents=True, exist_ok=True)
        # each collection's vectors: {"size": int | None, "distance": "cosine" | "dot"}
        specs = root / SPECS
        self.specs: dict[str, dict[str, Any]] = json.loads(specs.read_text()) if specs.is_file() else {}
        self.shards: OrderedDict[tuple[str, str], _Checked] = OrderedDict()

    def _path(self, name: str, group_id: str) -> Path:
        return self.groups / group_folder(group_id) / name

    def _shard(self, name: str, group_id: str | None, create: bool = False) -> "_Checked | None":
        """The group's shard of collection `name` (None: it has none yet, unless `create`)."""
        if group_id is None:
            raise ValueError(f"the embedded store reads {name} one group at a time: name the group")
        key = (name, group_id)
        shard = self.shards.get(key)
        if shard is not None:
            self.shards.move_to_end(key)
            return shard
        path = self._path(name, group_id)
        if path.is_dir():
            with store_errors(self.root, name, path):
                loaded = self.q.EdgeShard.load(str(path))
            # what an optimisation killed midway was building (Qdrant Edge never removes it); the
            # shard is ours now (its WAL lock), so no other process is building there
            shutil.rmtree(path / "temp_segments", ignore_errors=True)
        elif create:
            if name not in self.specs:
                raise KeyError(f"the face store at {self.location} has no collection {name}")
            loaded = self._create_shard(name, path)
        else:
            return None
        shard = self.shards[key] = _Checked(loaded, self.root, name, path)
        while len(self.shards) > OPEN_SHARDS:
            _, oldest = self.shards.popitem(last=False)
            oldest.close()
        return shard

    def _create_shard(self, name: str, path: Path) -> "qdrant_edge.EdgeShard":
        q, spec, kind = self.q, self.specs[name], kind_of(name)
        cold = q.Memory.Cold
        # Everything memory-mapped and read on demand ("cold"), nothing loaded at open: with the
        # default in-RAM indexes a 100k-face shard took 0.8-1.1 s to open, cold 0.15-0.25 s.
        # A shard needs a vector: the ledger stores a 1-d placeholder (4 bytes a point), and no graph.
        ledger = spec["size"] is None
        distance = q.Distance.Cosine if spec["distance"] == "cosine" else q.Distance.Dot
        config = q.EdgeConfig(
            vectors=q.EdgeVectorParams(size=spec["size"] or 1, distance=distance, memory=cold),
            payload_memory=cold,
            id_tracker_memory=cold,
            hnsw_config=q.HnswIndexConfig(
                m=0 if ledger else GRAPH_M, ef_construct=100, full_scan_threshold=FULL_SCAN_KB, memory=cold
            ),
            optimizers=q.EdgeOptimizersConfig(
                indexing_threshold=LEDGER_INDEXING_THRESHOLD_KB if ledger else INDEXING_THRESHOLD_KB,
                max_segment_size=LEDGER_MAX_SEGMENT_KB if ledger else MAX_SEGMENT_KB,
            ),
        )
        with store_errors(self.root, name, path):
            path.parent.mkdir(parents=True, exist_ok=True)
            shard = q.EdgeShard.create(str(path), config)
            # no graph of its own for any payload field: they filter, never search (the group is the shard)
            for key in KEYWORD_INDEXES[kind]:
                if key != "group_id":
                    keyword = q.KeywordIndexParams(enable_hnsw=False, memory=cold)
                    shard.update(q.UpdateOperation.create_field_index(key, keyword))
            for key in INTEGER_INDEXES[kind]:
                integer = q.IntegerIndexParams(lookup=True, range=False, enable_hnsw=False, memory=cold)
                shard.update(q.UpdateOperation.create_field_index(key, integer))
        return shard

    def group_ids(self, name: str) -> list[str]:
        """The groups that have a shard of collection `name`."""
        return sorted(unquote(folder.parent.name) for folder in self.groups.glob(f"*/{name}") if folder.is_dir())

    def exists(self, name: str) -> bool:
        return name in self.specs

    def create(self, name: str, size: int | None, distance: Distance = "cosine") -> None:
        # a group's shard is made by its first write (_shard(create=True)) from this spec
        self.specs[name] = {"size": size, "distance": distance}
        self._write_specs()

    def has_vectors(self, name: str) -> bool:
        return True  # every shard has a vector (the ledger a 1-d placeholder)

    def drop(self, name: str) -> None:
        for group_id in self.group_ids(name):
            self.drop_group(name, group_id)
        self.specs.pop(name, None)
        self._write_specs()

    def _write_specs(self) -> None:
        specs = self.root / SPECS
        with store_errors(self.root):
            partial = specs.with_suffix(".partial")
            partial.write_text(json.dumps(self.specs, indent=1, sort_keys=True))
            partial.replace(specs)  # whole or not at all

    def drop_group(self, name: str, group_id: str) -> None:
        shard = self.shards.pop((name, group_id), None)
        if shard is not None:
            shard.close()
        path = self._path(name, group_id)
        with store_errors(self.root, name, path):
            shutil.rmtree(path, ignore_errors=True)
            if path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()

    def _filter(self, where: Where | None) -> "qdrant_edge.Filter | None":
        if where is None:
            return None
        q = self.q

        def condition(key: str, value: Any) -> "qdrant_edge.FieldCondition":
            match = q.MatchAny(list(value)) if isinstance(value, (list, tuple, set)) else q.MatchValue(value)
            return q.FieldCondition(key, match=match)

        must: list[Any] = [condition(k, v) for k, v in where.match.items() if k != "group_id"]
        must += [q.IsEmptyCondition(key) for key in where.missing]
        must_not: list[Any] = [condition(k, v) for k, v in where.exclude.items()]
        if not must and not must_not:
            return None
        return q.Filter(must=must or None, must_not=must_not or None)

    def upsert(self, name: str, group_id: str, points: Sequence[StoredPoint]) -> None:
        if not points:
            return
        q = self.q
        shard = self._shard(name, group_id, create=True)
        assert shard is not None
        for start in range(0, len(points), UPSERT_BATCH):
            batch = points[start : start + UPSERT_BATCH]
            shard.update(
                q.UpdateOperation.upsert_points(
                    [q.Point(p.id, p.vector if p.vector is not None else [1.0], p.payload) for p in batch]
                )
            )

    def scroll(
        self,
        name: str,
        group_id: str | None,
        where: Where | None = None,
        with_vectors: bool = False,
        payload_keys: Iterable[str] | None = None,
        page: int = SCROLL_PAGE,
    ) -> Iterator[StoredPoint]:
        scroll = super().scroll
        if group_id is not None:
            return scroll(name, group_id, where, with_vectors, payload_keys, page)
        # every group's (a migration's read of a whole collection)
        return (p for g in self.group_ids(name) for p in scroll(name, g, where, with_vectors, payload_keys, page))

    def scroll_page(
        self,
        name: str,
        group_id: str | None,
        where: Where | None,
        limit: int,
        offset: str | None = None,
        with_vectors: bool = False,
        payload_keys: Iterable[str] | None = None,
    ) -> tuple[list[StoredPoint], str | None]:
        shard = self._shard(name, group_id)
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

    def count(self, name: str, group_id: str | None, where: Where | None = None) -> int:
        shard = self._shard(name, group_id)
        return shard.count(self.q.CountRequest(exact=True, filter=self._filter(where))) if shard else 0

    def delete(self, name: str, group_id: str, where: Where | None = None, ids: Sequence[str] | None = None) -> None:
        op = self.q.UpdateOperation
        if ids is not None:
            operation = op.delete_points(list(ids))
        elif where is not None:
            condition = self._filter(where)
            if condition is None:  # the whole group
                self.drop_group(name, group_id)
                return
            operation = op.delete_points_by_filter(condition)
        else:
            raise ValueError(f"a delete from {name} names neither its points nor a filter")
        shard = self._shard(name, group_id)
        if shard is not None:
            shard.update(operation)

    def set_payload(self, name: str, group_id: str, payload: Payload, ids: Sequence[str]) -> None:
        if not ids:
            return
        shard = self._shard(name, group_id)
        if shard is not None:
            shard.update(self.q.UpdateOperation.set_payload(list(ids), payload))

    def retrieve(self, name: str, group_id: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        shard = self._shard(name, group_id)
        if shard is None or not ids:
            return []
        found = shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [stored_point(r, with_vectors) for r in found]

    def query(
        self,
        name: str,
        group_id: str,
        vector: Sequence[float],
        where: Where | None,
        limit: int,
        min_score: float | None = None,
        with_vectors: bool = False,
    ) -> list[StoredPoint]:
        shard = self._shard(name, group_id)
        if shard is None:
            return []
        if not shard.searched:
            read_in(shard.path)
            shard.searched = True
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

    def optimize(self, name: str, group_id: str) -> None:
        shard = self._shard(name, group_id)
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

    def __init__(self, shard: "qdrant_edge.EdgeShard", root: Path, name: str, path: Path):
        self._shard, self._root, self._name, self.path = shard, root, name, path
        self.searched = False  # searched since it was opened: its files were read in (read_in)

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        method = getattr(self._shard, attr)

        def call(*args: Any, **kwargs: Any) -> Any:
            with store_errors(self._root, self._name, self.path):
                return method(*args, **kwargs)

        return call


def read_in(shard: Path) -> None:
    """Reads a shard's vectors and graphs into the OS's cache, in one sequential pass.

    Qdrant Edge drops a shard's files from the OS's cache when a process closes it (posix_fadvise
    DONTNEED), so the first searches of the next process (a `facepipe search`, or the HTTP service
    after a digest took the store) fault them back in one random page at a time: a 100,000-face
    group's first ten searches took 24.5 ms of CPU at the median, 4.5 ms after this read, which costs
    about 30 ms once (docs/measurements/store.md). A file it cannot read is left to the search, which
    says what is wrong with it.
    """
    buffer = bytearray(READ_BUFFER)
    for file in searched_files(shard):
        try:
            with open(file, "rb", buffering=0) as f:
                while f.readinto(buffer):
                    pass
        except OSError:
            continue


def searched_files(shard: Path) -> Iterator[Path]:
    """The files of a shard's segments that a search reads: their vectors and graphs (SEARCHED_FILES)."""
    for part in SEARCHED_FILES:
        yield from (file for file in shard.glob(f"segments/*/{part}/**/*") if file.is_file())
