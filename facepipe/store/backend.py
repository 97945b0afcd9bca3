"""The few operations FaceStore needs from Qdrant, as one typed base class that both backends
implement: Qdrant Edge inside the process (edge.py) and a Qdrant server through qdrant-client
(server.py). Points are read and written as StoredPoint, filters given as Where, whichever the backend."""

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from facepipe.store.records import Payload, StoredPoint, Where

UPSERT_BATCH = 512
SCROLL_PAGE = 1024

Distance = Literal["cosine", "dot"]

# Payload fields filtered on, indexed by both backends (keyword: exact match; integer: person ids);
# the embedded store leaves out group_id, which is its shard (edge.py).
KEYWORD_INDEXES = {
    "faces": ("group_id", "image_path", "run_id"),
    "images": ("group_id", "image_path", "status", "run_id"),
    "people": ("group_id",),
}
INTEGER_INDEXES: dict[str, tuple[str, ...]] = {"faces": ("person_id",), "images": (), "people": ("person_id",)}

# What is indexed as it fills: every write to these kinds of collection ends with optimize(), which
# indexes the segment the write took past its threshold (FaceStore._index_as_it_fills).
INDEXED_AS_THEY_FILL = ("faces", "images")


class Backend(ABC):
    """Collections of points on one Qdrant, each point in one group. Every read and write names its
    group (`group_id`) and sees that group's points only: the embedded store keeps a shard per group
    (edge.py), a server filters by the `group_id` payload (server.py). A `where` narrows within the
    group. A collection, or a group of it, that does not exist reads as empty."""

    # Where the store is, for messages: "the face store at <location>"
    location: str

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def create(self, name: str, size: int | None, distance: Distance = "cosine") -> None:
        """A new collection with vectors of `size` (None: no vectors of its own, as the ledger)."""

    @abstractmethod
    def has_vectors(self, name: str) -> bool:
        """Whether the existing collection `name` holds vectors (people before Qdrant Edge had none)."""

    @abstractmethod
    def drop(self, name: str) -> None:
        """Delete the collection `name` and everything in it."""

    @abstractmethod
    def drop_group(self, name: str, group_id: str) -> None:
        """Delete every point of the group in collection `name`."""

    @abstractmethod
    def upsert(self, name: str, group_id: str, points: Sequence[StoredPoint]) -> None:
        """Write points of the group (their payloads carry its `group_id`)."""

    @abstractmethod
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
        """Up to `limit` points matching `where` from `offset` on, and the next page's offset (None: the last)."""

    @abstractmethod
    def count(self, name: str, group_id: str, where: Where | None = None) -> int: ...

    @abstractmethod
    def delete(self, name: str, group_id: str, where: Where | None = None, ids: Sequence[str] | None = None) -> None:
        """Delete the points with `ids`, or else those matching `where`."""

    @abstractmethod
    def set_payload(self, name: str, group_id: str, payload: Payload, ids: Sequence[str]) -> None:
        """Set these payload fields (others kept) on the points with `ids`."""

    @abstractmethod
    def retrieve(self, name: str, group_id: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        """The group's points among `ids` (an id of another group is not found)."""

    @abstractmethod
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
        """The points matching `where` nearest to `vector` (by the collection's distance), best first."""

    @abstractmethod
    def optimize(self, name: str, group_id: str) -> None:
        """Index what is due in the group's points of `name` (a server does it by itself)."""

    @abstractmethod
    def close(self) -> None: ...

    def scroll(
        self,
        name: str,
        group_id: str | None,
        where: Where | None = None,
        with_vectors: bool = False,
        payload_keys: Iterable[str] | None = None,
        page: int = SCROLL_PAGE,
    ) -> Iterator[StoredPoint]:
        """Every point of the group matching `where`, a page at a time (memory holds one page).
        `group_id` None: every group's (a migration's read of a whole collection)."""
        offset = None
        while True:
            points, offset = self.scroll_page(name, group_id, where, page, offset, with_vectors, payload_keys)
            yield from points
            if offset is None:
                return


def stored_point(record: Any, with_vectors: bool) -> StoredPoint:
    """A record of either library (Qdrant Edge's or qdrant-client's) as a StoredPoint."""
    vector = record.vector if with_vectors else None
    if isinstance(vector, dict):  # the default (unnamed) vector
        vector = vector.get("")
    return StoredPoint(str(record.id), record.payload or {}, vector, getattr(record, "score", None))
