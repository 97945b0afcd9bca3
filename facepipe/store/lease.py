"""StoreLease: the face store kept open by a long-lived process between its operations."""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from facepipe import settings
from facepipe.store.errors import StoreError, busy
from facepipe.store.face_store import FaceStore, open_store_from_settings
from facepipe.store.lock import LOCK_POLL_SECONDS, others_wait


class StoreLease:
    """The face store kept open by a long-lived process (the HTTP service) between its operations.

    Opening a group's shards of the embedded store costs more as the group grows (their files are
    mapped and read again: benchmarks/service_load.py), so a service that opened it per request would spend its time
    opening. A lease keeps it open, one thread using it at a time (`use`), and closes it when idle
    for `idle_seconds`, and as soon as another process waits for it (a digest step, `facepipe
    search`): that process gets it after at most the one operation in progress. The next `use`
    opens it again, waiting for it as any process does; so the store's open handle always sees
    what the other processes wrote. With a Qdrant server, the client is kept open the same way.
    """

    def __init__(
        self,
        opener: Callable[[float], AbstractContextManager[FaceStore]],
        root: Path | None,
        idle_seconds: float = 2.0,
    ):
        self._opener = opener  # opener(wait) -> the context manager of an open FaceStore
        self._root = root  # the embedded store's folder; None for a server (no other process waits)
        self._idle_seconds = idle_seconds
        self._turn = threading.Lock()
        self._open: tuple[AbstractContextManager[FaceStore], FaceStore] | None = None
        self._last_used = 0.0
        self._watcher: threading.Thread | None = None

    @contextmanager
    def use(self, wait: float) -> Iterator[FaceStore]:
        """The open store, for one operation of this thread; StoreBusy when it cannot be had within `wait` s."""
        deadline = time.monotonic() + wait
        if not self._turn.acquire(timeout=wait):
            raise busy(self._root or "the server")
        try:
            if self._open is None:
                manager = self._opener(max(0.0, deadline - time.monotonic()))
                self._open = (manager, manager.__enter__())
                self._watch()
            try:
                yield self._open[1]
            except StoreError:
                self._close()  # damaged, not writable, a server gone: opened afresh next time
                raise
            finally:
                self._last_used = time.monotonic()
            if self._root is not None and others_wait(self._root):
                self._close()
        finally:
            self._turn.release()

    def close(self) -> None:
        with self._turn:
            self._close()

    def _close(self) -> None:
        if self._open is not None:
            manager, self._open = self._open[0], None
            manager.__exit__(None, None, None)

    def _watch(self) -> None:
        """A thread that closes the store while no request uses it, when it has been idle or is waited for."""
        if self._watcher is not None and self._watcher.is_alive():
            return

        def watch() -> None:
            while True:
                time.sleep(LOCK_POLL_SECONDS * 5)
                if self._open is None or not self._turn.acquire(blocking=False):
                    continue
                try:
                    idle = time.monotonic() - self._last_used > self._idle_seconds
                    if self._open is not None and (idle or (self._root is not None and others_wait(self._root))):
                        self._close()
                finally:
                    self._turn.release()

        self._watcher = threading.Thread(target=watch, name="store-lease", daemon=True)
        self._watcher.start()


def lease_from_settings() -> StoreLease:
    """A StoreLease of the store this deployment uses."""
    return StoreLease(
        lambda wait: open_store_from_settings(wait), None if settings.qdrant_url() else settings.qdrant_path()
    )
