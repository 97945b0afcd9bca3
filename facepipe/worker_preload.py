"""Imported once by the multiprocess executor's forkserver, before it forks the step processes.

Building the default profile's dlib models here means every step process inherits them already
loaded, instead of loading them again per step. onnxruntime sessions (the other profile) must not
cross a fork, so they are built lazily inside each step.

Each step process also reconstructs the job (loading facepipe's definitions) and opens the Dagster
instance (SQLAlchemy, alembic: ~0.2 s). Doing those here once takes that off every step's
start-up. (The store's clients load when a store opens: qdrant_edge in ~3 ms.)

It lives outside facepipe/defs/ on purpose: Dagster's loader imports every module there, and every
code server would then load the models.
"""

import contextlib

import dagster._core.storage.sqlite_storage  # noqa: F401  (the instance's storage, opened by every step)

from facepipe.definitions import get_digest_job
from facepipe.engine.profiles import DEFAULT_PROFILE, load_profile

get_digest_job()  # the job every step reconstructs, built once (facepipe.definitions.loaded)
with contextlib.suppress(Exception):  # a step reports the real error, with its context
    load_profile(DEFAULT_PROFILE)
