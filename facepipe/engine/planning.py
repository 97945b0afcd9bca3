"""What a digest does with a listing: which photos to digest (the ledger skips unchanged ones) and
how they are cut into chunks, one pipeline step each. Light: the listing step runs it."""

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from facepipe.engine.listing import ImageFile


@dataclass
class ImageTask:
    """A photo to digest, with what the store knew of its path before (None: never digested)."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    previous_hash: str | None = None
    etag: str | None = None


class Recorded(Protocol):
    """What the store recorded of a digested photo (the store's DigestedImage)."""

    @property
    def content_hash(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def etag(self) -> str | None: ...


def plan_images(
    files: Iterable[ImageFile], digested: Mapping[str, Recorded], redigest: bool = False
) -> tuple[list[ImageTask], int]:
    """Which listed files to digest, and how many to skip as unchanged.

    `digested` maps a path to what the store recorded for it (content_hash, size, mtime_ns, etag).
    A file with the same size and mtime (an S3 object: the same size and ETag) is skipped without
    being read; one whose mtime moved is read and hashed, and decoded only if its bytes changed.
    """
    tasks: list[ImageTask] = []
    skipped = 0
    for f in files:
        known = digested.get(f.path)
        if (
            known
            and not redigest
            and known.size == f.size
            and (known.etag == f.etag if f.etag else known.mtime_ns == f.mtime_ns)
        ):
            skipped += 1
            continue
        tasks.append(ImageTask(f.path, f.size, f.mtime_ns, known.content_hash if known else None, f.etag))
    return tasks, skipped


# A chunk step costs ~0.5 s to start; below this many photos a chunk would mostly be start-up.
MIN_CHUNK = 32


Task = TypeVar("Task")


def split_into_chunks(tasks: list[Task], workers: int, chunk_size: int) -> list[list[Task]]:
    """At most `chunk_size` tasks a chunk, and at least one chunk per worker.

    With several workers, chunks shrink as the digest goes (guided scheduling): a round of one
    chunk per worker, each half a worker's share of what remains (MIN_CHUNK photos at least),
    then a last round that splits the rest evenly. Steps run in chunk order, so the workers take
    the large chunks first and end on small ones, together, even when one of them was slowed (a
    slow photo, another process on its core). Tasks are shuffled (the same way for
    the same list) so that large and small photos, or a folder of large ones, spread evenly.
    """
    if not tasks:
        return []
    if workers <= 1:
        count = -(-len(tasks) // chunk_size)
        return [tasks[i::count] for i in range(count)]
    tasks = list(tasks)
    random.Random(len(tasks)).shuffle(tasks)
    smallest = min(MIN_CHUNK, -(-len(tasks) // workers))
    sizes: list[int] = []
    remaining = len(tasks)
    while remaining:
        share = -(-remaining // workers)
        if share <= min(2 * smallest, chunk_size):  # the last round: one chunk per worker
            sizes += [remaining // workers + (i < remaining % workers) for i in range(min(workers, remaining))]
            break
        size = min(chunk_size, max(smallest, -(-remaining // (2 * workers))))
        sizes += [size] * min(workers, remaining // size)
        remaining -= size * min(workers, remaining // size)
    chunks: list[list[Task]] = []
    start = 0
    for size in sizes:
        chunks.append(tasks[start : start + size])
        start += size
    return chunks
