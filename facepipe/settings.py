"""Deployment settings: where facepipe keeps its data. Environment variables only, read here.

- FACEPIPE_HOME: one data folder (default `.facepipe` in the working directory) holding the
  Dagster instance (`dagster/`) and the embedded face store (`qdrant/`: Qdrant Edge shards).
- DAGSTER_HOME: the Dagster instance, default `$FACEPIPE_HOME/dagster`.
- QDRANT_URL / QDRANT_API_KEY: use a Qdrant server instead of the embedded store.
- FACEPIPE_WATCHES: the watches file (default `$FACEPIPE_HOME/watches.yaml`; see facepipe/domain/watching.py).
- DEEPFACE_HOME: deepface's model weights are in `$DEEPFACE_HOME/.deepface/weights` (default: the
  user's home), as deepface itself reads it.
- FACEPIPE_MAX_IMAGE_PIXELS / FACEPIPE_MAX_IMAGE_BYTES: what one photo may cost (below).
- FACEPIPE_API_KEY, FACEPIPE_ALLOWED_ROOTS, FACEPIPE_STORE_WAIT_SECONDS, FACEPIPE_CORS_ORIGINS: the HTTP
  service (below); the key is required to listen on anything but loopback (is_loopback).
- FACEPIPE_STORE_STEP_WAIT_SECONDS, FACEPIPE_SEARCH_WORKERS, FACEPIPE_SEARCH_QUEUE: many clients
  sharing one store (below).
- FACEPIPE_MAX_WORKERS, FACEPIPE_S3_ENDPOINTS: what a digest request may ask for (below).
- FACEPIPE_POSTGRES_URL: `postgresql://user:password@host:port/database`, the Dagster instance's
  run, event-log and schedule storage in PostgreSQL instead of SQLite files (facepipe/platform/instance.py).
- FACEPIPE_CELERY_BROKER / FACEPIPE_CELERY_BACKEND: a Celery broker (e.g. `redis://host:6379/0`) runs
  the digest's steps on `facepipe worker` processes, on any machine, instead of this machine's
  processes; the result backend defaults to the broker.
- FACEPIPE_STEP_OUTPUTS: `s3://bucket/prefix`, where runs keep their step outputs (pickles every
  worker on any machine reads) instead of the instance's storage folder.
"""

import ipaddress
import os
from pathlib import Path

# One writer at a time to a store: the digest ops that open it run in this Dagster pool,
# whose limit is 1 in the instance's dagster.yaml (facepipe/platform/instance.py).
STORE_POOL = "facepipe_store"

# On Celery, the steps that open the embedded store go to this queue, which only the workers on the
# machine holding the store serve (`facepipe worker -q dagster -q facepipe_store`); every other step
# goes to dagster-celery's default queue, which any worker may serve.
STORE_QUEUE = "facepipe_store"
DEFAULT_QUEUE = "dagster"


def facepipe_home() -> Path:
    return Path(os.environ.get("FACEPIPE_HOME", ".facepipe")).absolute()


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME", facepipe_home() / "dagster")).absolute()


def qdrant_path() -> Path:
    return facepipe_home() / "qdrant"


def uploads_dir() -> Path:
    """Where the HTTP service keeps the photos uploaded to it, a folder per group; its digests read
    them whatever FACEPIPE_ALLOWED_ROOTS says."""
    return facepipe_home() / "uploads"


def qdrant_url() -> str | None:
    return os.environ.get("QDRANT_URL") or None


def qdrant_api_key() -> str | None:
    return os.environ.get("QDRANT_API_KEY") or None


def watches_file_named() -> str | None:
    """The watches file named by FACEPIPE_WATCHES: it must exist (a typo must not watch nothing)."""
    return os.environ.get("FACEPIPE_WATCHES") or None


def deepface_home() -> Path:
    return Path(os.environ.get("DEEPFACE_HOME") or os.path.expanduser("~"))


def celery_broker() -> str | None:
    """FACEPIPE_CELERY_BROKER: the Celery broker's URL; set, the digest runs on Celery workers."""
    return os.environ.get("FACEPIPE_CELERY_BROKER") or None


def celery_backend() -> str | None:
    """FACEPIPE_CELERY_BACKEND: where workers put the steps' results (default: the broker)."""
    return os.environ.get("FACEPIPE_CELERY_BACKEND") or celery_broker()


class SettingError(ValueError):
    """An environment variable facepipe reads has a value it cannot use; the message names it."""


def step_outputs() -> str | None:
    """FACEPIPE_STEP_OUTPUTS: `s3://bucket/prefix` where runs keep their step outputs (dagster-aws's
    S3PickleIOManager, through the AWS configuration's endpoint and credentials); unset, Dagster's
    default: pickles in the run's instance's storage folder, which only this machine reads."""
    url = os.environ.get("FACEPIPE_STEP_OUTPUTS") or None
    if url and not (url.startswith("s3://") and url.removeprefix("s3://").split("/", 1)[0]):
        raise SettingError(f"FACEPIPE_STEP_OUTPUTS must be s3://bucket/prefix, got {url!r}")
    return url


def store_queue() -> str:
    """The Celery queue of the steps that open the face store: any worker's with a Qdrant server,
    the store's machine's with the embedded store."""
    return DEFAULT_QUEUE if qdrant_url() else STORE_QUEUE


