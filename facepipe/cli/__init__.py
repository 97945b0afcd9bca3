"""The `facepipe` command, one file per command group: main.py (digests, the UI, the service,
watches, workers) and people.py (search, people, the store)."""

from facepipe.cli.main import main

__all__ = ["main"]
