"""Whether the Celery workers can run a digest as configured: asked of the workers, not assumed.

Every digest on Celery asks before any work: the `facepipe` command, the run client and the HTTP
API before they create a run (facepipe/clients/local.py), and the run itself before it sends its first step,
however it was launched (the UI, a sensor, a schedule: facepipe/platform/celery_executor.py). Each `facepipe
worker` answers the inspect command WHO_ARE_YOU (registered by facepipe/clients/celery_worker.py) from
where it runs: the queues it serves, the store its store steps would open, where it keeps step
outputs, whether it reads a token file just written in the local step-output folder, and whether
it sees the digest's local photo folder (it lists it, and a few of the entries this machine sees
there are there). A digest that no worker would run, or that would
split its data between machines, is refused with one line naming the worker and what to set.
"""

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from celery import Celery

from facepipe import settings

# How long a check waits for the workers' answers (each answers within milliseconds when idle;
# a worker busy with a step answers from its main process all the same)
REPLY_SECONDS = 1.5
WHO_ARE_YOU = "facepipe_worker"  # the Celery inspect command a facepipe worker answers


class WorkerConfigError(RuntimeError):
    """The workers cannot run a digest as configured; the message says what to set."""


def runs_read_here() -> str | None:
    """The PostgreSQL database this process reads runs from (FACEPIPE_POSTGRES_URL, without its user
    and password), or None: SQLite, in the run's own instance folder. A step on a worker loads its run
    from there (the run's instance names the database by that variable, read where the step runs)."""
    from urllib.parse import urlsplit

    url = settings.postgres_url()
    if url is None:
        return None
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def store_opened_here() -> str:
    """The store this process's store steps would open: the Qdrant server, or host:folder."""
    return settings.qdrant_url() or f"{socket.gethostname()}:{settings.qdrant_path()}"


def celery_app() -> "Celery":
    """The Celery app as dagster-celery's executor makes it, on facepipe's broker and backend."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    return make_app(
        CeleryExecutor.for_cli(broker=settings.celery_broker(), backend=settings.celery_backend()).app_args()
    )


class WorkerView(TypedDict):
    """A worker's answer to WHO_ARE_YOU: what it sees from where it runs. An older worker may lack
    a key: the checks read each with a default that passes."""

    queues: list[str]
    store: str  # the store its store steps would open (store_opened_here)
    runs: str | None  # runs_read_here
    step_outputs: str | None  # FACEPIPE_STEP_OUTPUTS
    reads_token: bool | None  # whether it read the token file (None: none was written)
    photos_unseen: str | None  # why it does not see the digest's local photos (None: it does, or S3)


def what_this_worker_sees(
    queues: list[str],
    token_file: str | None = None,
    token: str | None = None,
    photos: str | None = None,
    photo_names: list[str] | None = None,
) -> WorkerView:
    """A worker's answer to WHO_ARE_YOU, from where it runs (its main process)."""
    return {
        "queues": queues,
        "store": store_opened_here(),
        "runs": runs_read_here(),
        "step_outputs": settings.step_outputs(),
        "reads_token": _reads(token_file, token) if token_file else None,
        "photos_unseen": _why_not_seen(photos, photo_names or []) if photos else None,
    }


def _reads(path: str, token: str | None) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


# How many of the photo folder's entries a worker must see too: an empty folder at the same path (a
# mount point with nothing mounted) lists fine, and is not the photos
ENTRIES_COMPARED = 5


def _some_entries(folder: str | None) -> list[str]:
    """A few names in `folder` as this machine sees it (none if it cannot list it: the digest says why)."""
    if folder is None:
        return []
    try:
        with os.scandir(folder) as entries:
            return [entry.name for _, entry in zip(range(ENTRIES_COMPARED), entries)]
    except OSError:
        return []


def _why_not_seen(folder: str, names: list[str]) -> str | None:
    """None if this process lists `folder` and sees `names` in it, else why not."""
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as err:
        return err.strerror or str(err)
    missing = [name for name in names if not os.path.lexists(os.path.join(folder, name))]
    return f"no {missing[0]} in it" if missing else None


@contextmanager
def _token_in(folder: Path | None) -> Iterator[tuple[str | None, str | None]]:
    """A token file in the local step-output folder for the workers to read, removed after."""
    if folder is None:
        yield None, None
        return
    token = uuid.uuid4().hex
    path = folder / f".facepipe-worker-check-{token}"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    try:
        yield str(path), token
    finally:
        path.unlink(missing_ok=True)


