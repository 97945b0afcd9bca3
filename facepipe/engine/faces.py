"""The faces of one photo, and of a chunk of photos: decode -> detect -> align -> embed.

A chunk is the unit of work of one pipeline step. A bad photo never fails a chunk: its error is
recorded in its ImageResult and the chunk goes on. Errors that make every photo fail (a missing
model weight) are raised before the first photo.
"""

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from facepipe.engine.images import ImageError, decode_image, read_image_bytes
from facepipe.engine.profiles import Profile, load_profile

DEFAULT_DETECTION_SIZE = 1024  # long side of the copy the detector sees, in pixels


@dataclass
class Face:
    face_index: int
    box: tuple[int, int, int, int]  # x, y, w, h in original pixels
    landmarks: list[tuple[float, float]]
    confidence: float
    embedding: np.ndarray = field(repr=False)  # unit length, float32


@dataclass
class ImageTask:
    """A photo to digest, with what the store knew of its path before (None: never digested)."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    previous_hash: str | None = None


@dataclass
class ImageResult:
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[Face] = field(default_factory=list)
    faces_dropped: int = 0  # detected below the confidence threshold
    unchanged: bool = False  # same bytes as the store already has: not decoded
    previously_digested: bool = False
    error: str | None = None


@dataclass
class ChunkResult:
    images: list[ImageResult]
    seconds: dict[str, float]  # time per stage: read, decode, detect (with alignment), embed


def faces_in_image(
    profile: Profile,
    image: np.ndarray,
    confidence: float,
    detection_size: int = DEFAULT_DETECTION_SIZE,
    seconds: dict[str, float] | None = None,
) -> tuple[list[Face], int]:
    """The faces at or above `confidence`, left to right, and how many were dropped below it."""
    seconds = seconds if seconds is not None else defaultdict(float)
    start = time.perf_counter()
    detected = profile.faces(image, detection_size)
    kept = sorted((f for f in detected if f.confidence >= confidence), key=lambda f: f.box[:2])
    seconds["detect"] += time.perf_counter() - start

    start = time.perf_counter()
    embeddings = profile.embed([f.chip for f in kept])
    seconds["embed"] += time.perf_counter() - start
    faces = [
        Face(i, f.box, f.landmarks, round(float(f.confidence), 4), embeddings[i])
        for i, f in enumerate(kept)
    ]
    return faces, len(detected) - len(kept)


def faces_in_chunk(
    tasks: list[ImageTask],
    profile_name: str,
    confidence: float,
    detection_size: int = DEFAULT_DETECTION_SIZE,
    redigest: bool = False,
) -> ChunkResult:
    profile = load_profile(profile_name)  # raises for missing weights, before any photo
    seconds: dict[str, float] = defaultdict(float)
    results = []
    for task in tasks:
        result = ImageResult(
            task.path, task.size, task.mtime_ns, previously_digested=task.previous_hash is not None
        )
        results.append(result)
        try:
            start = time.perf_counter()
            data, result.content_hash = read_image_bytes(task.path)
            seconds["read"] += time.perf_counter() - start
            if result.content_hash == task.previous_hash and not redigest:
                result.unchanged = True  # touched, not changed: no need to decode
                continue
            start = time.perf_counter()
            image = decode_image(data)
            del data
            seconds["decode"] += time.perf_counter() - start
            result.height, result.width = image.shape[:2]
            result.faces, result.faces_dropped = faces_in_image(
                profile, image, confidence, detection_size, seconds
            )
        except ImageError as err:
            result.error = str(err)
        except Exception as err:  # a photo that breaks a model must not break the digest
            result.error = f"{type(err).__name__}: {err}"
    return ChunkResult(results, dict(seconds))


def plan_images(files, digested: dict, redigest: bool = False) -> tuple[list[ImageTask], int]:
    """Which listed files to digest, and how many to skip as unchanged.

    `digested` maps a path to what the store recorded for it (content_hash, size, mtime_ns).
    A file with the same size and mtime is skipped without being read; one whose mtime moved is
    read and hashed, and decoded only if its bytes changed.
    """
    tasks, skipped = [], 0
    for f in files:
        known = digested.get(f.path)
        if known and not redigest and (known.size, known.mtime_ns) == (f.size, f.mtime_ns):
            skipped += 1
            continue
        tasks.append(ImageTask(f.path, f.size, f.mtime_ns, known.content_hash if known else None))
    return tasks, skipped


def split_into_chunks(tasks: list, workers: int, chunk_size: int) -> list[list]:
    """At most `chunk_size` tasks a chunk, and at least one chunk per worker.

    Tasks are dealt round-robin so that large and small photos spread evenly over the chunks.
    """
    if not tasks:
        return []
    count = max(-(-len(tasks) // chunk_size), min(workers, len(tasks)))
    return [tasks[i::count] for i in range(count)]
