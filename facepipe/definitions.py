"""facepipe's Dagster definitions: everything under facepipe/defs/, loaded by Dagster's own loader.

Every code server, run and step imports this module, so nothing it loads imports a model library
(deepface, dlib, OpenCV, onnxruntime): the models load inside the steps.
"""

from functools import cache
from pathlib import Path

from dagster import Definitions, JobDefinition, definitions, load_from_defs_folder


@definitions
def defs() -> Definitions:
    return load_from_defs_folder(path_within_project=Path(__file__).parent)


@cache
def loaded() -> Definitions:
    """The definitions, built once per process (a step's process asks for its job more than once)."""
    return defs()


def get_digest_job() -> JobDefinition:
    """The digest job, for `reconstructable` (execute_job in the run client and tests)."""
    return loaded().resolve_job_def("digest_job")


def get_people_job() -> JobDefinition:
    """The people job, for `reconstructable` (execute_job in the run client and tests)."""
    return loaded().resolve_job_def("people_job")
