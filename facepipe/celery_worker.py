"""`facepipe worker`: a Celery worker that runs digest steps (dagster-celery's task), on any machine.

Like the multiprocess executor's forkserver (facepipe/worker_preload.py), the worker's main process
imports the job and builds the dlib models once, before Celery's prefork pool forks its processes:
each process inherits them loaded and keeps them across steps and runs. dlib's models are not
thread-safe, so the pool is prefork (processes), never threads.

Each step runs on the run's own Dagster instance (the launching machine's, from the step's message:
PostgreSQL when the workers are on other machines) and reads and writes step outputs through the
run's IO manager. The face store a step opens is the worker's (its FACEPIPE_HOME, or QDRANT_URL):
so only the workers on the machine holding an embedded store serve its queue (settings.STORE_QUEUE).
`check_workers`, called before a digest is launched, asks the workers which queues they serve and
which store they open, and refuses a digest that would split the faces or wait for ever.
"""

import os
import socket

from facepipe import settings

# How long a launch waits for the workers' answers (each answers within milliseconds when idle;
# a worker busy with a step answers from its main process all the same)
REPLY_SECONDS = 1.5
WHO_ARE_YOU = "facepipe_worker"  # the Celery inspect command a facepipe worker answers


class WorkerConfigError(RuntimeError):
    """The workers cannot run a digest as configured; the message says what to set."""


def store_opened_here() -> str:
    """The store this process's store steps would open: the Qdrant server, or host:folder."""
    return settings.qdrant_url() or f"{socket.gethostname()}:{settings.qdrant_path()}"


def _app():
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    return make_app(
        CeleryExecutor.for_cli(broker=settings.celery_broker(), backend=settings.celery_backend()).app_args()
    )


def check_workers() -> None:
    """With a broker configured, refuse (before any work) a digest that no worker would run, or whose
    store steps a worker would run on a store other than this machine's."""
    broker = settings.celery_broker()
    if not broker:
        return
    replies = _app().control.broadcast(WHO_ARE_YOU, reply=True, timeout=REPLY_SECONDS)
    serving = {name: answer for reply in replies or [] for name, answer in reply.items() if isinstance(answer, dict)}
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


def _answer_who_we_are(queues: list[str]) -> None:
    """Register the inspect command check_workers sends: this worker's queues and store."""
    from celery.worker.control import inspect_command

    @inspect_command(name=WHO_ARE_YOU)
    def facepipe_worker(state):
        return {"queues": queues, "store": store_opened_here()}


def run_worker(queues: list[str], processes: int, name: str | None, loglevel: str = "INFO") -> None:
    """Serve `queues` with `processes` prefork processes until stopped (SIGTERM: a warm shutdown)."""
    broker = settings.celery_broker()
    if not broker:
        raise WorkerConfigError("facepipe worker needs a broker: set FACEPIPE_CELERY_BROKER (e.g. redis://host:6379/0)")
    if processes < 1:
        raise WorkerConfigError(f"--processes must be at least 1, got {processes}")
    from dagster_celery.tasks import create_task

    app = _app()
    create_task(app)  # the task every digest step is sent as
    _answer_who_we_are(queues)
    import facepipe.worker_preload  # noqa: F401  (the job and the models, before the pool forks)

    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={processes}",
            # a process takes one step at a time: a step queued behind a long one could run elsewhere
            "--prefetch-multiplier=1",
            f"--queues={','.join(queues)}",
            f"--hostname={name or f'facepipe-{os.getpid()}'}@{socket.gethostname()}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
