"""Find photos in a folder and decode them robustly.

Listing never fails for one bad entry: each entry it leaves out (a symbolic link, an unreadable
folder, a file gone while listing) is kept in `Listing.not_listed` with its reason. Reading and
decoding never let a photo cost more than a stated budget: a file larger than `max_image_bytes`
is refused by its size before it is read, an image of more than `max_image_pixels` by the size
its header states, before any pixel is decoded (a decompression bomb).
"""

import errno
import hashlib
import io
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facepipe import settings

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif",
    ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".sr", ".ras",
    ".heic", ".heif",  # listed, so that they are counted: refused as an unsupported format when decoded
}

# Leading bytes of the formats OpenCV decodes, to find images whose name does not say so.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",
    b"II*\x00", b"MM\x00*",  # TIFF
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
    b"GIF87a", b"GIF89a",
)
# ISO base media files (bytes 4 to 8 are "ftyp") carry their format as a brand in bytes 8 to 12
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


class ImageError(Exception):
    """A photo that cannot be read or decoded; the digest records it and goes on."""


@dataclass(frozen=True)
class ImageFile:
    path: str  # a local path, or s3://bucket/key
    size: int
    mtime_ns: int
    etag: str | None = None  # S3 objects: unchanged while size and ETag are


@dataclass(frozen=True)
class NotListed:
    """An entry of the folder that the listing left out, and why (one line, for the user)."""

    path: str
    reason: str


class Listing(list):
    """The photos found (ImageFile, sorted by path: the list itself) and `not_listed`, the entries
    left out with their reasons. A list, so that callers that only want the photos use it as one."""

    def __init__(self, files=(), not_listed=()):
        super().__init__(files)
        self.not_listed: list[NotListed] = list(not_listed)


