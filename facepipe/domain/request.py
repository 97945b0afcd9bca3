"""A digest request: which photos (a folder or an S3 prefix), into which group, and how.

Plain pydantic, no Dagster: the CLI, the watches, the HTTP API and the Dagster run config
(defs/digest/config.py) all build and validate a request with these classes, and a digest's
options are declared here only (DigestChoices). The Launchpad asks for DigestOptions (the choices,
the source, and the window a sensor sets; the group is the run's partition); a DigestRequest is the
options and the group. A request is recorded on its Dagster run as tags (`run_tags`), which is how
the run history finds a group's digests.
"""

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator

from facepipe import settings
from facepipe.engine.listing import ImageFile, Listing, list_images
from facepipe.engine.presets import DEFAULT_PRESET, PRESETS, Preset
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES
from facepipe.engine.sources import list_s3_images, parse_s3_url

DEFAULT_CONFIDENCE = 0.5
DEFAULT_CHUNK_SIZE = 200

# What a request may ask for, checked before a run exists by everything that makes one (the CLI,
# the HTTP API, the watches) and again by the run's first step (the Launchpad, GraphQL):
# a group is a partition's name, a run tag and a store payload value, so a short name
MAX_GROUP_ID_LENGTH = 128
GROUP_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_PATH_LENGTH = 4096  # PATH_MAX on Linux: a longer folder cannot be opened
MAX_S3_KEY_LENGTH = 1024  # S3's own limit on a key, so on a prefix
S3_BUCKET_PATTERN = re.compile(r"^[A-Za-z0-9._-]{3,255}$")  # S3's legacy rule, the loosest any store uses
S3_REGION_PATTERN = re.compile(r"^[a-z0-9-]{1,64}$")
MAX_CHUNK_SIZE = 100_000  # photos per step: one listing's worth
MAX_FACE_SIZE = 100_000  # pixels: wider than any photo's decoding budget allows

# How a digest run is tagged (the CLI, the history and the UI's filters read these)
TAG_PREFIX = "facepipe/"
GROUP_TAG = TAG_PREFIX + "group_id"
SOURCE_TAG = TAG_PREFIX + "source"
PROFILE_TAG = TAG_PREFIX + "profile"
WORKERS_TAG = TAG_PREFIX + "workers"
CONFIDENCE_TAG = TAG_PREFIX + "confidence"
WATCH_TAG = TAG_PREFIX + "watch"
# a watch's run: the run it waited behind in the run queue when its sensor launched it
QUEUED_BEHIND_TAG = TAG_PREFIX + "queued_behind"
PARTITION_TAG = "dagster/partition"
# The dynamic partitions that are the groups (facepipe/defs/partitions.py)
GROUPS = "digest_groups"
DIGEST_JOB = "digest_job"


def default_workers() -> int:
    """Worker processes of a digest when none is asked for: one per core, at most FACEPIPE_MAX_WORKERS."""
    return min(os.cpu_count() or 1, settings.max_workers())


def valid_workers(value: int) -> int:
    """Worker processes a digest may ask for: from 1 to FACEPIPE_MAX_WORKERS (default: the cores)."""
    limit = settings.max_workers()
    if not 1 <= value <= limit:
        raise ValueError(f"workers must be from 1 to {limit} (FACEPIPE_MAX_WORKERS), got {value}")
    return value


def valid_group_id(value: str) -> str:
    """A pydantic validator for `group_id` fields (digest request, watches, the HTTP API)."""
    if len(value) > MAX_GROUP_ID_LENGTH:
        raise ValueError(f"group_id is {len(value):,} characters long: at most {MAX_GROUP_ID_LENGTH}")
    if not GROUP_ID_PATTERN.match(value):
        raise ValueError(f"group_id {value!r} may only hold letters, digits, '-', '_' and '.'")
    return value


GroupId = Annotated[str, AfterValidator(valid_group_id)]


def is_group_name(value: str) -> bool:
    """Whether a group may be named so (valid_group_id's rule: its characters and its length)."""
    try:
        valid_group_id(value)
    except ValueError:
        return False
    return True


