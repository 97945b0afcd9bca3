"""Find photos in a folder and read their bytes, within a budget. Light (no OpenCV, no numpy):
the listing step and the definitions' modules import it; decoding is engine/images.py.

Listing never fails for one bad entry: each entry it leaves out (a symbolic link, an unreadable
folder, a file gone while listing) is kept in `Listing.not_listed` with its reason. Reading and
decoding never let a photo cost more than a stated budget: a file larger than `max_image_bytes`
is refused by its size before it is read (and an image of more than `max_image_pixels` by the
size its header states, before any pixel is decoded: engine/images.py).
"""

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from facepipe import settings

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".png",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".avif",
    ".jp2",
    ".pbm",
    ".pgm",
    ".ppm",
    ".pnm",
    ".sr",
    ".ras",
    ".heic",
    ".heif",  # listed, so that they are counted: refused as an unsupported format when decoded
}

# Leading bytes of the formats OpenCV decodes, to find images whose name does not say so.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",
    b"II*\x00",
    b"MM\x00*",  # TIFF
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
    b"GIF87a",
    b"GIF89a",
)
# ISO base media files (bytes 4 to 8 are "ftyp") carry their format as a brand in bytes 8 to 12
AVIF_BRANDS = {b"avif", b"avis"}
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


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


class Listing(list[ImageFile]):
    """The photos found (ImageFile, sorted by path: the list itself) and `not_listed`, the entries
    left out with their reasons. A list, so that callers that only want the photos use it as one."""

    def __init__(self, files: Iterable[ImageFile] = (), not_listed: Iterable[NotListed] = ()) -> None:
        super().__init__(files)
        self.not_listed: list[NotListed] = list(not_listed)


def file_brand(head: bytes) -> bytes | None:
    """An ISO base media file's brand (AVIF, HEIF...), or None."""
    return head[8:12] if head[4:8] == b"ftyp" else None


def looks_like_image(head: bytes) -> bool:
    if head.startswith(_MAGIC):
        return True
    if file_brand(head) in AVIF_BRANDS | HEIF_BRANDS:
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _has_image_extension(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _why(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "gone while listing (deleted or moved)"
    return err.strerror or str(err)


def list_images(root: str | os.PathLike[str]) -> Listing:
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
        raise NotADirectoryError(f"{str(root)!r} is not a folder")
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


# A photo a user deleted from the group (facepipe.domain.forget): its ledger keeps a tombstone, and
# every later digest of the same source leaves the photo out, with this reason
DELETED_FROM_GROUP = "deleted from the group (facepipe delete, or the HTTP API): never digested into it again"

LINK_NOT_FOLLOWED = "symbolic link, not followed (a digest reads only what is inside its folder)"


def _list_entry(entry: os.DirEntry[str], stack: list[str], listing: Listing) -> None:
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


def size_text(count: int, unit: str) -> str:
    """A byte or pixel count as a user reads it: 1.5 GiB, 120.0 megapixels."""
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
        raise ImageError(
            "a folder, not a file" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe, socket or device)"
        )
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
    return (
        f"refused: the {what} is {size_text(size, 'bytes')}, "
        f"more than the {size_text(budget, 'bytes')} a photo may have "
        "(FACEPIPE_MAX_IMAGE_BYTES)"
    )


def read_listed_image(path: str) -> tuple[bytes, str]:
    """`read_image_bytes` for a photo the listing found: a symbolic link put in its place since
    is not followed either, and a photo gone since is said to be."""
    try:
        return read_image_bytes(path, follow_symlinks=False)
    except ImageError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            raise ImageError("cannot read file: it is gone (deleted or moved since it was listed)") from err
        raise
