"""The `facepipe` command, one file per command group: main.py (digests, the UI, the service,
watches, workers) and people.py (search, people, the store)."""

import os

# Dagster reads it once, when it is imported: 60 s for each call to a code server (which loads the
# definitions and plans a run) is short on a busy machine, and waiting costs a command nothing.
# An operator's value is kept; the processes the command starts (`facepipe ui`'s) inherit it.
os.environ.setdefault("DAGSTER_GRPC_TIMEOUT_SECONDS", "300")

from facepipe.cli.main import main  # noqa: E402  (after the timeout is set)

__all__ = ["main"]
