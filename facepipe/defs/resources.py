"""The resources every facepipe job uses: the face store, S3, and where step outputs go, chosen from
the settings here."""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from dagster import ConfigurableResource, Definitions, EnvVar, RetryRequested, definitions
from dagster_aws.s3 import S3PickleIOManager, S3Resource
from pydantic import Field

from facepipe import settings
from facepipe.domain.request import DigestOptions, S3Prefix
from facepipe.engine.sources import S3Client
from facepipe.store import FaceStore, StoreBusy, StoreUnavailable

# The store pool keeps digests to one writer, but the HTTP service, `facepipe search`, `people` or
# the notebook may hold the embedded store: a step waits for it by time (FACEPIPE_STORE_STEP_WAIT_SECONDS;
# the service hands it over after the operation in progress, see store.StoreLease). Held past that
# (a notebook that keeps it open), or a Qdrant server that cannot be reached (restarting), the step
# is retried a few times. Any other error fails the step at once, with its own message.
BUSY_RETRIES = 6
BUSY_WAIT_SECONDS = 5


class FaceStoreResource(ConfigurableResource):
    """The face store: embedded at `path` (Qdrant Edge), or a Qdrant server at `url` (with `api_key`)."""

    path: str = Field(
        default_factory=lambda: str(settings.qdrant_path()),
        description="Folder of the embedded face store (Qdrant Edge).",
    )
    url: str | None = Field(default=None, description="A Qdrant server; overrides path.")
    api_key: str | None = Field(default=None, description="The Qdrant server's API key.")

    def describe(self) -> str:
        """Where the store is, for the asset's metadata (never the API key)."""
        return self.url or f"embedded at {self.path}"

    @contextmanager
    def open(self) -> Iterator[FaceStore]:
        """The open store; in a Dagster step, a store held by another process retries the step."""
        with ExitStack() as stack:
            try:
                store = stack.enter_context(
                    FaceStore.open(
                        path=self.path, url=self.url, api_key=self.api_key, wait=settings.store_step_wait_seconds()
                    )
                )
            except (StoreBusy, StoreUnavailable) as err:  # held, or a server restarting: both pass
                raise RetryRequested(max_retries=BUSY_RETRIES, seconds_to_wait=BUSY_WAIT_SECONDS) from err
            yield store


def s3_client(s3: S3Resource, request: DigestOptions) -> S3Client | None:
    """A boto3 client from dagster-aws's S3Resource, with the digest's endpoint and region; None for
    a local folder."""
    if not isinstance(request.source, S3Prefix):
        return None
    overrides = {"endpoint_url": request.source.endpoint_url, "region_name": request.source.region}
    return s3.model_copy(update={k: v for k, v in overrides.items() if v}).get_client()


def face_store() -> FaceStoreResource:
    # EnvVar keeps the server's address and key out of the config the UI shows
    if settings.qdrant_url():
        api_key = EnvVar("QDRANT_API_KEY") if settings.qdrant_api_key() else None
        return FaceStoreResource(url=EnvVar("QDRANT_URL"), api_key=api_key)
    return FaceStoreResource(path=str(settings.qdrant_path()))


def step_outputs_in_s3() -> dict[str, S3PickleIOManager]:
    """With FACEPIPE_STEP_OUTPUTS, the runs' IO manager: pickles under s3://bucket/prefix, which workers
    on every machine read (dagster-aws's S3PickleIOManager); otherwise none here, and Dagster's
    default keeps them in the instance's storage folder, which only this machine reads."""
    url = settings.step_outputs()
    if not url:
        return {}
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    # the endpoint and credentials of the AWS configuration (AWS_ENDPOINT_URL...), as for S3 photos;
    # no prefix: the library's own default
    return {
        "io_manager": S3PickleIOManager(
            s3_resource=S3Resource(), s3_bucket=bucket, s3_prefix=prefix.strip("/") or "dagster"
        )
    }


@definitions
def resources() -> Definitions:
    return Definitions(
        resources={
            "face_store": face_store(),
            # credentials from the standard AWS chain (environment, profile, instance role), never from
            # config; the endpoint and region from the AWS configuration or the digest's s3_* fields
            "s3": S3Resource(),
            **step_outputs_in_s3(),
        }
    )
