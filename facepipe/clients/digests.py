"""What the `facepipe digest` and `facepipe digests` commands ask of a Dagster instance, as one
interface with two implementations: LocalDigests (clients/local.py: this machine's instance) and
RemoteDigests (clients/remote.py: a webserver's, over GraphQL). The command line chooses one
(cli/main.py `digests_client`); both speak of digests as platform/history.py summarises them.

Light on purpose: no Dagster import, so that the commands that need neither pay for none.
"""

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime

from facepipe.domain.request import DigestRequest

Summary = dict  # a digest's summary: platform/history.py `summarise`'s fields
OnProgress = Callable[[Summary], None]

# While a digest runs elsewhere, how often its summary is read again
POLL_SECONDS = 1.0


class LaunchError(RuntimeError):
    """A digest could not be queued; the message is one line that says why."""


class DigestsClient(ABC):
    """Digests of one Dagster instance: start, run, list, show, cancel and retry them.

    A digest is named by its run id; a group filter selects the runs of the group's partition,
    however they were launched (the CLI, the Launchpad, a sensor, the HTTP API)."""

    where: str  # the instance, for messages: a folder, or a webserver's URL

    @abstractmethod
    def start_digest(self, request: DigestRequest, workers: int) -> str:
        """Queue a digest on the instance's run queue; its run id, at once. LaunchError saying why not."""

    def run_digest(self, request: DigestRequest, workers: int, on_progress: OnProgress | None = None) -> Summary:
        """Digest and wait for the end; its summary. Here: queued, then read until it ends."""
        summary = self.digest_summary(self.start_digest(request, workers))
        while summary["status"] in ("queued", "processing"):
            if on_progress:
                on_progress(summary)
            time.sleep(POLL_SECONDS)
            summary = self.digest_summary(summary["run_id"])
        if on_progress:
            on_progress(summary)
        return summary

    def queue_warning(self) -> str | None:
        """Why a queued digest would wait for ever (no daemon dequeues the runs), if that is known."""
        return None

    @abstractmethod
    def list_digests(
        self,
        group_id: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
    ) -> list[Summary]:
        """Digests, newest first: of the group (its partition), with the status, created in [since, until)."""

    @abstractmethod
    def digest_summary(self, run_id: str) -> Summary:
        """One digest's summary; history.DigestNotFound if the instance has none with that id."""

    @abstractmethod
    def cancel_digest(self, run_id: str) -> Summary:
        """Cancel a queued or running digest; ValueError saying why it cannot be."""

    @abstractmethod
    def retry_digest(self, run_id: str, on_progress: OnProgress | None = None) -> Summary:
        """Re-execute a failed or canceled digest from its failure and wait; ValueError saying why it cannot be."""
