"""`facepipe worker`: a Celery worker that runs digest steps (dagster-celery's task), on any machine.

Like the multiprocess executor's forkserver (facepipe/worker_preload.py), the worker's main process
imports the job and builds the dlib models once, before Celery's prefork pool forks its processes:
each process inherits them loaded and keeps them across steps and runs. dlib's models are not
thread-safe, so the pool is prefork (processes), never threads.

Each step runs on the run's own Dagster instance (the launching machine's, from the step's message:
PostgreSQL when the workers are on other machines) and reads and writes step outputs through the
run's IO manager (the worker's FACEPIPE_STEP_OUTPUTS). The face store a step opens is the worker's
(its FACEPIPE_HOME, or QDRANT_URL): so only the workers on the machine holding an embedded store
serve its queue (settings.STORE_QUEUE). Every digest asks the workers first (facepipe/platform/worker_check.py,
the inspect command registered here) and is refused if it would split its data or wait for ever.
"""

import os
import socket

from facepipe import settings
from facepipe.platform.worker_check import (
    WHO_ARE_YOU,
    WorkerConfigError,
    WorkerView,
    celery_app,
    what_this_worker_sees,
)


def _answer_who_we_are(queues: list[str]) -> None:
    """Register the inspect command the checks send (facepipe/platform/worker_check.py): what this worker sees."""
    from celery.worker.control import inspect_command

    @inspect_command(name=WHO_ARE_YOU)
    def facepipe_worker(
        state: object,  # Celery's worker state: the answer does not depend on it
        token_file: str | None = None,
        token: str | None = None,
        photos: str | None = None,
        photo_names: list[str] | None = None,
    ) -> WorkerView:
        return what_this_worker_sees(queues, token_file, token, photos, photo_names)


def run_worker(queues: list[str], processes: int, name: str | None, loglevel: str = "INFO") -> None:
    """Serve `queues` with `processes` prefork processes until stopped (SIGTERM: a warm shutdown)."""
    broker = settings.celery_broker()
    if not broker:
        raise WorkerConfigError("facepipe worker needs a broker: set FACEPIPE_CELERY_BROKER (e.g. redis://host:6379/0)")
    if processes < 1:
        raise WorkerConfigError(f"--processes must be at least 1, got {processes}")
    from dagster_celery.tasks import create_task

    app = celery_app()
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
