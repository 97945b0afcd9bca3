"""Find photos in a folder and decode them robustly."""

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff",
    ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".sr", ".ras",
}

# Leading bytes of the formats OpenCV decodes, to find images whose name does not say so.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",
    b"II*\x00", b"MM\x00*",  # TIFF
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
)


class ImageError(Exception):
    """A photo that cannot be read or decoded; the digest records it and goes on."""


@dataclass(frozen=True)
class ImageFile:
    path: str  # a local path, or s3://bucket/key
    size: int
    mtime_ns: int
    etag: str | None = None  # S3 objects: unchanged while size and ETag are


def looks_like_image(head: bytes) -> bool:
    if head.startswith(_MAGIC):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _is_image(entry: os.DirEntry) -> bool:
    if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(entry.path, "rb") as f:
            return looks_like_image(f.read(16))
    except OSError:
        return False


def list_images(root: str | os.PathLike) -> list[ImageFile]:
    """Every image under `root`, recursively, by extension or by content, sorted by path.

    A file with an image extension is listed even if its content is not an image: decoding
    it then fails with a recorded error, instead of the file being skipped silently.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"local_dir_path {str(root)!r} is not a folder")
    found: list[ImageFile] = []
    stack = [str(root.absolute())]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True) and _is_image(entry):
                    stat = entry.stat()
                    found.append(ImageFile(entry.path, stat.st_size, stat.st_mtime_ns))
    return sorted(found, key=lambda f: f.path)


def read_image_bytes(path: str) -> tuple[bytes, str]:
    """The file's bytes and their SHA-256, read once."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from err
    return data, hashlib.sha256(data).hexdigest()


def decode_image(data: bytes) -> np.ndarray:
    """Decode to 8-bit BGR with the EXIF orientation applied.

    OpenCV's IMREAD_COLOR applies EXIF orientation and turns grayscale, alpha and 16-bit
    images into 8-bit BGR, so every later step sees one layout.
    """
    if not data:
        raise ImageError("empty file")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        kind = "not an image" if not looks_like_image(data[:16]) else "corrupt or truncated image"
        raise ImageError(f"cannot decode: {kind}")
    return image


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """A JPEG's (width, height) as shown, EXIF orientation applied, from its headers only (Pillow
    opens lazily: it reads the headers and decodes no pixel). None if `data` is not a readable JPEG.
    """
    from PIL import ExifTags, Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                return None
            width, height = image.size
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # whatever Pillow cannot read, the caller decodes whole with OpenCV
        return None
    # orientations 5 to 8 turn the photo a quarter: width and height swap
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size in its DCT, for a fraction of the cost
# of decoding it whole and resizing it.
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def decode_image_reduced(data: bytes, most_reduction: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode like `decode_image`, but at 1/2, 1/4 or 1/8 of full size where that is no more than
    `most_reduction`; return the pixels and the photo's full (width, height).

    Only JPEGs are decoded reduced (they are most photos, and libjpeg does it in its DCT); any
    other image, or a JPEG whose headers do not say its size, is decoded whole.
    """
    size = jpeg_size(data) if data and most_reduction >= 2 else None
    if size:
        width, height = size
        for factor, flag in _REDUCED:
            if factor > most_reduction:
                continue
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
            # trust the headers only if the decoder agrees with them (to a rounding)
            if image is not None and abs(image.shape[1] * factor - width) <= factor \
                    and abs(image.shape[0] * factor - height) <= factor:
                return image, (width, height)
            break
    image = decode_image(data)
    return image, (image.shape[1], image.shape[0])
