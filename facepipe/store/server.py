"""A Qdrant server, through qdrant-client; qdrant-client's local mode (`path=`) goes through the same
backend: the tests use it as the server's stand-in, and the migration reads with it the stores
written by facepipe before Qdrant Edge.

qdrant-client takes seconds to import: this module is imported only where a store opens with it.
"""

import os
from collections.abc import Iterable, Sequence
from typing import Any

from qdrant_client import QdrantClient, models

from facepipe.store.backend import (
    INTEGER_INDEXES,
    KEYWORD_INDEXES,
    UPSERT_BATCH,
    Backend,
    Distance,
    stored_point,
)
from facepipe.store.errors import StoreUnavailable, busy
from facepipe.store.ids import kind_of
from facepipe.store.records import Payload, StoredPoint, Where, in_group


class ServerBackend(Backend):
    """qdrant-client: a Qdrant server (`url`), or its local mode (`path`) for tests and migration."""

    location = "(the Qdrant server)"

    def __init__(self, client: QdrantClient):
        self.client = client
        self.local = client._client.__class__.__name__ == "QdrantLocal"

    @classmethod
    def connect(
        cls, url: str | None = None, api_key: str | None = None, path: str | os.PathLike[str] | None = None
    ) -> "ServerBackend":
        """The server at `url` (asked once, so that one that is down says so now), or local mode at `path`."""
        try:
            # qdrant-client's own version check runs in a thread and only warns, also when the
            # server cannot be reached: _reachable asks the server once and says so in one line
            client = (
                QdrantClient(url=url, api_key=api_key, check_compatibility=False)
                if url
                else QdrantClient(path=str(path))
            )
        except RuntimeError as err:  # local mode: "Storage folder ... is already accessed by another instance"
            if "already accessed" not in str(err):
                raise
            raise busy(str(path)) from None
        if url:
            _reachable(client, url)
        return cls(client)

    def exists(self, name: str) -> bool:
        return self.client.collection_exists(name)

    def create(self, name: str, size: int | None, distance: Distance = "cosine") -> None:
        vectors: models.VectorParams | dict[str, models.VectorParams] = (
            models.VectorParams(
                size=size, distance=models.Distance.COSINE if distance == "cosine" else models.Distance.DOT
            )
            if size
            else {}
        )
        self.client.create_collection(name, vectors_config=vectors)
        if self.local:  # local mode scans and ignores payload indexes (it warns); a server uses them
            return
        kind = kind_of(name)
        for key in KEYWORD_INDEXES[kind]:
            self.client.create_payload_index(name, key, models.PayloadSchemaType.KEYWORD)
        for key in INTEGER_INDEXES[kind]:
            self.client.create_payload_index(name, key, models.PayloadSchemaType.INTEGER)

    def has_vectors(self, name: str) -> bool:
        vectors = self.client.get_collection(name).config.params.vectors
        return bool(vectors) and not (isinstance(vectors, dict) and not vectors)

    def drop(self, name: str) -> None:
        self.client.delete_collection(name)

    def drop_group(self, name: str, group_id: str) -> None:
        if self.exists(name):
            self.client.delete(name, points_selector=models.FilterSelector(filter=self._filter(group_id, None)))

    @staticmethod
    def _ids_in_group(group_id: str, ids: Sequence[str]) -> models.Filter:
        """The group's points among `ids` (an id names a point of one group; this makes sure)."""
        in_the_group = models.FieldCondition(key="group_id", match=models.MatchValue(value=group_id))
        return models.Filter(must=[models.HasIdCondition(has_id=list(ids)), in_the_group])

    @staticmethod
    def _filter(group_id: str | None, where: Where | None) -> models.Filter | None:
        """`where` within the group (None: the whole collection)."""
        if group_id is not None:
            where = in_group(group_id, where)
        if where is None:
            return None

        def condition(key: str, value: Any) -> models.FieldCondition:
            match: models.MatchAny | models.MatchValue = (
                models.MatchAny(any=list(value))
                if isinstance(value, (list, tuple, set))
                else models.MatchValue(value=value)
            )
            return models.FieldCondition(key=key, match=match)

        must: list[models.Condition] = [condition(k, v) for k, v in where.match.items()]
        must += [models.IsEmptyCondition(is_empty=models.PayloadField(key=key)) for key in where.missing]
        must_not: list[models.Condition] = [condition(k, v) for k, v in where.exclude.items()]
        return models.Filter(must=must or None, must_not=must_not or None)

    def upsert(self, name: str, group_id: str, points: Sequence[StoredPoint]) -> None:
        for start in range(0, len(points), UPSERT_BATCH):
            self.client.upsert(
                name,
                [
                    models.PointStruct(id=p.id, vector=p.vector if p.vector is not None else {}, payload=p.payload)
                    for p in points[start : start + UPSERT_BATCH]
                ],
            )

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
        if not self.exists(name):
            return [], None
        records, next_offset = self.client.scroll(
            name,
            scroll_filter=self._filter(group_id, where),
            limit=limit,
            offset=offset,
            with_payload=list(payload_keys) if payload_keys is not None else True,
            with_vectors=with_vectors,
        )
        points = [stored_point(r, with_vectors) for r in records]
        return points, (str(next_offset) if next_offset is not None else None)

    def count(self, name: str, group_id: str, where: Where | None = None) -> int:
        if not self.exists(name):
            return 0
        return self.client.count(name, count_filter=self._filter(group_id, where), exact=True).count

    def delete(self, name: str, group_id: str, where: Where | None = None, ids: Sequence[str] | None = None) -> None:
        if not self.exists(name):
            return
        selector: models.PointIdsList | models.FilterSelector
        if ids is not None:
            selector = models.FilterSelector(filter=self._ids_in_group(group_id, ids))
        elif where is not None:
            selector = models.FilterSelector(filter=self._filter(group_id, where))
        else:
            raise ValueError(f"a delete from {name} names neither its points nor a filter")
        self.client.delete(name, points_selector=selector)

    def set_payload(self, name: str, group_id: str, payload: Payload, ids: Sequence[str]) -> None:
        if ids:
            self.client.set_payload(name, payload=payload, points=self._ids_in_group(group_id, ids))

    def retrieve(self, name: str, group_id: str, ids: Sequence[str], with_vectors: bool = False) -> list[StoredPoint]:
        if not ids or not self.exists(name):
            return []
        found = self.client.retrieve(name, list(ids), with_vectors=with_vectors)
        return [stored_point(r, with_vectors) for r in found if (r.payload or {}).get("group_id") == group_id]

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
        if not self.exists(name):
            return []
        found = self.client.query_points(
            name,
            query=[float(x) for x in vector],
            query_filter=self._filter(group_id, where),
            limit=limit,
            score_threshold=min_score,
            with_payload=True,
            with_vectors=with_vectors,
        ).points
        return [stored_point(r, with_vectors) for r in found]

    def optimize(self, name: str, group_id: str) -> None:
        pass  # a server's optimizers run by themselves; local mode has no index

    def close(self) -> None:
        self.client.close()


def _reachable(client: QdrantClient, url: str) -> None:
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
