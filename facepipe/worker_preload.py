"""Imported once by the multiprocess executor's forkserver, before it forks the step processes.

Building the default profile's dlib models here means every step process inherits them already
loaded, instead of loading them again per step. onnxruntime sessions (the other profile) must not
cross a fork, so they are built lazily inside each step.

Each step process also reconstructs the job (loading facepipe's definitions) and opens the Dagster
instance (SQLAlchemy, alembic: ~0.2 s). Doing those here once takes that off every step's
start-up. (The store's clients load when a store opens: qdrant_edge in ~3 ms.)

It lives outside facepipe/defs/ on purpose: Dagster's loader imports every module there, and every
code server would then load the models.

The forkserver holds those models (~240 MB). Python ends it when its last client closes the pipe
to it, which a killed digest's orphaned step processes keep open as long as they run: so it ends
with the process that started it (Linux's parent-death signal), as a killed digest's should.
"""

import contextlib
import os
import signal
import sys
from types import FrameType

import dagster._core.storage.sqlite_storage  # noqa: F401  (the instance's storage, opened by every step)

from facepipe.definitions import get_digest_job
from facepipe.engine.profiles import DEFAULT_PROFILE, load_profile

get_digest_job()  # the job every step reconstructs, built once (facepipe.definitions.loaded)
with contextlib.suppress(Exception):  # a step reports the real error, with its context
    load_profile(DEFAULT_PROFILE)


def _in_a_forkserver() -> bool:
    """Whether multiprocessing's forkserver is importing this (`facepipe worker` imports it too)."""
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_code.co_filename.endswith(
            os.path.join("multiprocessing", "forkserver.py")
        ):
            return True
        frame = frame.f_back
    return False


if sys.platform == "linux" and _in_a_forkserver():
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # not inherited by forks
