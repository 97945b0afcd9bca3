"""One process opens an embedded store at a time: a lock file, `<store>/facepipe.lock`, held while
the store is open, and `<store>/facepipe.waiting`, held shared by the processes waiting for it, so
that a process keeping the store open between operations (StoreLease) can see them and let go."""

import fcntl
import time
from pathlib import Path
from typing import TextIO

from facepipe.store.errors import busy

# How often a process waiting for the store tries its lock: a store operation takes milliseconds.
LOCK_POLL_SECONDS = 0.01


def lock_store(root: Path, wait: float = 0.0) -> TextIO:
    """Hold `<root>/facepipe.lock` until the file returned is closed. While another process holds it,
    try again for up to `wait` seconds, holding a shared lock on `<root>/facepipe.waiting` meanwhile:
    a process that keeps the store open between operations (StoreLease) sees it and lets go.
    StoreBusy past `wait`."""
    handle = open(root / "facepipe.lock", "a+")
    deadline, waiting = time.monotonic() + wait, None
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy(root) from None
            if waiting is None:
                waiting = open(root / "facepipe.waiting", "a+")
                fcntl.flock(waiting, fcntl.LOCK_SH)
            time.sleep(LOCK_POLL_SECONDS)
    except BaseException:
        handle.close()
        raise
    finally:
        if waiting is not None:
            waiting.close()


def others_wait(root: Path) -> bool:
    """Whether a process waits for the store at `root` (holds `facepipe.waiting` shared, see lock_store)."""
    with open(root / "facepipe.waiting", "a+") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # closing the probe releases it
