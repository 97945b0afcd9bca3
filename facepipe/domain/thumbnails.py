"""Face thumbnails: a small square crop per face, made on demand and kept under $FACEPIPE_HOME.

A thumbnail's file is named after the face's point id (`thumbnails/ab/abcd....jpg`), never after a
photo's path, so it is as stable as the id and says nothing about where the photo lives. The id
already changes when the photo's bytes change, so a stored thumbnail is never stale.
"""

from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from facepipe import settings
from facepipe.engine.images import decode_image
from facepipe.engine.listing import ImageError, read_image_bytes
from facepipe.store import StoredPoint, local_path

THUMBNAIL_SIZE = 160  # pixels, square
MARGIN = 0.25  # of the face box, added on every side, so the crop shows some hair and chin


def thumbnails_dir() -> Path:
    return settings.facepipe_home() / "thumbnails"


def thumbnail_path(face_id: str) -> Path:
    face_id = str(face_id)
    return thumbnails_dir() / face_id[:2] / f"{face_id}.jpg"


def read_stored_photo(stored: str) -> tuple[bytes, str]:
    """The bytes of a local photo by the path the store keeps for it (facepipe.store.stored_path)."""
    return read_image_bytes(local_path(stored))


def square_crop(face: StoredPoint, image: np.ndarray) -> np.ndarray:
    """The square around the face's box, MARGIN of it added on every side, cut at the photo's edges."""
    area = face.payload["facial_area"]
    side = max(area["w"], area["h"]) * (1 + 2 * MARGIN)
    cx, cy = area["x"] + area["w"] / 2, area["y"] + area["h"] / 2
    height, width = image.shape[:2]
    x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    x1, y1 = min(width, int(cx + side / 2)), min(height, int(cy + side / 2))
    return image[y0:y1, x0:x1]


def face_crop_jpeg(face: StoredPoint, read: Callable[[str], tuple[bytes, str]] = read_stored_photo) -> bytes | None:
    """The face as a JPEG at its photo's resolution (the thumbnail's square, not resized), or None if
    the photo can no longer be read (moved, deleted)."""
    try:
        image = decode_image(read(face.payload["image_path"])[0])
    except ImageError:
        return None
    return bytes(cv2.imencode(".jpg", square_crop(face, image), [cv2.IMWRITE_JPEG_QUALITY, 90])[1])


def face_thumbnail(
    face: StoredPoint, image: np.ndarray | None = None, read: Callable[[str], tuple[bytes, str]] = read_stored_photo
) -> Path | None:
    """The thumbnail of a face (a stored face with its payload), made now if missing.

    `image`: the photo, already decoded; else `read` gets its bytes (a local file by default; an S3
    photo through the digest's own reader). None if the photo can no longer be read (moved, deleted).
    """
    path = thumbnail_path(face.id)
    if path.exists():
        return path
    if image is None:
        try:
            image = decode_image(read(face.payload["image_path"])[0])
        except ImageError:
            return None
    crop = cv2.resize(square_crop(face, image), (THUMBNAIL_SIZE, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.jpg")  # write then rename: a reader never sees half a file
    cv2.imwrite(str(partial), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    partial.replace(path)
    return path


def face_thumbnails(
    faces: Iterable[StoredPoint], read: Callable[[str], tuple[bytes, str]] = read_stored_photo
) -> dict[str, Path | None]:
    """Thumbnails of many faces, decoding each photo at most once (read with `read`)."""
    by_photo: dict[str, list[StoredPoint]] = {}
    for face in faces:
        by_photo.setdefault(face.payload["image_path"], []).append(face)
    found: dict[str, Path | None] = {}
    for image_path, photo_faces in by_photo.items():
        missing = [f for f in photo_faces if not thumbnail_path(f.id).exists()]
        image = None
        if missing:
            try:
                image = decode_image(read(image_path)[0])
            except ImageError:
                found.update({str(f.id): None for f in missing})
        for face in photo_faces:
            if str(face.id) not in found:
                found[str(face.id)] = face_thumbnail(face, image)
    return found