def check_workers(storage_directory: str, photos: str | None) -> None:
    """With a broker configured, refuse (before any work) a digest that no worker would run, whose
    store steps a worker would run on another store than this machine's, or whose step outputs or
    local photos (`photos`; None for S3) a worker cannot read.

    `storage_directory` is the run's instance's (Dagster's default IO manager keeps step outputs
    there unless FACEPIPE_STEP_OUTPUTS sends them to S3)."""
    if not settings.celery_broker():
        return
    outputs_folder = None if settings.step_outputs() else Path(storage_directory)
    with _token_in(outputs_folder) as (token_file, token):
        replies = celery_app().control.broadcast(
            WHO_ARE_YOU,
            arguments={
                "token_file": token_file,
                "token": token,
                "photos": photos,
                "photo_names": _some_entries(photos),
            },
            reply=True,
            timeout=REPLY_SECONDS,
        )
    # an answer without queues is a worker's error (Celery replies {"error": ...}) or not a facepipe worker
    serving: dict[str, WorkerView] = {
        name: answer for reply in replies or [] for name, answer in reply.items() if "queues" in answer
    }
    start = "start `facepipe worker` with the same FACEPIPE_CELERY_BROKER"
    if not any(settings.DEFAULT_QUEUE in w["queues"] for w in serving.values()):
        raise WorkerConfigError(
            f"no facepipe worker serves the queue {settings.DEFAULT_QUEUE!r} at the broker: {start}"
        )
    queue, here = settings.store_queue(), store_opened_here()
    store_workers = {name: w["store"] for name, w in serving.items() if queue in w["queues"]}
    if not store_workers:
        raise WorkerConfigError(
            f"no facepipe worker serves the store's queue {queue!r}: on this machine, which holds the face store "
            f"({here}), {start} and `-q {settings.DEFAULT_QUEUE} -q {queue}`, or set QDRANT_URL on every machine"
        )
    elsewhere = {name: store for name, store in store_workers.items() if store != here}
    if elsewhere:
        listed = ", ".join(f"{name} opens {store}" for name, store in sorted(elsewhere.items()))
        raise WorkerConfigError(
            f"the faces would go to another store than this machine's ({here}): {listed}. Serve the queue "
            f"{queue!r} only from workers on this machine with its FACEPIPE_HOME, or set the same QDRANT_URL everywhere"
        )
    digest_queues = {settings.DEFAULT_QUEUE, queue}
    for name, worker in sorted(serving.items()):
        if not digest_queues & set(worker["queues"]):
            continue
        _check_step_outputs(name, worker, outputs_folder)
        _check_runs(name, worker)
        if worker.get("photos_unseen"):
            raise WorkerConfigError(
                f"worker {name} does not see the photos at {photos} ({worker['photos_unseen']}): share that "
                "folder at the same path on every worker, or digest the photos from S3"
            )


def _check_runs(name: str, worker: WorkerView) -> None:
    """A worker reading runs from another database than this machine writes them to could not load
    the run of any step it is sent ("Could not load run"): refused before the run exists."""
    ours = runs_read_here()
    if ours is not None and worker.get("runs", ours) != ours:
        theirs = f"the PostgreSQL database {worker['runs']}" if worker["runs"] else "no PostgreSQL database"
        raise WorkerConfigError(
            f"worker {name} reads runs from {theirs}, this machine writes them to {ours}: "
            "set the same FACEPIPE_POSTGRES_URL on every machine"
        )


def _check_step_outputs(name: str, worker: WorkerView, outputs_folder: Path | None) -> None:
    ours, local = settings.step_outputs(), "its instance's storage folder"
    if worker.get("step_outputs", ours) != ours:
        raise WorkerConfigError(
            f"worker {name} keeps step outputs in {worker['step_outputs'] or local}, this machine in "
            f"{ours or local}: set the same FACEPIPE_STEP_OUTPUTS on every machine"
        )
    if outputs_folder is not None and worker.get("reads_token") is False:
        raise WorkerConfigError(
            f"worker {name} cannot read the step outputs at {outputs_folder}: "
            "set FACEPIPE_STEP_OUTPUTS=s3://bucket/prefix on every machine, or share that folder at the same path"
        )
