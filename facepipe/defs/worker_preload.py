"""Imported once by the multiprocess executor's forkserver, before it forks the step processes.

Building the default profile's dlib models here means every step process inherits them already
loaded, instead of loading them again per step. onnxruntime sessions (the other profile) must not
cross a fork, so they are built lazily inside each step.
"""

import contextlib

from facepipe.engine.profiles import DEFAULT_PROFILE, load_profile

with contextlib.suppress(Exception):  # a step reports the real error, with its context
    load_profile(DEFAULT_PROFILE)
