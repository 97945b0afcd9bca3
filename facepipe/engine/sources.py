"""Photos in an S3 bucket (or any S3-compatible store): list a prefix, read an object.

The client is a boto3 S3 client (the pipeline gets it from dagster-aws's S3Resource, whose botocore
config retries throttling and transient network errors with backoff). An object is fetched whole
into memory inside the worker step, one photo at a time: nothing is copied to disk.
"""

import hashlib
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, TypeAlias

from facepipe import settings
from facepipe.engine.listing import IMAGE_EXTENSIONS, ImageError, ImageFile, Listing, too_large

# A boto3 client("s3"): boto3 builds its methods at run time and ships no types.
S3Client: TypeAlias = Any


class SourceError(RuntimeError):
    """The source as a whole cannot be read (no such bucket, bad credentials): nothing can work."""


def s3_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix/key` -> (bucket, prefix/key)."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// url: {url!r}")
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key


def _error_code(err: Exception) -> str:
    return getattr(err, "response", {}).get("Error", {}).get("Code", "")


def check_bucket(client: S3Client, bucket: str) -> None:
    """Fail before any work when the bucket is missing or the credentials cannot reach it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        code = _error_code(err)
        if code in ("404", "NoSuchBucket"):
            raise SourceError(f"s3_bucket: bucket {bucket!r} does not exist") from err
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise SourceError(
                f"s3_bucket: access to bucket {bucket!r} denied ({code}): check the AWS credentials"
            ) from err
        raise SourceError(f"s3_bucket: cannot reach bucket {bucket!r}: {err}") from err
    except BotoCoreError as err:  # no credentials, endpoint unreachable
        raise SourceError(f"s3_bucket: cannot reach bucket {bucket!r}: {err}") from err


def list_s3_images(client: S3Client, bucket: str, prefix: str) -> Listing:
    """Every object under the prefix with an image extension, sorted by key, however many pages.

    The content is confirmed when the object is fetched: a non-image with an image name fails
    then, with a recorded error. (A bucket has no links or folders to leave out: `not_listed` is empty.)
    """
    check_bucket(client, bucket)
    found: list[ImageFile] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if PurePosixPath(obj["Key"]).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(
                    ImageFile(
                        s3_url(bucket, obj["Key"]),
                        obj["Size"],
                        _epoch_ns(obj["LastModified"]),
                        obj["ETag"].strip('"'),
                    )
                )
    return Listing(sorted(found, key=lambda f: f.path))


def _epoch_ns(moment: datetime) -> int:
    """Exact nanoseconds since the epoch (a float of them would round)."""
    return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000


class S3Reader:
    """Reads `s3://` photos for faces_in_chunk: the bytes and their SHA-256, in one pass; an object
    larger than `max_image_bytes` is refused by its size before its body is read."""

    def __init__(self, client: S3Client) -> None:
        self.client = client

    def __call__(self, url: str) -> tuple[bytes, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = parse_s3_url(url)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            budget, body = settings.max_image_bytes(), response["Body"]
            if response.get("ContentLength", 0) > budget:
                body.close()
                raise ImageError(too_large(response["ContentLength"], budget, "object"))
            digest, parts, read = hashlib.sha256(), [], 0
            for part in body.iter_chunks(1 << 20):
                digest.update(part)
                parts.append(part)
                read += len(part)
                if read > budget:
                    body.close()
                    raise ImageError(too_large(read, budget, "object"))
        except ClientError as err:
            code = _error_code(err)
            if code in ("NoSuchKey", "404"):
                raise ImageError("object not found (deleted since it was listed?)") from err
            if code in ("AccessDenied", "403"):
                raise ImageError("access to the object denied") from err
            raise ImageError(f"cannot fetch object: {code or err}") from err
        except BotoCoreError as err:
            raise ImageError(f"cannot fetch object: {err}") from err
        return b"".join(parts), digest.hexdigest()
