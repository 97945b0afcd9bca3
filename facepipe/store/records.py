"""What goes in and out of the store, whichever the backend."""

from dataclasses import dataclass, field
from typing import Any

# A payload as Qdrant keeps it: JSON values by key
Payload = dict[str, Any]

# The ledger status of a photo a user deleted from its group: a tombstone, so that the next digest
# of the same source leaves it out (facepipe.domain.forget)
PHOTO_DELETED = "deleted"


@dataclass(frozen=True)
class Where:
    """A filter both backends understand: every `match` field equals its value (a list: any of
    them), no `exclude` field equals its value, and every field in `missing` is absent or null."""

    match: dict[str, Any] = field(default_factory=dict)
    exclude: dict[str, Any] = field(default_factory=dict)
    missing: tuple[str, ...] = ()


def group_filter(group_id: str, **match: Any) -> Where:
    return Where({"group_id": group_id, **match})


def in_group(group_id: str, where: Where | None) -> Where:
    """`where` narrowed to the group: every read of faces, images or people is of one group."""
    if where is None:
        return group_filter(group_id)
    return Where({**where.match, "group_id": group_id}, where.exclude, where.missing)


@dataclass
class StoredPoint:
    """A point read back from the store, whichever the backend: id, payload, vector, score."""

    id: str
    payload: Payload
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
    """The group as a digest leaves it, for its summary and its checks. What is counted is the run's
    own work (as costly as the digest, not as the group: a watch's digest of ten photos into a group
    of a million faces must not read the group's whole ledger)."""

    faces_in_group: int
    faces_of_run: int  # the faces in the store that the run stored
    faces_in_ledger_of_run: int  # what the ledger rows the run wrote say their photos have
