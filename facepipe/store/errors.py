"""The store's errors, each written for a user, and how the errors of Qdrant Edge and of the disk
become them."""

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StoreError(RuntimeError):
    """The face store cannot answer; the message names it and says what to do (one line for a user)."""


class StoreBusy(StoreError):
    """The embedded store is held by another process: one process opens it at a time."""


class StoreUnavailable(StoreError):
    """The Qdrant server cannot be reached (down, refusing, a wrong URL): the message names the URL."""


class StoreDamaged(StoreError):
    """A file of the embedded store cannot be read (truncated, emptied, overwritten), or the store
    has lost faces its ledger records: never answered as an empty or smaller group."""


class StoreNotWritable(StoreError):
    """The embedded store's folder cannot be written: its disk is full, its file system read-only,
    or the folder is not this user's to write. Qdrant Edge writes even to open a store (it cannot
    open one read-only), so reading fails too. Nothing stored is lost: fix the disk, and it opens."""


# Qdrant Edge memory-maps its files and grows them as it writes: a write into a mapped page the
# disk has no room for kills the process with SIGBUS (no error to catch), and a store opened on a
# disk with no room at all fails with "No space left on device". So the embedded store is opened
# only with this much room: measured on tmpfs (qdrant-edge-py 0.9.0), a new store took 15 MB, and
# one open and write of a 500-face store 34 MB at most (a new segment); 100 faces take ~0.15 MB.
MIN_FREE_BYTES = 64 * 2**20

# What to do about a damaged store, in every StoreDamaged message
RECOVER = (
    "restore the folder from a backup; or move it aside (keep it for a bug report) and digest each "
    "group again with --redigest, then `facepipe people cluster --full` (names are lost)"
)

# the errors of a disk, not of the store's files: the OS's errno, or the same in Qdrant Edge's
# messages ("... No space left on device (os error 28)")
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def busy(where: str | os.PathLike[str]) -> StoreBusy:
    return StoreBusy(
        f"the face store at {where} is in use by another process (a digest or clustering run?); "
        "try again when it has finished"
    )


def damaged(root: Path, name: str, err: BaseException, path: Path | None = None) -> StoreDamaged:
    reason = " ".join(str(err).split())
    reason = reason if len(reason) <= 300 else reason[:300] + "..."
    return StoreDamaged(
        f"the face store at {root} is damaged: its collection {name} ({path or root}) cannot be read "
        f"({reason}); {RECOVER}"
    )


def not_writable(root: Path, code: int) -> StoreNotWritable:
    """The one message for each disk fault: the folder, what is wrong, what to do."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(root)
        room = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        return StoreNotWritable(
            f"the face store at {root} cannot be written: no space left on its disk{room}, and facepipe needs "
            f"{MIN_FREE_BYTES // 2**20} MiB there to open the store. Free space on it (`df -h {root}`) or move "
            "FACEPIPE_HOME to a larger disk, then digest again (`facepipe digests retry RUN_ID` finishes a "
            "failed digest); what the store holds is kept"
        )
    if code == errno.EROFS:
        return StoreNotWritable(
            f"the face store at {root} is on a read-only file system: remount it read-write, or set "
            "FACEPIPE_HOME to a writable folder (the embedded store cannot be opened read-only, so search "
            "and people need it writable too); what the store holds is kept"
        )
    return StoreNotWritable(
        f"the face store at {root} cannot be written by this user ({os.strerror(code)}): give it the "
        f"folder (`chown -R $(id -un) {root}`), or run facepipe as the user who owns it"
    )


def free_bytes(root: str | os.PathLike[str]) -> int | None:
    """The room left for an unprivileged user on the file system of `root` (or its nearest existing parent)."""
    path = Path(root)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def check_room(root: Path) -> None:
    """StoreNotWritable unless the disk of `root` has the room the embedded store needs to open."""
    free = free_bytes(root)
    if free is not None and free < MIN_FREE_BYTES:
        raise not_writable(root, errno.ENOSPC)


def _disk_errno(err: BaseException) -> int | None:
    """The errno of a disk fault behind `err` (an OSError, or a Qdrant Edge error that quotes one)."""
    if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found and int(found.group(1)) in _DISK_ERRNOS else None


def _is_storage_error(err: BaseException) -> bool:
    """Qdrant Edge's errors of its files: its storage errors (plain Exception, 'Service runtime
    error: ...') and the panics of its Rust code on a short file (pyo3's PanicException, a
    BaseException)."""
    return type(err).__name__ == "PanicException" or str(err).startswith("Service runtime error")


def edge_error(root: Path, name: str, err: BaseException, path: Path | None = None) -> StoreError | None:
    """What an error of the embedded store (of its collection `name`, in the shard at `path`) means for a user: another
    process holds it (StoreBusy), a full or read-only disk (StoreNotWritable; not a damaged store),
    or a file of the store it cannot read (StoreDamaged); None for any other error."""
    if "WouldBlock" in str(err):  # "failed to open WAL ...: Kind(WouldBlock)": another process
        return busy(root)
    if code := _disk_errno(err):
        return not_writable(root, code)
    if _is_storage_error(err):
        return damaged(root, name, err, path)
    return None


@contextmanager
def store_errors(root: Path, name: str = "", path: Path | None = None) -> Iterator[None]:
    """The errors of the embedded store at `root` (of its collection `name`, in the shard at `path`)
    as what they mean to a user (see edge_error); any other error as it is."""
    try:
        yield
    except BaseException as err:  # qdrant_edge raises plain Exception, or panics
        if known := edge_error(root, name, err, path):
            raise known from None
        raise
