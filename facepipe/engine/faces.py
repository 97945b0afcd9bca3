"""The faces of one photo, and of a chunk of photos: decode -> detect -> align -> embed.

Faces are found down to `min_face_size` pixels wide in the photo's full size (presets.py; the
scaling and tiling that promise it are in detection.py). A chunk is the unit of work of one
pipeline step. A bad photo never fails a chunk: its error is
recorded in its ImageResult and the chunk goes on. Errors that make every photo fail (a missing
model weight) are raised before the first photo.
"""

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from facepipe.engine.detection import detect_faces, detection_scale, merge_duplicates
from facepipe.engine.images import decode_image_reduced, one_line
from facepipe.engine.listing import ImageError, read_listed_image
from facepipe.engine.planning import ImageTask
from facepipe.engine.presets import DEFAULT_MIN_FACE_SIZE
from facepipe.engine.profiles import DetectedFace, Profile, clip_box, load_profile, share_cores
from facepipe.engine.results import ChunkResult, Face, ImageResult

# A face keeps at least this many pixels in the decoded photo its chip is cut from: JPEGs are
# decoded reduced (1/2 to 1/8) only as far as that allows.
CHIP_SOURCE_FACE = 80
# A face narrower than this share of min_face_size is too small. Detectors draw a face's box a
# little wider or narrower than it is: on the real photos, from 0.83 to 1.1 times its width boxed
# by eye (10th to 90th percentile; HOG from 0.86, YuNet from 0.83). At 0.95 the default dropped
# one in five faces of 32 to 48 px as too small (recall 0.90, not 0.96: benchmarks/detection_real.py).
TOO_SMALL_FRACTION = 0.8
# Two detectors box a turned face differently (HOG's square from the brow, YuNet's from the
# hairline, shifted to the side the head turns to): a box half inside a better one is the same
# face. On the real photos this merged 2 duplicates more than the within-detector 0.7 and no face
# (a one-off run, 2026-12-02: docs/measurements/detection.md).
SAME_FACE_INSIDE = 0.5


def decode_reduction(profile: Profile, min_face_size: float) -> float:
    """How much a photo may be shrunk in decoding: no detector needs more pixels than it sees faces
    of min_face_size in, nor the aligned chips."""
    return min_face_size / max(*(d.smallest_face for d in profile.detectors), CHIP_SOURCE_FACE)


@dataclass
class FoundFaces:
    """The faces of a photo before embedding, and what was dropped."""

    faces: list[DetectedFace]  # at least min_face_size wide, at or above the confidence, left to right
    dropped: int  # below the confidence
    too_small: int  # narrower than min_face_size


def find_faces(
    profile: Profile,
    image: np.ndarray,
    confidence: float,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    full_size: tuple[int, int] | None = None,
) -> FoundFaces:
    """Detect and align the faces at least `min_face_size` pixels wide and at or above `confidence`.

    `image` may be a reduced decode of a photo whose real size is `full_size` (width, height):
    sizes are then in the photo's full-size pixels, and so are the boxes and landmarks returned.
    """
    full_size = full_size or (image.shape[1], image.shape[0])
    pixel_scale = image.shape[1] / full_size[0]  # decoded pixels per full-size pixel
    smallest = min_face_size * pixel_scale
    # each detector sees the photo at its own scale; a face two of them find is kept once, as the
    # more confident one saw it
    seen = [
        face for d in profile.detectors for face in detect_faces(d, image, detection_scale(d.smallest_face, smallest))
    ]
    detected = merge_duplicates(seen, inside=SAME_FACE_INSIDE)
    large = [f for f in detected if f.width >= TOO_SMALL_FRACTION * smallest]
    kept = [f for f in large if f.confidence >= confidence]
    aligned = profile.align(image, kept)
    if full_size != (image.shape[1], image.shape[0]):
        aligned = [_to_full_size(f, image, *full_size) for f in aligned]
    aligned.sort(key=lambda f: f.box[:2])
    return FoundFaces(aligned, len(large) - len(kept), len(detected) - len(large))


def faces_in_image(
    profile: Profile,
    image: np.ndarray,
    confidence: float,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    seconds: dict[str, float] | None = None,
    full_size: tuple[int, int] | None = None,
) -> tuple[list[Face], FoundFaces]:
    """`find_faces`, embedded: the faces, and what was found (with the counts of those dropped)."""
    seconds = seconds if seconds is not None else defaultdict(float)
    start = time.perf_counter()
    found = find_faces(profile, image, confidence, min_face_size, full_size)
    seconds["detect"] += time.perf_counter() - start

    start = time.perf_counter()
    embeddings = profile.embed([f.chip for f in found.faces])
    seconds["embed"] += time.perf_counter() - start
    faces = [
        Face(i, f.box, f.landmarks, round(float(f.confidence), 4), embeddings[i]) for i, f in enumerate(found.faces)
    ]
    return faces, found


def _to_full_size(face: DetectedFace, image: np.ndarray, width: int, height: int) -> DetectedFace:
    sx, sy = width / image.shape[1], height / image.shape[0]
    x, y, w, h = face.box
    face.box = clip_box(x * sx, y * sy, (x + w) * sx, (y + h) * sy, width, height)
    face.landmarks = [(px * sx, py * sy) for px, py in face.landmarks]
    return face


def faces_in_chunk(
    tasks: list[ImageTask],
    profile_name: str,
    confidence: float,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    redigest: bool = False,
    read: Callable[[str], tuple[bytes, str]] = read_listed_image,
    on_photo: Callable[[list[ImageResult]], None] | None = None,
    processes: int = 1,
) -> ChunkResult:
    """The faces of each task's photo; `read` fetches a photo's bytes and SHA-256 (local files by
    default); `on_photo` is called with the results so far after each photo (progress); `processes`
    is how many processes of this machine run chunks at once (each takes its share of the cores).

    Each photo's error is one line: a bad file (ImageError: unreadable, too large, a decompression
    bomb, not an image), or anything a model raised on it, named by its type.
    """
    seconds: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    profile = load_profile(profile_name)  # raises for missing weights, before any photo
    seconds["load_models"] = time.perf_counter() - start  # ~0 where a worker preloaded them
    most_reduction = decode_reduction(profile, min_face_size)
    results = []
    with share_cores(processes):
        for task in tasks:
            result = ImageResult(
                task.path, task.size, task.mtime_ns, task.etag, previously_digested=task.previous_hash is not None
            )
            results.append(result)
            try:
                start = time.perf_counter()
                data, result.content_hash = read(task.path)
                seconds["read"] += time.perf_counter() - start
                if result.content_hash == task.previous_hash and not redigest:
                    result.unchanged = True  # touched, not changed: no need to decode
                    continue
                start = time.perf_counter()
                image, (result.width, result.height) = decode_image_reduced(data, most_reduction)
                del data
                seconds["decode"] += time.perf_counter() - start
                result.faces, found = faces_in_image(
                    profile, image, confidence, min_face_size, seconds, (result.width, result.height)
                )
                result.faces_dropped, result.faces_too_small = found.dropped, found.too_small
            except ImageError as err:
                result.error = str(err)
            except Exception as err:  # a photo that breaks a model must not break the digest
                result.error = f"{type(err).__name__}: {one_line(str(err))}"
            finally:
                if on_photo:
                    on_photo(results)
    return ChunkResult(results, dict(seconds))