def display_path(path: str) -> str:
    """`path` as text that any log or JSON can hold: bytes of a name that are not UTF-8 (kept by
    Python as surrogates, so that the file can still be opened) are shown as U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _brand(head: bytes) -> bytes | None:
    return head[8:12] if head[4:8] == b"ftyp" else None


def looks_like_image(head: bytes) -> bool:
    if head.startswith(_MAGIC):
        return True
    if _brand(head) in _AVIF_BRANDS | _HEIF_BRANDS:
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _has_image_extension(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _why(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "gone while listing (deleted or moved)"
    return err.strerror or str(err)


def list_images(root: str | os.PathLike) -> Listing:
    """Every image under `root`, recursively, by extension or by content, sorted by path.

    A file with an image extension is listed even if its content is not an image: decoding
    it then fails with a recorded error, instead of the file being skipped silently.

    Symbolic links under `root` are not followed (`root` itself may be one): a link inside the
    folder leads to a photo or a folder that is listed anyway under its own path (following it
    would digest it twice), a link out of it would let whoever can write into the folder have any
    file of the machine digested, and a link loop cannot occur. Each link is in `not_listed`, as
    is each folder that cannot be read and each entry that vanished while listing; hidden entries
    (a name starting with ".") are left out silently. Only `root` itself not being a readable
    folder raises (OSError).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"local_dir_path {str(root)!r} is not a folder")
    listing = Listing()
    top = str(root.absolute())
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as err:
            if folder == top:
                raise
            listing.not_listed.append(NotListed(folder, f"folder not read: {_why(err)}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                _list_entry(entry, stack, listing)
            except OSError as err:
                listing.not_listed.append(NotListed(entry.path, _why(err)))
    listing.sort(key=lambda f: f.path)
    listing.not_listed.sort(key=lambda n: n.path)
    return listing


LINK_NOT_FOLLOWED = "symbolic link, not followed (a digest reads only what is inside its folder)"


def _list_entry(entry: os.DirEntry, stack: list[str], listing: Listing) -> None:
    if entry.is_symlink():
        listing.not_listed.append(NotListed(entry.path, LINK_NOT_FOLLOWED))
    elif entry.is_dir(follow_symlinks=False):
        stack.append(entry.path)
    elif not entry.is_file(follow_symlinks=False):
        if _has_image_extension(entry.name):
            listing.not_listed.append(NotListed(entry.path, "not a regular file (a pipe, socket or device)"))
    elif _has_image_extension(entry.name) or _sniff(entry.path):
        info = entry.stat(follow_symlinks=False)
        listing.append(ImageFile(entry.path, info.st_size, info.st_mtime_ns))


def _sniff(path: str) -> bool:
    """Whether a file without an image extension is an image by its first bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as err:  # it may be a photo: say so, rather than leave it out silently
        raise OSError(err.errno, f"file not read to tell whether it is a photo: {err.strerror}") from err
    with os.fdopen(fd, "rb") as f:
        return looks_like_image(f.read(16))


def _size(count: int, unit: str) -> str:
    if unit == "bytes":
        for factor, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if count >= factor:
                return f"{count / factor:,.1f} {name}"
        return f"{count} bytes"
    return f"{count / 1e6:,.1f} megapixels"


def read_image_bytes(path: str, follow_symlinks: bool = True) -> tuple[bytes, str]:
    """The file's bytes and their SHA-256, read once; a file larger than `max_image_bytes` is
    refused by its size before any byte is read, and anything but a regular file is refused."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow_symlinks:
            raise ImageError("symbolic link, not followed (it was not one when listed)") from err
        raise ImageError(f"cannot read file: {err.strerror or err}") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageError("a folder, not a file" if stat.S_ISDIR(info.st_mode) else
                         "not a regular file (a pipe, socket or device)")
    with os.fdopen(fd, "rb") as f:
        budget = settings.max_image_bytes()
        if info.st_size > budget:
            raise ImageError(too_large(info.st_size, budget))
        try:
            data = f.read(budget + 1)  # never more than the budget, even if the file grows meanwhile
        except OSError as err:
            raise ImageError(f"cannot read file: {err.strerror or err}") from err
    if len(data) > budget:
        raise ImageError(too_large(len(data), budget))
    return data, hashlib.sha256(data).hexdigest()


def too_large(size: int, budget: int, what: str = "file") -> str:
    """The sentence that refuses a file (or an S3 object) of `size` bytes over the byte budget."""
    return (f"refused: the {what} is {_size(size, 'bytes')}, more than the {_size(budget, 'bytes')} a photo may have "
            "(FACEPIPE_MAX_IMAGE_BYTES)")


def read_listed_image(path: str) -> tuple[bytes, str]:
    """`read_image_bytes` for a photo the listing found: a symbolic link put in its place since
    is not followed either, and a photo gone since is said to be."""
    try:
        return read_image_bytes(path, follow_symlinks=False)
    except ImageError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            raise ImageError("cannot read file: it is gone (deleted or moved since it was listed)") from err
        raise


@dataclass(frozen=True)
class ImageHeader:
    """What an image's headers say, read without decoding a pixel."""

    format: str  # Pillow's name of it: JPEG, PNG, GIF, WEBP, TIFF, AVIF...
    width: int  # as shown: for a JPEG, its EXIF orientation applied
    height: int


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _facepipe_budget_only():
    """Lift Pillow's own decompression-bomb check (a global) while Pillow reads: it raises without
    saying the image's size, and facepipe's budget, which names it, is checked before any decode."""
    from PIL import Image

    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def read_header(data: bytes) -> ImageHeader | None:
    """The image's format and size from its headers (Pillow opens lazily: it reads the headers and
    decodes no pixel), or None where Pillow cannot tell."""
    from PIL import Image

    try:
        with _facepipe_budget_only(), Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = _orientation(image) if image.format == "JPEG" else 1
            header = ImageHeader(image.format, width, height)
    except Exception:  # whatever Pillow cannot read, OpenCV may; if not, decoding says so
        return None
    if orientation in (5, 6, 7, 8):  # a quarter turn: width and height swap
        header = ImageHeader(header.format, height, width)
    return header


def _orientation(image) -> int:
    from PIL import ExifTags

    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a broken EXIF block: shown as stored
        return 1


def check_pixels(header: ImageHeader | None) -> None:
    """Refuse an image whose headers state more pixels than `max_image_pixels` (a decompression bomb)."""
    budget = settings.max_image_pixels()
    if header and header.width * header.height > budget:
        raise ImageError(
            f"refused: {header.width:,} x {header.height:,} pixels ({_size(header.width * header.height, 'px')}) "
            f"is more than the {_size(budget, 'px')} a photo may have (FACEPIPE_MAX_IMAGE_PIXELS; "
            "a decompression bomb, or a panorama to scale down first)"
        )


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """A JPEG's (width, height) as shown, EXIF orientation applied, from its headers only.
    None if `data` is not a readable JPEG."""
    header = read_header(data)
    return (header.width, header.height) if header and header.format == "JPEG" else None


def decode_image(data: bytes) -> np.ndarray:
    """Decode to 8-bit BGR with the EXIF orientation applied; refuse a decompression bomb first.

    OpenCV's IMREAD_COLOR applies EXIF orientation and turns grayscale, alpha, palette, CMYK and
    16-bit images into 8-bit BGR, so every later step sees one layout. What OpenCV does not read
    but Pillow does (AVIF, whose orientation OpenCV ignores) is decoded by Pillow.
    """
    if not data:
        raise ImageError("empty file")
    header = read_header(data)
    check_pixels(header)
    return _decode_whole(data, header)


# formats Pillow decodes better than OpenCV does: OpenCV ignores AVIF's orientation
_PILLOW_FORMATS = {"AVIF"}


def _decode_whole(data: bytes, header: ImageHeader | None) -> np.ndarray:
    if header is None and _brand(data[:16]) in _HEIF_BRANDS:
        raise ImageError("unsupported format: HEIC/HEIF (neither OpenCV nor Pillow here decodes it): "
                         "convert it to JPEG to digest it")
    if header and header.format in _PILLOW_FORMATS:
        return _decode_with_pillow(data, header)
    image = _opencv_decode(data, cv2.IMREAD_COLOR)
    if image is not None:
        return image
    if header:  # Pillow knows the format but OpenCV does not decode it (or not this file)
        return _decode_with_pillow(data, header)
    if _brand(data[:16]) in _AVIF_BRANDS:
        raise ImageError("unsupported format: AVIF (neither OpenCV nor Pillow here decodes it): "
                         "convert it to JPEG to digest it")
    kind = "not an image" if not looks_like_image(data[:16]) else "corrupt or truncated image"
    raise ImageError(f"cannot decode: {kind}")


def _opencv_decode(data: bytes, flag: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as err:  # never OpenCV's raw assertion text: a sentence
        if "CV_IO_MAX_IMAGE_PIXELS" in str(err):
            raise ImageError("refused: more pixels than OpenCV decodes (a decompression bomb)") from None
        raise ImageError(f"cannot decode: OpenCV failed ({one_line(str(err))})") from None


def _decode_with_pillow(data: bytes, header: ImageHeader) -> np.ndarray:
    from PIL import Image, ImageOps

    try:  # within facepipe's budget, checked before
        with _facepipe_budget_only(), Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as err:
        raise ImageError(f"cannot decode: corrupt or truncated {header.format} image ({one_line(str(err))})") from None
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)


def one_line(text: str, limit: int = 200) -> str:
    """The first line of a library's message, at most `limit` characters: errors are shown one a line."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


# libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size in its DCT, for a fraction of the cost
# of decoding it whole and resizing it.
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def decode_image_reduced(data: bytes, most_reduction: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode like `decode_image`, but at 1/2, 1/4 or 1/8 of full size where that is no more than
    `most_reduction`; return the pixels and the photo's full (width, height).

    Only JPEGs are decoded reduced (they are most photos, and libjpeg does it in its DCT); any
    other image, or a JPEG whose headers do not say its size, is decoded whole.
    """
    if not data:
        raise ImageError("empty file")
    header = read_header(data)
    check_pixels(header)
    if header and header.format == "JPEG" and most_reduction >= 2:
        width, height = header.width, header.height
        for factor, flag in _REDUCED:
            if factor > most_reduction:
                continue
            image = _opencv_decode(data, flag)
            # trust the headers only if the decoder agrees with them (to a rounding)
            if image is not None and abs(image.shape[1] * factor - width) <= factor \
                    and abs(image.shape[0] * factor - height) <= factor:
                return image, (width, height)
            break
    image = _decode_whole(data, header)
    return image, (image.shape[1], image.shape[0])
