"""What the routes are given with FastAPI's `Depends`: the API key check, the face store (through the
app's StoreLease), the Dagster instance runs are queued on, and the search workers. One `Services`
per app keeps them between requests; a test overrides `face_store` or `dagster_instance` with
`app.dependency_overrides`, or makes its own app on a temporary FACEPIPE_HOME."""

import asyncio
import multiprocessing
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Annotated, Any

from dagster import DagsterInstance
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from facepipe import settings
from facepipe.clients.local import CodeServer, daemon_is_running, instance_for_digests
from facepipe.domain.search import selfie_faces_in
from facepipe.engine.profiles import DEFAULT_PROFILE, load_profile, share_cores
from facepipe.store import FaceStore, StoreBusy, StoreLease, StoreUnavailable, lease_from_settings

RETRY_AFTER_SECONDS = 10

MODEL_LOCK = threading.Lock()  # dlib's detector, shape predictor and ResNet are not thread-safe

key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Required when the server has FACEPIPE_API_KEY set."
)


def key_is_right(given: str | None) -> bool:
    expected = settings.api_key()
    return not expected or bool(given and secrets.compare_digest(given.encode(), expected.encode()))


def require_key(given: Annotated[str | None, Depends(key_header)]) -> None:
    if not key_is_right(given):
        raise HTTPException(
            401, "missing or wrong API key: send it in the X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"}
        )


KEY = [Depends(require_key)]


def busy(message: str) -> HTTPException:
    return HTTPException(
        503, f"{message}; retry in {RETRY_AFTER_SECONDS} s", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


def start_search_worker(workers: int) -> None:
    """A search worker's start: the default profile's models, and its share of the cores."""
    load_profile(DEFAULT_PROFILE)
    share_cores(workers)


class Services:
    """What one app keeps between requests, each made on first use: the store's lease, the Dagster
    instance (making one reads its folder and its yaml), the code server runs are planned in, the
    search workers and their queue."""

    def __init__(self) -> None:
        self._made = threading.Lock()
        self._lease: StoreLease | None = None
        self._instance: DagsterInstance | None = None
        self._code_server: CodeServer | None = None
        self.search_pool: ProcessPoolExecutor | None = None
        self.search_slots = threading.BoundedSemaphore(settings.search_queue())
        self.health: tuple[float, dict[str, Any]] | None = None  # when it was checked, and what was found
        self.health_made = threading.Lock()  # one check at a time, however many ask

    def lease(self) -> StoreLease:
        with self._made:
            if self._lease is None:
                self._lease = lease_from_settings()
            return self._lease

    def instance(self) -> DagsterInstance:
        with self._made:
            if self._instance is None:
                self._instance = instance_for_digests()
            return self._instance

    def code_server(self, instance: DagsterInstance) -> CodeServer:
        """Where the runs queued on `instance` are planned: loaded once (~3 s), then ~10 ms a run."""
        with self._made:
            if self._code_server is None:
                self._code_server = CodeServer(instance)
            return self._code_server

    def search_workers(self) -> ProcessPoolExecutor:
        with self._made:
            if self.search_pool is None:
                # spawned, not forked from this threaded process; each worker loads the default
                # profile's models once, before its first selfie
                workers = settings.search_workers()
                self.search_pool = ProcessPoolExecutor(
                    workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=start_search_worker,
                    initargs=(workers,),
                )
            return self.search_pool

    def forget_search_workers(self, pool: ProcessPoolExecutor) -> None:
        """A worker of `pool` died (out of memory?): a new pool for the next search."""
        with self._made:
            if self.search_pool is pool:
                self.search_pool = None

    def close(self) -> None:
        """Hand the store back, stop the code server and the search workers (the app's shutdown)."""
        with self._made:
            if self._lease is not None:
                self._lease.close()
            if self._code_server is not None:
                self._code_server.close()
            if self.search_pool is not None:
                self.search_pool.shutdown()
                self.search_pool = None


def services(request: Request) -> Services:
    return request.app.state.services


class StoreAccess:
    """The face store, one store operation at a time (`with store() as s:`): a request never holds it
    while a model runs, so that a digest step or `facepipe search` waiting for it gets it at once."""

    def __init__(self, lease: StoreLease) -> None:
        self.lease = lease

    @contextmanager
    def __call__(self) -> Iterator[FaceStore]:
        """503 with Retry-After when another process holds it past FACEPIPE_STORE_WAIT_SECONDS, or a
        Qdrant server cannot be reached."""
        try:
            with self.lease.use(settings.store_wait_seconds()) as store:
                yield store
        except (StoreBusy, StoreUnavailable) as err:
            raise busy(str(err)) from None


def face_store(app_services: Annotated[Services, Depends(services)]) -> StoreAccess:
    return StoreAccess(app_services.lease())


def dagster_instance(app_services: Annotated[Services, Depends(services)]) -> DagsterInstance:
    """The instance digests and clustering runs are queued on (the daemon of `facepipe ui`, or of the
    deployment, executes them; this process never runs one)."""
    return app_services.instance()


def code_server(
    app_services: Annotated[Services, Depends(services)],
    instance: Annotated[DagsterInstance, Depends(dagster_instance)],
) -> CodeServer:
    return app_services.code_server(instance)


Store = Annotated[StoreAccess, Depends(face_store)]
Instance = Annotated[DagsterInstance, Depends(dagster_instance)]
CodeServerDep = Annotated[CodeServer, Depends(code_server)]
AppServices = Annotated[Services, Depends(services)]


def require_daemon(instance: DagsterInstance) -> None:
    if not daemon_is_running(instance):
        raise HTTPException(
            503,
            "no Dagster daemon is running on this instance, so a queued run would wait: "
            "start one with `facepipe ui` (webserver and daemon) or `dagster-daemon run`",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


@contextmanager
def search_slot(app_services: Services) -> Iterator[None]:
    """One of FACEPIPE_SEARCH_QUEUE places for a search; 503 with Retry-After when none is free."""
    if not app_services.search_slots.acquire(blocking=False):
        raise busy(f"{settings.search_queue()} searches are being answered (FACEPIPE_SEARCH_QUEUE)")
    try:
        yield
    finally:
        app_services.search_slots.release()


async def embedded(app_services: Services, data: bytes, name: str, profile: str, all_faces: bool) -> list:
    """The selfie's faces, found and embedded by a worker process of the search pool (dlib's models
    are not thread-safe, and a search must not hold the others up)."""
    pool = app_services.search_workers()
    try:
        return await asyncio.wrap_future(pool.submit(selfie_faces_in, data, name, profile, all_faces))
    except BrokenProcessPool:
        app_services.forget_search_workers(pool)
        raise busy("a search worker process died") from None
