"""Watches: the folders and S3 prefixes whose new photos are digested without anyone asking.

Plain Python; the sensors and schedules of defs/ingestion are the Dagster wiring over it.

Declared in a YAML file, not in code: `$FACEPIPE_WATCHES`, or else `$FACEPIPE_HOME/watches.yaml`
(no file, no watches). It is read when the definitions load, so an edit shows after a reload of
the code location (the UI's Deployment page, or restarting `facepipe ui`)::

    watches:
      - name: wedding                  # the sensor is watch_wedding
        source: /photos/wedding        # a folder, or s3://bucket/prefix
        group_id: wedding-2026
        max_photos_per_run: 500        # a flood of uploads becomes several runs of at most this
        minimum_interval_seconds: 30   # how often the folder or prefix is listed
        preset: crowd                  # and any option of `facepipe digest` (DigestChoices), by its name
    webhooks:                          # each gets a JSON summary of every digest that ends
      - https://hooks.example.com/facepipe
      - ${SLACK_WEBHOOK_URL}           # ${VAR} is read from the environment: keep secrets out of the file
    schedules:
      recheck_cron: "0 2 * * *"        # a full digest of every watch's source
      recluster_cron: "0 3 * * *"      # people of the groups that got new faces
      timezone: UTC

A watch's sensor lists its folder or S3 prefix every `minimum_interval_seconds` and keeps a
high-water mark as its cursor: the newest modification time it has launched (an S3 object's
LastModified), with the short hashes of the photos that had exactly that time (see WatchCursor).
Photos modified after it are sorted by time and cut into batches of at most `max_photos_per_run`,
each a window (after, until] of modification times; a batch is one digest run of just that window
(`modified_after_ns` / `modified_until_ns` in its config), with the run key
`<watch>:<after>:<until>`, so a window, and so a photo, is never launched twice. A photo changed
later has a newer time and falls in a later window. The digest's own ledger still skips photos
it already has unchanged, so overlapping windows would cost nothing.

What the high-water mark cannot see, the nightly re-check (defs/ingestion/schedules.py) catches: a photo copied
in with an older modification time preserved (`cp -p`, `rsync -a`), or an S3 object whose upload
finished after a newer one was listed.
"""

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facepipe import settings
from facepipe.domain.request import (
    DigestChoices,
    DigestRequest,
    default_workers,
    digest_request,
    valid_group_id,
    valid_workers,
)
from facepipe.engine.listing import ImageFile
from facepipe.engine.sources import SourceError

WATCH_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")  # a sensor's name is watch_<name>
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class WatchesError(ValueError):
    """The watches file is unreadable or invalid; the message names the file and the field."""


class Watch(DigestChoices):
    """A folder or S3 prefix whose new and changed photos are digested into one group, with the
    options of any digest (DigestChoices: confidence, profile, preset...)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Letters, digits and '_'; the sensor is watch_<name>.")
    source: str = Field(description="A local folder, or s3://bucket/prefix.")
    group_id: str
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
    _workers_bounded = field_validator("workers")(lambda value: value if value is None else valid_workers(value))

    @model_validator(mode="after")
    def _is_a_valid_digest(self) -> "Watch":
        self.digest_request()  # the profile, the source, S3 settings: refused now, not at the first tick
        return self

    @property
    def sensor_name(self) -> str:
        return f"watch_{self.name}"

    @property
    def worker_count(self) -> int:
        return self.workers or default_workers()

    def digest_request(
        self, modified_after_ns: int | None = None, modified_until_ns: int | None = None
    ) -> DigestRequest:
        """The digest of this watch's source, of photos modified in (after, until] if given."""
        return digest_request(
            self.source,
            self.group_id,
            s3_endpoint_url=self.s3_endpoint_url,
            s3_region=self.s3_region,
            modified_after_ns=modified_after_ns,
            modified_until_ns=modified_until_ns,
            **self.model_dump(include=set(DigestChoices.model_fields)),
        )


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
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"webhook {url!r}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV_VAR.sub(value, url)


def load_watches(path: str | os.PathLike | None = None) -> WatchesConfig:
    """The declared watches; none when there is no file (unless $FACEPIPE_WATCHES names it)."""
    named = path or settings.watches_file_named()
    path = Path(named) if named else settings.facepipe_home() / "watches.yaml"
    if not path.exists():
        if named:  # asked for by name: a typo must not silently watch nothing
            raise WatchesError(f"{path}: no such watches file")
        return WatchesConfig()
    return parse_watches(_read(path), str(path))


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise WatchesError(f"{path}: cannot read the watches file: {err}") from err


def load_watches_leniently(path: str | os.PathLike | None = None) -> tuple[WatchesConfig, dict[str, str]]:
    """The valid part of the watches file, and what is wrong with the rest, by the name of the sensor
    that would have run it (or `watches_file`): a typo in one watch must not take the other
    watches, the jobs and the UI down with it."""
    try:
        return load_watches(path), {}
    except WatchesError as err:
        problem = str(err)
    named = path or settings.watches_file_named()
    path = Path(named) if named else settings.facepipe_home() / "watches.yaml"
    try:
        data = _read(path)
    except WatchesError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("watches", []), list):
        return WatchesConfig(), {"watches_file": problem}
    good: list[Watch] = []
    problems: dict[str, str] = {}
    for index, entry in enumerate(data.get("watches") or []):
        name = entry.get("name") if isinstance(entry, dict) else None
        sensor = f"watch_{name}" if isinstance(name, str) and WATCH_NAME_PATTERN.match(name) else f"watch_{index}"
        try:
            watch = Watch.model_validate(entry)
        except ValidationError as err:
            problems[sensor] = f"{path}: watch {name or index}: " + "; ".join(_problems(err, ""))
            continue
        if any(w.name == watch.name for w in good):  # its sensor's name is taken by the first
            problems[f"watch_{index}"] = f"{path}: watch {watch.name} is declared more than once: only the first runs"
            continue
        good.append(watch)
    try:
        rest = WatchesConfig.model_validate({**data, "watches": []})
    except ValidationError as err:  # webhooks or schedules: no webhooks, the default schedules
        problems["watches_file"] = f"{path}: " + "; ".join(_problems(err, ""))
        rest = WatchesConfig()
    return rest.model_copy(update={"watches": good}), problems


