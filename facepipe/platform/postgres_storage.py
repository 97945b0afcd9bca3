"""dagster-postgres' run, event-log and schedule storage, from the plain `postgresql://` URL.

facepipe's dagster.yaml names these three classes when FACEPIPE_POSTGRES_URL is set (see
facepipe/platform/instance.py). They are dagster-postgres' own storages; the one difference is the URL:
SQLAlchemy 2.1 reads `postgresql://` as psycopg 3, which dagster-postgres does not bring (it brings
psycopg2), so `postgresql://` and `postgres://` are given to it as `postgresql+psycopg2://`. The URL
itself stays in the environment: dagster.yaml, and the UI's instance page, show
`{env: FACEPIPE_POSTGRES_URL}`, never the password.

Only Dagster imports this module, and only when dagster.yaml names it (it needs the `postgres`
extra: `pip install "facepipe[postgres]"`).
"""

from collections.abc import Mapping
from typing import Any, cast

from dagster._core.storage.config import PostgresStorageConfig
from dagster._serdes import ConfigurableClassData
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage


def psycopg2_url(url: str) -> str:
    """The same database URL with the driver dagster-postgres brings spelled out."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
        # the URL holds a password: name only its scheme
        found = f"a URL starting {scheme}://" if sep else "something that is not a URL"
        raise ValueError(f"FACEPIPE_POSTGRES_URL must be postgresql://user:password@host:port/database, not {found}")
    return "postgresql+psycopg2://" + rest


def _with_psycopg2(config_value: Mapping[str, Any]) -> PostgresStorageConfig:
    translated = cast(PostgresStorageConfig, dict(config_value))
    if config_value.get("postgres_url"):
        translated["postgres_url"] = psycopg2_url(config_value["postgres_url"])
    return translated


class RunStorage(PostgresRunStorage):
    @classmethod
    def from_config_value(  # type: ignore[override]  # dagster-postgres' builds its class, not cls
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresRunStorage:
        return super().from_config_value(inst_data, _with_psycopg2(config_value))


class EventLogStorage(PostgresEventLogStorage):
    @classmethod
    def from_config_value(  # type: ignore[override]  # dagster-postgres' builds its class, not cls
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresEventLogStorage:
        return super().from_config_value(inst_data, _with_psycopg2(config_value))


class ScheduleStorage(PostgresScheduleStorage):
    @classmethod
    def from_config_value(  # type: ignore[override]  # dagster-postgres' builds its class, not cls
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresScheduleStorage:
        return super().from_config_value(inst_data, _with_psycopg2(config_value))
