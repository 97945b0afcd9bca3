from contextlib import ExitStack, contextmanager

from dagster import ConfigurableResource, RetryRequested
from pydantic import Field

from facepipe import settings
from facepipe.store import FaceStore, StoreBusy

# The store pool keeps digests to one writer, but `facepipe search`, `people` or the notebook may
# hold the embedded store for a moment: a step that finds it busy tries again (up to ~30 s). Any
# other error fails the step at once, with its own message, instead of being retried.
BUSY_RETRIES = 6
BUSY_WAIT_SECONDS = 5


class FaceStoreResource(ConfigurableResource):
    """The face store: embedded at `path` (Qdrant Edge), or a Qdrant server at `url` (with `api_key`)."""

    path: str = Field(default_factory=lambda: str(settings.qdrant_path()),
                      description="Folder of the embedded face store (Qdrant Edge).")
    url: str | None = Field(default=None, description="A Qdrant server; overrides path.")
    api_key: str | None = Field(default=None, description="The Qdrant server's API key.")

    @contextmanager
    def open(self):
        """The open store; in a Dagster step, a store held by another process retries the step."""
        with ExitStack() as stack:
            try:
                store = stack.enter_context(FaceStore.open(path=self.path, url=self.url, api_key=self.api_key))
            except StoreBusy as err:
                raise RetryRequested(max_retries=BUSY_RETRIES, seconds_to_wait=BUSY_WAIT_SECONDS) from err
            yield store
