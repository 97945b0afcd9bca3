"""The digest's run config: the Launchpad form is the plain DigestRequest (facepipe/request.py),
its fields, defaults, descriptions and validation, as a Dagster Config."""

from dagster import Config

from facepipe.request import DigestRequest


class DigestConfig(Config, DigestRequest):
    """Digest the photos of one source into one group."""