def valid_path(value: str) -> str:
    """A folder's path of a length a system can open (checked before it is resolved)."""
    if len(value) > MAX_PATH_LENGTH:
        raise ValueError(f"the path is {len(value):,} characters long: at most {MAX_PATH_LENGTH}")
    if "\0" in value:
        raise ValueError("the path holds a NUL character")
    return value


def allowed_s3_endpoint(value: str | None) -> str | None:
    """An S3 endpoint the operator allows (FACEPIPE_S3_ENDPOINTS, default AWS's own), else ValueError:
    the run would send its signed requests there, and say in its errors what came back."""
    if value is None:
        return None
    allowed = settings.s3_endpoints()
    url = value.rstrip("/")
    refused = ValueError(
        f"s3_endpoint_url {value[:200]!r} is not an allowed S3 endpoint (FACEPIPE_S3_ENDPOINTS="
        f"{','.join(allowed)}): name one of those, or have the operator add it there"
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refused from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise refused
    if parts.path or parts.query or parts.fragment:
        raise refused
    if url in allowed:  # listed exactly: the operator's own, wherever it is
        return value
    if _internal_address(parts.hostname):
        raise refused
    for entry in allowed:
        scheme, _, host = entry.partition("://")
        wanted_port = None
        if ":" in host:
            host, _, port_text = host.rpartition(":")
            wanted_port = int(port_text) if port_text.isdigit() else -1
        if (
            scheme == parts.scheme
            and host.startswith("*.")
            and parts.hostname.endswith(host[1:].lower())
            and (wanted_port is None or wanted_port == port)
        ):
            return value
    raise refused


def _internal_address(host: str) -> bool:
    """A literal address of this machine, its network or the cloud's metadata service (or 'localhost')."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not address.is_global


class LocalFolder(BaseModel):
    """A folder of photos on the machine that runs the digest, read recursively."""

    kind: Literal["local_folder"] = "local_folder"
    path: str = Field(description="The folder, on the machine that runs the digest; read recursively.")

    @field_validator("path")
    @classmethod
    def _typed(cls, path: str) -> str:
        if not path.strip():  # the Launchpad's default (defs/digest/config.py), left as it was
            raise ValueError("type the path of the folder of photos")
        return path

    _path_length = field_validator("path")(valid_path)

    @property
    def url(self) -> str:
        return self.path


class S3Prefix(BaseModel):
    """The photos under a key prefix of an S3 bucket, or of an S3-compatible store."""

    kind: Literal["s3"] = "s3"
    bucket: str = Field(description="The S3 bucket.")
    prefix: str = Field(default="", description="The key prefix within the bucket ('' for all of it).")
    endpoint_url: str | None = Field(
        default=None, description="An S3-compatible store's endpoint (MinIO, Ceph, R2...); default: AWS."
    )
    region: str | None = Field(default=None, description="The bucket's region; default: the AWS configuration's.")

    _endpoint_allowed = field_validator("endpoint_url")(allowed_s3_endpoint)

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not S3_BUCKET_PATTERN.match(value):
            raise ValueError(
                f"bucket {value[:300]!r} is not an S3 bucket name (3 to 255 letters, digits, '.', '-', '_')"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_length(cls, value: str) -> str:
        if len(value) > MAX_S3_KEY_LENGTH:
            raise ValueError(f"prefix is {len(value):,} characters long: an S3 key has at most {MAX_S3_KEY_LENGTH}")
        return value

    @field_validator("region")
    @classmethod
    def _region_name(cls, value: str | None) -> str | None:
        if value is not None and not S3_REGION_PATTERN.match(value):
            raise ValueError(f"region {value[:100]!r} is not a region name (lowercase letters, digits and '-')")
        return value

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


# A profile's name, one of PROFILES: a choice the Launchpad renders (built from PROFILES, so that a
# new profile is a choice without another line here)
ProfileName = Literal[*PROFILES]  # type: ignore[valid-type]


class DigestChoices(BaseModel):
    """What a person chooses of a digest besides its source and group: each option's one declaration
    (type, default, bounds, help). `facepipe digest`'s options are made from it (cli/main.py), a
    watch (domain/watching.py) and the Launchpad (DigestOptions, defs/digest/config.py) inherit it,
    and facepipe_tests/test_digest_options.py checks the HTTP body against it."""

    confidence: float = Field(
        default=DEFAULT_CONFIDENCE,
        ge=0.0,
        le=1.0,
        description="Faces detected below this confidence are dropped (and counted); between 0 and 1.",
    )
    profile: ProfileName = Field(default=DEFAULT_PROFILE, description="The model profile.")
    redigest: bool = Field(default=False, description="Digest photos again even if the group has them already.")
    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE, ge=1, le=MAX_CHUNK_SIZE, description="At most this many photos per parallel step."
    )
    preset: Preset = Field(
        default=DEFAULT_PRESET,
        description="The smallest faces to find: "
        + ", ".join(f"{name} {size} px" for name, size in PRESETS.items())
        + " wide, in the photo's full-size pixels. Smaller faces cost more time: see the README's table.",
    )
    min_face_size: int | None = Field(
        default=None,
        ge=8,
        le=MAX_FACE_SIZE,
        description="The narrowest face to find, in full-size pixels; overrides the preset's when set.",
    )


class DigestOptions(DigestChoices):
    """How to digest the photos of one source: what the Launchpad asks (the group is the run's partition)."""

    source: LocalFolder | S3Prefix = Field(
        discriminator="kind", description="Where the photos are: a local folder, or an S3 prefix."
    )
    modified_after_ns: int | None = Field(
        default=None,
        description="Only photos modified after this time (ns since the epoch, exclusive); set by sensors.",
    )
    modified_until_ns: int | None = Field(
        default=None,
        description="Only photos modified until this time (ns since the epoch, inclusive); set by sensors.",
    )

    @property
    def face_size(self) -> int:
        """The narrowest face this digest finds, in full-size pixels."""
        return self.min_face_size or PRESETS[self.preset]

    def modified_in_window(self, files: list[ImageFile]) -> list[ImageFile]:
        """The listed files modified in (modified_after_ns, modified_until_ns]: a sensor's batch."""
        after, until = self.modified_after_ns, self.modified_until_ns
        return [f for f in files if (after is None or f.mtime_ns > after) and (until is None or f.mtime_ns <= until)]

    def list_photos(self, s3_client: Any = None) -> Listing:
        """The photos at this digest's source, a folder or an S3 prefix (read with `s3_client`, a
        boto3 client): a Listing (ImageFile, sorted by path, and the entries left out, with reasons).

        Raises OSError (a folder) or SourceError (a bucket) when the source cannot be listed at all.
        """
        if isinstance(self.source, LocalFolder):
            return list_images(self.source.path)
        return list_s3_images(s3_client, self.source.bucket, self.source.prefix)


class DigestRequest(DigestOptions):
    """Digest the photos of one source into one group."""

    group_id: GroupId = Field(
        description="The group the faces belong to (an event, an album): letters, digits, '-', '_', '.'."
    )


def allowed_folder(path: str, roots: list[Path]) -> str:
    """`path` resolved (every `..` and symbolic link followed), if it is one of `roots` or under one;
    else ValueError naming the folder and the roots. Resolved first, so neither `..` nor a link
    inside a root can lead out of it. `roots` are FACEPIPE_ALLOWED_ROOTS (facepipe.settings)."""
    real = Path(path).resolve()
    resolved_roots = [Path(root).resolve() for root in roots]
    if any(real == root or root in real.parents for root in resolved_roots):
        return str(real)
    seen_as = "" if str(real) == path else f" (that is {real})"
    raise ValueError(
        f"folder {path!r}{seen_as} is not under an allowed root (FACEPIPE_ALLOWED_ROOTS="
        f"{os.pathsep.join(map(str, resolved_roots))}): digest a folder under one of them, or add the "
        "folder to FACEPIPE_ALLOWED_ROOTS where the digests run"
    )


def one_line(err: ValidationError) -> str:
    """A validation error as one line that names each bad field: `source.path: Field required`."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
    )


def digest_request(
    path: str,
    group_id: str,
    *,
    on_this_machine: bool = True,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
    **options: Any,
) -> DigestRequest:
    """A validated request for the photos at `path`, a folder or `s3://bucket/prefix`; raises
    pydantic's ValidationError naming the bad field. `options` are DigestRequest's other fields.

    A folder on this machine is resolved to its one canonical path (it is part of each photo's
    identity); one on a remote server is passed as it is.
    """
    source: LocalFolder | S3Prefix
    if path.startswith("s3://"):
        bucket, prefix = parse_s3_url(path)
        source = S3Prefix(bucket=bucket, prefix=prefix, endpoint_url=s3_endpoint_url, region=s3_region)
    else:
        # resolved only if it may be opened (resolving a longer one is an OSError): else refused as it is
        resolve = on_this_machine and len(path) <= MAX_PATH_LENGTH and "\0" not in path
        source = LocalFolder(path=str(Path(path).resolve()) if resolve else path)
    return DigestRequest(group_id=group_id, source=source, **options)


def list_images_config(run_config: Mapping) -> dict:
    """The digest's own config (list_images' op config) in a digest_job run config ({} if absent)."""
    digest = run_config.get("ops", {}).get("digest", {})
    return digest.get("ops", {}).get("list_images", {}).get("config", {})


def request_from_config(op_config: Mapping, group_id: str) -> DigestRequest:
    """The request of a run, from list_images' op config (the source as the Launchpad's selector,
    {"local_folder": {"path": ...}}) and the run's partition. Raises pydantic's ValidationError
    naming the bad field."""
    # a run config without a source takes the Launchpad's default: a folder whose path is to be typed
    ((kind, source),) = (op_config.get("source") or {"local_folder": {"path": ""}}).items()
    return DigestRequest.model_validate({**op_config, "source": {**source, "kind": kind}, "group_id": group_id})


class RunRefused(ValueError):
    """A digest run that cannot work, told from its config and partition alone, in one line."""


def request_of_run(op_config: Mapping, partition: str | None) -> DigestRequest:
    """A digest run's request, from list_images' op config and the run's partition (its group), or
    RunRefused saying what is wrong. The run launcher asks before the run's process starts, the
    run's first step again (a run executed without the launcher: `facepipe digest`, tests)."""
    if partition is None:
        raise RunRefused(
            "a digest is of one group: launch it with the group as its partition (the Launchpad's "
            "partition picker, or `facepipe digest --group`)"
        )
    try:
        request = request_from_config(op_config, partition)
    except ValidationError as err:
        raise RunRefused(f"invalid digest request: {one_line(err)}") from None
    roots = settings.allowed_roots()
    if roots and isinstance(request.source, LocalFolder):
        # every launch passes here (the CLI, the Launchpad, GraphQL, a sensor, the HTTP API), so
        # here is where a deployment's allowed roots hold, before anything is read
        try:
            folder = allowed_folder(request.source.path, roots)
        except ValueError as err:
            try:  # the photos uploaded to the HTTP service, which its digests read
                folder = allowed_folder(request.source.path, [settings.uploads_dir()])
            except ValueError:
                raise RunRefused(f"invalid digest request: source.path: {err}") from None
        # the folder as it was checked: a link changed after the check leads nowhere new
        request = request.model_copy(update={"source": LocalFolder(path=folder)})
    return request


def run_tags(request: DigestRequest, workers: int) -> dict[str, str]:
    """The tags of a digest run of `request`: its partition, and what the history shows."""
    return {
        PARTITION_TAG: request.group_id,
        GROUP_TAG: request.group_id,
        SOURCE_TAG: request.source.url,
        PROFILE_TAG: request.profile,
        WORKERS_TAG: str(workers),
        CONFIDENCE_TAG: str(request.confidence),
    }
