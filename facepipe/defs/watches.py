"""Watches: the folders and S3 prefixes whose new photos are digested without anyone asking.

Declared in a YAML file, not in code: `$FACEPIPE_WATCHES`, or else `$FACEPIPE_HOME/watches.yaml`
(no file, no watches). It is read when the definitions load, so an edit shows after a reload of
the code location (the UI's Deployment page, or restarting `facepipe ui`)::

    watches:
      - name: wedding                  # the sensor is watch_wedding
        source: /photos/wedding        # a folder, or s3://bucket/prefix
        group_id: wedding-2026
        max_photos_per_run: 500        # a flood of uploads becomes several runs of at most this
        minimum_interval_seconds: 30   # how often the folder or prefix is listed
    webhooks:                          # each gets a JSON summary of every digest that ends
      - https://hooks.example.com/facepipe
      - ${SLACK_WEBHOOK_URL}           # ${VAR} is read from the environment: keep secrets out of the file
    schedules:
      recheck_cron: "0 2 * * *"        # a full digest of every watch's source
      recluster_cron: "0 3 * * *"      # people of the groups that got new faces
      timezone: UTC
"""

import os
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facepipe import settings
from facepipe.defs.config import DigestConfig, valid_group_id
from facepipe.engine.presets import DEFAULT_PRESET, Preset

WATCH_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")  # a sensor's name is watch_<name>
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class WatchesError(ValueError):
    """The watches file is unreadable or invalid; the message names the file and the field."""


class Watch(BaseModel):
    """A folder or S3 prefix whose new and changed photos are digested into one group."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Letters, digits and '_'; the sensor is watch_<name>.")
    source: str = Field(description="A local folder, or s3://bucket/prefix.")
    group_id: str
    confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    profile: str | None = None
    preset: Preset = DEFAULT_PRESET
    min_face_size: int | None = Field(default=None, ge=8)
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    workers: int | None = Field(default=None, ge=1, description="Default: the machine's cores.")
    max_photos_per_run: int = Field(default=500, ge=1)
    minimum_interval_seconds: int = Field(default=30, ge=1)

    @field_validator("name")
    @classmethod
    def _name_is_a_sensor_name(cls, value: str) -> str:
        if not WATCH_NAME_PATTERN.match(value):
            raise ValueError(f"name {value!r} may only hold letters, digits and '_'")
        return value

    _group_id_is_a_name = field_validator("group_id")(valid_group_id)

    @model_validator(mode="after")
    def _is_a_valid_digest(self) -> "Watch":
        self.digest_request()  # the profile, the source, S3 settings: refused now, not at the first tick
        return self

    @property
    def sensor_name(self) -> str:
        return f"watch_{self.name}"

    def digest_request(self, modified_after_ns: int | None = None, modified_until_ns: int | None = None) -> DigestConfig:
        """The digest of this watch's source, of photos modified in (after, until] if given."""
        from facepipe.digests import digest_request

        options = {"profile": self.profile} if self.profile else {}
        request = digest_request(self.source, self.group_id, confidence=self.confidence,
                                 s3_endpoint_url=self.s3_endpoint_url, s3_region=self.s3_region,
                                 preset=self.preset, min_face_size=self.min_face_size, **options)
        return request.model_copy(update={"modified_after_ns": modified_after_ns, "modified_until_ns": modified_until_ns})


class Schedules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recheck_cron: str = "0 2 * * *"
    recluster_cron: str = "0 3 * * *"
    timezone: str = "UTC"
    recluster_full: bool = Field(default=False, description="Re-cluster every face, not only the new ones.")


class WatchesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    watches: list[Watch] = Field(default_factory=list)
    webhooks: list[str] = Field(default_factory=list)
    schedules: Schedules = Field(default_factory=Schedules)

    @field_validator("webhooks")
    @classmethod
    def _webhooks_are_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^https?://", _expand(url)):
                raise ValueError(f"webhook {url!r} is not an http(s) URL")
        return urls

    @model_validator(mode="after")
    def _names_are_unique(self) -> "WatchesConfig":
        names = [w.name for w in self.watches]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"watch names must be unique: {repeated} declared more than once")
        return self

    def webhook_urls(self) -> list[str]:
        """The webhook URLs with ${VAR}s read from the environment (now, not when the file was read)."""
        return [_expand(url) for url in self.webhooks]


def _expand(url: str) -> str:
    def value(match):
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"webhook {url!r}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV_VAR.sub(value, url)


def watches_path() -> Path:
    return Path(os.environ.get("FACEPIPE_WATCHES") or settings.facepipe_home() / "watches.yaml")


def load_watches(path: str | os.PathLike | None = None) -> WatchesConfig:
    """The declared watches; none when there is no file (unless $FACEPIPE_WATCHES names it)."""
    named = path or os.environ.get("FACEPIPE_WATCHES")
    path = Path(named) if named else watches_path()
    if not path.exists():
        if named:  # asked for by name: a typo must not silently watch nothing
            raise WatchesError(f"{path}: no such watches file")
        return WatchesConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise WatchesError(f"{path}: cannot read the watches file: {err}") from err
    return parse_watches(data, str(path))


def parse_watches(data, where: str = "watches") -> WatchesConfig:
    try:
        return WatchesConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            field = ".".join(str(part) for part in error["loc"]) or "(top level)"
            problems.append(f"  {field}: {error['msg'].removeprefix('Value error, ')}")
        raise WatchesError(f"{where}: invalid watches:\n" + "\n".join(problems)) from None
