"""The digest's run config: the plain DigestOptions (facepipe/domain/request.py) as Dagster Config, so the
Launchpad renders its fields, defaults and descriptions, the source as a choice of one local folder
or one S3 prefix, and the profile as a choice of the known profiles. The group is the run's
partition, not a field."""

from dagster import Config
from pydantic import Field

from facepipe.domain.request import DigestOptions, DigestRequest, LocalFolder, S3Prefix


class LocalFolderConfig(Config, LocalFolder):
    """A folder of photos on the machine that runs the digest, read recursively."""


class S3PrefixConfig(Config, S3Prefix):
    """The photos under a key prefix of an S3 bucket, or of an S3-compatible store."""


class DigestConfig(Config, DigestOptions):
    """Digest the photos of one source into the run's group (its partition)."""

    # Dagster renders a union of Config classes as a selector: exactly one, refused before launch.
    # Its default is what the Launchpad opens with: a local folder whose path is to be typed (built
    # unvalidated; an empty path is refused at launch). Without one, Dagster's default would be the
    # S3 branch's own defaults, a prefix without a bucket: an error before the user typed anything.
    source: LocalFolderConfig | S3PrefixConfig = Field(
        default=LocalFolderConfig.model_construct(path=""),
        discriminator="kind",
        description="Where the photos are: a local folder, or an S3 prefix.",
    )


def digest_config(request: DigestRequest) -> dict:
    """The run config of list_images for `request`: its options, the source as the selector the
    Launchpad fills in ({"local_folder": {"path": ...}})."""
    options = request.model_dump(exclude={"group_id"})
    source = options.pop("source")
    return {**options, "source": {source.pop("kind"): source}}