def _problems(err: ValidationError, indent: str) -> list[str]:
    return [
        f"{indent}{'.'.join(str(part) for part in e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    ]


def parse_watches(data: Any, where: str = "watches") -> WatchesConfig:
    try:
        return WatchesConfig.model_validate(data)
    except ValidationError as err:
        raise WatchesError(f"{where}: invalid watches:\n" + "\n".join(_problems(err, "  "))) from None


# -- what a watch's sensor launches: batches of new photos, and its cursor --------------------

NOTHING_SEEN = -1  # the cursor before the first photo: every modification time is after it


class WatchError(RuntimeError):
    """The watched source cannot be listed: the tick fails with this message, the next one retries."""


@dataclass(frozen=True)
class Batch:
    after_ns: int  # exclusive
    until_ns: int  # inclusive: the newest modification time in the batch
    files: list
    reopened: int | None = None  # photos known at after_ns + 1, when late ones re-open that time

    def run_key(self, watch_name: str) -> str:
        key = f"{watch_name}:{self.after_ns}:{self.until_ns}"
        # a re-opened window repeats its bounds: the number of photos known at that time tells it apart
        return f"{key}:{self.reopened}" if self.reopened is not None else key


@dataclass(frozen=True)
class WatchCursor:
    """The newest modification time launched, and which photos had exactly that time.

    S3's LastModified has whole seconds (some file systems too): a photo can arrive with the
    very time of the last launch after the listing that launched it. The short hashes of the
    photos already launched at that time tell such a late arrival from them, so it is launched
    too. Only one time's photos are kept, so the cursor stays small.
    """

    mtime_ns: int = NOTHING_SEEN
    # path_tag of each photo launched with exactly mtime_ns; None when too many to keep (a flood
    # within one second), and late arrivals at that time are left to the nightly re-check
    at_mtime: frozenset | None = frozenset()

    @classmethod
    def read(cls, cursor: str | None, source: str) -> "WatchCursor":
        saved = json.loads(cursor) if cursor else {}
        if saved.get("source") != source:  # a new watch, or its source changed: start over
            return cls()
        at_mtime = saved.get("at_mtime", ())
        return cls(int(saved["mtime_ns"]), None if at_mtime is None else frozenset(at_mtime))

    def write(self, source: str) -> str:
        at_mtime = None if self.at_mtime is None else sorted(self.at_mtime)
        return json.dumps({"source": source, "mtime_ns": self.mtime_ns, "at_mtime": at_mtime})

    def after(self, batches: list[Batch], files: list) -> "WatchCursor":
        """The cursor once `batches` are launched: their newest time and every listed photo at it."""
        if not batches:
            return self
        until = batches[-1].until_ns
        at_until = {path_tag(f.path) for f in files if f.mtime_ns == until}
        if until == self.mtime_ns:
            if self.at_mtime is None:
                return self
            at_until |= self.at_mtime
        return WatchCursor(until, frozenset(at_until) if len(at_until) <= MAX_TAGS_IN_CURSOR else None)


MAX_TAGS_IN_CURSOR = 10_000


def path_tag(path: str) -> str:
    return hashlib.blake2b(path.encode(), digest_size=5).hexdigest()


def plan_batches(files: list, cursor: WatchCursor, max_photos: int) -> list[Batch]:
    """The photos modified after the cursor (or late at its very time), oldest first, in consecutive
    windows of at most `max_photos` photos each; a window never splits photos of the same modification
    time, so one time held by more than `max_photos` photos makes one larger batch."""
    after = cursor.mtime_ns
    known = cursor.at_mtime
    late = [] if known is None else [f for f in files if f.mtime_ns == after and path_tag(f.path) not in known]
    new = sorted(late + [f for f in files if f.mtime_ns > after], key=lambda f: (f.mtime_ns, f.path))
    # late photos re-open the cursor's time: the window starts just before it (the photos launched
    # at that time already are in it again, and the digest's ledger skips them unchanged)
    start = after - 1 if late else after
    reopened = len((known or frozenset()) | {path_tag(f.path) for f in late}) if late else None
    batches: list[Batch] = []
    current: list = []
    for _, group in itertools.groupby(new, key=lambda f: f.mtime_ns):
        same_time = list(group)
        if current and len(current) + len(same_time) > max_photos:
            batches.append(Batch(start, current[-1].mtime_ns, current, reopened))
            start, current, reopened = current[-1].mtime_ns, [], None
        current.extend(same_time)
    if current:
        batches.append(Batch(start, current[-1].mtime_ns, current, reopened))
    return batches


def list_source(watch: Watch, s3_client: Any = None) -> list[ImageFile]:
    """The photos at the watch's source, as the digest will list them (path, size, mtime_ns)."""
    request = watch.digest_request()
    try:
        return request.list_photos(s3_client)
    except (OSError, SourceError) as err:
        raise WatchError(f"watch {watch.name}: cannot list {request.source.url}: {err}") from err