def postgres_url() -> str | None:
    """FACEPIPE_POSTGRES_URL: the PostgreSQL database of the Dagster instance, or None for SQLite."""
    return os.environ.get("FACEPIPE_POSTGRES_URL") or None


# What one photo may cost a worker, refused before it is read or decoded (README, "When things go
# wrong"): 120 megapixels is the largest camera output in common use (108 MP phones, 102 MP medium
# format) and decodes to 360 MB of 8-bit BGR; 256 MiB is more than any JPEG, PNG or WebP of that
# size takes.
DEFAULT_MAX_IMAGE_PIXELS = 120_000_000
DEFAULT_MAX_IMAGE_BYTES = 256 * 2**20


def max_image_pixels() -> int:
    """FACEPIPE_MAX_IMAGE_PIXELS: a photo with more pixels is refused before decoding (a decompression bomb)."""
    return int(os.environ.get("FACEPIPE_MAX_IMAGE_PIXELS") or DEFAULT_MAX_IMAGE_PIXELS)


def max_image_bytes() -> int:
    """FACEPIPE_MAX_IMAGE_BYTES: a larger file is refused by its size, before it is read."""
    return int(os.environ.get("FACEPIPE_MAX_IMAGE_BYTES") or DEFAULT_MAX_IMAGE_BYTES)


def api_key() -> str | None:
    """FACEPIPE_API_KEY: when set, every HTTP request but /health and the docs needs it in X-API-Key."""
    return os.environ.get("FACEPIPE_API_KEY") or None


def cors_origins() -> list[str]:
    """FACEPIPE_CORS_ORIGINS: the web origins (separated by ',', e.g. `https://app.example.com`; `*` for
    any) whose pages may call the HTTP API from a browser. Unset: none (no CORS headers are sent)."""
    return [o.strip().rstrip("/") for o in (os.environ.get("FACEPIPE_CORS_ORIGINS") or "").split(",") if o.strip()]


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is this machine's alone: `localhost` or a loopback IP
    (127.0.0.0/8, ::1). 0.0.0.0, ::, any other address or name counts as reachable by others."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_roots() -> list[Path]:
    """FACEPIPE_ALLOWED_ROOTS: the folders (separated by ':') that digests may read, with everything
    under them, however they are launched (checked by the digest's first step). Unset: the HTTP
    service reads no local folder until told which; a digest run reads any (a single-user install)."""
    return [Path(p).resolve() for p in (os.environ.get("FACEPIPE_ALLOWED_ROOTS") or "").split(os.pathsep) if p]


def store_wait_seconds() -> float:
    """FACEPIPE_STORE_WAIT_SECONDS: how long an HTTP request waits for the embedded store while another
    process holds it (a digest's store step holds it for seconds), before a 503 with Retry-After; also
    how long `facepipe search`, `people` and the notebook wait for it."""
    return float(os.environ.get("FACEPIPE_STORE_WAIT_SECONDS") or 30)


# Many clients sharing one store (README, "Many clients at once").


def store_step_wait_seconds() -> float:
    """FACEPIPE_STORE_STEP_WAIT_SECONDS: how long a digest's store step waits for the embedded store
    while another process holds it (searches hold it for milliseconds at a time; a notebook may
    hold it for as long as it likes), before it is retried by Dagster (6 times, 5 s apart)."""
    return float(os.environ.get("FACEPIPE_STORE_STEP_WAIT_SECONDS") or 600)


def search_workers() -> int:
    """FACEPIPE_SEARCH_WORKERS: the HTTP service's processes that find and embed selfies' faces
    (dlib's models are not thread-safe), default one per core."""
    return int(os.environ.get("FACEPIPE_SEARCH_WORKERS") or os.cpu_count() or 1)


def search_queue() -> int:
    """FACEPIPE_SEARCH_QUEUE: searches the HTTP service takes at once (being embedded or waiting for
    a worker); one more is answered 503 with Retry-After."""
    return int(os.environ.get("FACEPIPE_SEARCH_QUEUE") or 64)


def max_workers() -> int:
    """FACEPIPE_MAX_WORKERS: the most worker processes a digest may ask for (default: the cores); more
    would only fight over them, and each holds a model in memory."""
    value = os.environ.get("FACEPIPE_MAX_WORKERS")
    if value and not (value.isdigit() and int(value) >= 1):
        raise SettingError(f"FACEPIPE_MAX_WORKERS must be a whole number of at least 1, got {value!r}")
    return int(value) if value else os.cpu_count() or 1


# AWS's own S3 endpoints (https://docs.aws.amazon.com/general/latest/gr/s3.html), China's included
AWS_S3_ENDPOINTS = "https://*.amazonaws.com,https://*.amazonaws.com.cn"


def s3_endpoints() -> list[str]:
    """FACEPIPE_S3_ENDPOINTS: the S3 endpoints a digest request may name, separated by ','
    (default: AWS's own): each `scheme://host[:port]`, the host exact or `*.domain` for any host
    under that domain. Nothing else is reached with the request's credentials: an endpoint naming
    this machine, the cloud's metadata address or a file is refused unless listed here exactly."""
    return [
        e.strip().rstrip("/")
        for e in (os.environ.get("FACEPIPE_S3_ENDPOINTS") or AWS_S3_ENDPOINTS).split(",")
        if e.strip()
    ]
