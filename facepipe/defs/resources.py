from contextlib import contextmanager

from dagster import ConfigurableResource
from pydantic import Field

from facepipe import settings
from facepipe.store import FaceStore


class FaceStoreResource(ConfigurableResource):
    """The face store: embedded at `path` (Qdrant Edge), or a Qdrant server at `url` (with `api_key`)."""

    path: str = Field(default_factory=lambda: str(settings.qdrant_path()),
                      description="Folder of the embedded face store (Qdrant Edge).")
    url: str | None = Field(default=None, description="A Qdrant server; overrides path.")
    api_key: str | None = Field(default=None, description="The Qdrant server's API key.")

    @contextmanager
    def open(self):
        with FaceStore.open(path=self.path, url=self.url, api_key=self.api_key) as store:
            yield store
