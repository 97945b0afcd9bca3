"""Find photos in a folder and decode them robustly."""

import hashlib
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
    path: str
    size: int
    mtime_ns: int


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


def resize_long_side(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """A copy whose longer side is `long_side` pixels, and the scale from original to copy."""
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    if abs(scale - 1.0) < 1e-3:
        return image, 1.0
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=interpolation), scale
