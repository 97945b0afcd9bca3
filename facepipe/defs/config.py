"""The digest request: what the Launchpad form, the CLI and start_digest all fill in."""

import re

from dagster import Config
from pydantic import Field, field_validator, model_validator

from facepipe.engine.presets import DEFAULT_PRESET, PRESETS, Preset
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES

GROUP_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


def valid_group_id(value: str) -> str:
    """A pydantic validator for `group_id` fields (digest config, watches)."""
    if not GROUP_ID_PATTERN.match(value):
        raise ValueError(f"group_id {value!r} may only hold letters, digits, '-', '_' and '.'")
    return value


def known_profile(value: str) -> str:
    """A pydantic validator for `profile` fields (digest and people configs)."""
    if value not in PROFILES:
        raise ValueError(f"profile {value!r} is not one of {sorted(PROFILES)}")
    return value


class DigestConfig(Config):
    """Digest the photos of one source into one group."""

    group_id: str = Field(
        description="The group the faces belong to (an event, an album): letters, digits, '-', '_', '.'. "
        "Must equal the run's partition."
    )
    local_dir_path: str | None = Field(
        default=None, description="A local folder of photos, read recursively. Exactly one source."
    )
    s3_bucket: str | None = Field(default=None, description="An S3 bucket (with s3_prefix). Exactly one source.")
    s3_prefix: str | None = Field(default=None, description="The key prefix within s3_bucket ('' for all of it).")
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible store's endpoint (MinIO, Ceph, R2...); default: AWS."
    )
    s3_region: str | None = Field(default=None, description="The bucket's region; default: the AWS configuration's.")
    confidence: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Faces detected below this confidence are dropped (and counted)."
    )
    profile: str = Field(default=DEFAULT_PROFILE, description=f"The model profile: one of {sorted(PROFILES)}.")
    redigest: bool = Field(default=False, description="Digest photos again even if the group has them already.")
    chunk_size: int = Field(default=200, ge=1, description="At most this many photos per parallel step.")
    preset: Preset = Field(
        default=DEFAULT_PRESET,
        description="The smallest faces to find: " + ", ".join(f"{name} {size} px" for name, size in PRESETS.items())
        + " wide, in the photo's full-size pixels. Smaller faces cost more time: see the README's table.",
    )
    min_face_size: int | None = Field(
        default=None, ge=8,
        description="The narrowest face to find, in full-size pixels; overrides the preset's when set.",
    )
    modified_after_ns: int | None = Field(
        default=None, description="Only photos modified after this time (ns since the epoch, exclusive); set by sensors."
    )
    modified_until_ns: int | None = Field(
        default=None, description="Only photos modified until this time (ns since the epoch, inclusive); set by sensors."
    )

    _group_id_is_a_name = field_validator("group_id")(valid_group_id)

    _profile_is_known = field_validator("profile")(known_profile)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "DigestConfig":
        has_local = bool(self.local_dir_path)
        has_s3 = bool(self.s3_bucket or self.s3_prefix)
        if has_local == has_s3:
            raise ValueError(
                "give exactly one source: local_dir_path, or s3_bucket with s3_prefix "
                f"(got local_dir_path={self.local_dir_path!r}, s3_bucket={self.s3_bucket!r})"
            )
        if has_s3 and not self.s3_bucket:
            raise ValueError("s3_bucket: an s3_prefix needs its bucket")
        return self

    def modified_in_window(self, files: list) -> list:
        """The listed files modified in (modified_after_ns, modified_until_ns]: a sensor's batch."""
        after, until = self.modified_after_ns, self.modified_until_ns
        return [f for f in files if (after is None or f.mtime_ns > after) and (until is None or f.mtime_ns <= until)]

    @property
    def face_size(self) -> int:
        """The narrowest face this digest finds, in full-size pixels."""
        return self.min_face_size or PRESETS[self.preset]

    @property
    def source(self) -> str:
        return self.local_dir_path or f"s3://{self.s3_bucket}/{self.s3_prefix or ''}"

    def list_photos(self, s3) -> list:
        """The photos at this digest's source, a folder or an S3 prefix: a Listing (ImageFile, sorted by
        path, and the entries left out, with their reasons).

        Raises OSError (a folder) or SourceError (a bucket) when the source cannot be listed at all.
        """
        from facepipe.engine.images import list_images
        from facepipe.engine.sources import list_s3_images

        if self.local_dir_path:
            return list_images(self.local_dir_path)
        return list_s3_images(self.s3_client(s3), self.s3_bucket, self.s3_prefix or "")

    def s3_client(self, s3):
        """A boto3 client from dagster-aws's S3Resource, with this digest's endpoint and region."""
        overrides = {"endpoint_url": self.s3_endpoint_url, "region_name": self.s3_region}
        return s3.model_copy(update={k: v for k, v in overrides.items() if v}).get_client()
