"""Assembles facepipe's Dagster definitions. Every code server, run and step imports this module,
so it imports no model library (deepface, dlib, OpenCV, onnxruntime): the models load inside the
steps. qdrant-client and boto3 do load here; the executor's forkserver imports them once."""

from dagster import Definitions, EnvVar
from dagster_aws.s3 import S3Resource

from facepipe import settings
from facepipe.defs.assets import digest
from facepipe.defs.jobs import digest_job
from facepipe.defs.people import people, people_job
from facepipe.defs.resources import FaceStoreResource
from facepipe.defs.schedules import build_schedules
from facepipe.defs.sensors import build_sensors
from facepipe.defs.watches import load_watches


def _face_store() -> FaceStoreResource:
    # EnvVar keeps the server's address and key out of the config the UI shows
    if settings.qdrant_url():
        api_key = EnvVar("QDRANT_API_KEY") if settings.qdrant_api_key() else None
        return FaceStoreResource(url=EnvVar("QDRANT_URL"), api_key=api_key)
    return FaceStoreResource(path=str(settings.qdrant_path()))


# the watches and webhooks of $FACEPIPE_WATCHES or $FACEPIPE_HOME/watches.yaml (none without the file)
watches = load_watches()

defs = Definitions(
    assets=[digest, people],
    jobs=[digest_job, people_job],
    sensors=build_sensors(watches),
    schedules=build_schedules(watches),
    resources={
        "face_store": _face_store(),
        # credentials from the standard AWS chain (environment, profile, instance role), never from
        # config; the endpoint and region from the AWS configuration or the digest's s3_* fields
        "s3": S3Resource(),
    },
)


def get_digest_job():
    """The digest job, for `reconstructable` (execute_job in the CLI and tests)."""
    return defs.resolve_job_def("digest_job")


def get_people_job():
    """The people job, for `reconstructable` (execute_job in the CLI and tests)."""
    return defs.resolve_job_def("people_job")
