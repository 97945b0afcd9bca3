"""What the HTTP API reads and answers, as pydantic models: the request bodies (the digest's in one
model, DigestBody), every operation's answer, and the one error shape every status code uses."""

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from facepipe import settings
from facepipe.domain.request import (
    MAX_PATH_LENGTH,
    DigestChoices,
    GroupId,
    ProfileName,
    allowed_folder,
    default_workers,
    valid_workers,
)
from facepipe.engine.profiles import DEFAULT_PROFILE

# ------------------------------------------------------------------------------------------------
# Errors: one shape, FastAPI's own, for every status (422 included)
# ------------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the bad value is: ['body', 'group_id'], ['query', 'limit'], ...")
    msg: str = Field(description="What is wrong with it, in a sentence.")
    type: str = Field(description="pydantic's name for the kind of error ('value_error', 'missing', ...).")


class ErrorBody(BaseModel):
    """Every error: a sentence (401, 404, 409, 413, 503, ...) or, for a request that names bad fields
    (422), one FieldError per field."""

    detail: str | list[FieldError]

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "no digest with run id 'digest-0f6c...'"}]},
    )


ERROR_MEANINGS = {
    400: "The request cannot be answered as asked (a selfie without a face).",
    401: "Missing or wrong API key (X-API-Key), when the server has FACEPIPE_API_KEY set.",
    404: "No such digest, group or person.",
    409: "The digest is not in a state that allows it (already finished, not failed).",
    413: "The request body, or the photo in it, is larger than the server takes (FACEPIPE_MAX_IMAGE_BYTES, "
    "FACEPIPE_MAX_IMAGE_PIXELS).",
    422: "A field is missing or wrong; each one is named.",
    500: "The face store is damaged, or a clustering run failed: the message says what to do.",
    503: "Busy or not ready: the store is held by another process, the search queue is full, no daemon runs, or "
    "model weights are missing. Retry after the Retry-After header's seconds when it has one.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of an operation that may answer these error codes (401 and 422 are added: every
    keyed operation may answer them)."""
    return {code: {"model": ErrorBody, "description": ERROR_MEANINGS[code]} for code in sorted({401, 422, *codes})}


# ------------------------------------------------------------------------------------------------
# Digests
# ------------------------------------------------------------------------------------------------

DIGEST_EXAMPLE: dict[str, JsonValue] = {
    "local_dir_path": "/photos/wedding",
    "group_id": "wedding",
    "confidence": 0.5,
    "threads": 2,
}


class DigestBody(DigestChoices):
    """A digest of one source into one group: the seed's JSON, and facepipe's own knobs (the options
    every client shares are declared once, in DigestChoices)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [DIGEST_EXAMPLE]})

    local_dir_path: str | None = Field(
        None, max_length=MAX_PATH_LENGTH, description="A folder on the server, under FACEPIPE_ALLOWED_ROOTS."
    )
    s3_bucket: str | None = Field(None, description="An S3 bucket, with s3_prefix.")
    s3_prefix: str | None = Field(None, description="The key prefix within s3_bucket ('' for all of it).")
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    group_id: GroupId = Field(description="The group (event, album): letters, digits, '-', '_', '.'.")
    threads: int = Field(
        default_factory=default_workers, description="Parallel worker processes (1 to FACEPIPE_MAX_WORKERS)."
    )

    _threads_bounded = field_validator("threads")(valid_workers)

    @field_validator("local_dir_path")
    @classmethod
    def _under_an_allowed_root(cls, value: str | None) -> str | None:
        if not value:
            return value
        roots = settings.allowed_roots()
        if not roots:  # a network service: it reads no folder until its deployment names some
            raise ValueError("this server reads no local folder: set FACEPIPE_ALLOWED_ROOTS to the folders it may read")
        real = allowed_folder(value, roots)  # the digest's first step checks it again, as for any launch
        if not Path(real).is_dir():
            raise ValueError(f"{value!r} is not a folder")
        return real

    @model_validator(mode="after")
    def _one_source(self) -> "DigestBody":
        if bool(self.local_dir_path) == bool(self.s3_bucket):
            raise ValueError("give exactly one source: local_dir_path, or s3_bucket with s3_prefix")
        return self


# the digest request's source fields by the names DigestBody gives them
BODY_NAMES = {
    "path": "local_dir_path",
    "bucket": "s3_bucket",
    "prefix": "s3_prefix",
    "endpoint_url": "s3_endpoint_url",
    "region": "s3_region",
}

Status = Literal["queued", "processing", "completed", "failed", "canceled"]


class FailedImage(BaseModel):
    path: str = Field(description="Its path within the digest's source.")
    error: str


class Job(BaseModel):
    """A digest as the seed's clients know it (job_id to error), then everything else facepipe knows of it."""

    job_id: str = Field(description="`digest-` and the Dagster run id; the bare run id is accepted too.")
    status: Status
    progress: float = Field(description="Percent of the photos to digest that are done.")
    group_id: str | None
    source: str | None = Field(
        description="The folder or s3:// prefix digested; `uploads/{group_id}` for photos uploaded to the service."
    )
    confidence: float | None = Field(description="Faces detected below it were dropped.")
    threads: int | None = Field(description="Worker processes.")
    images_total: int | None = Field(description="Photos listed in the source.")
    images_processed: int = Field(description="Photos done, skipped (unchanged since a digest) included.")
    images_failed: int
    faces_processed: int = Field(description="Faces detected.")
    total_faces: int = Field(description="Faces stored by this digest.")
    start_time: str | None
    end_time: str | None
    error: str | None
    run_id: str = Field(description="The Dagster run's id (the Dagster UI shows the run under it).")
    profile: str | None
    entries_not_listed: int
    images_skipped: int | None
    images_with_faces_lost: int
    images_to_digest: int | None
    images_done: int
    faces_detected: int
    faces_dropped: int
    faces_too_small: int
    min_face_size: int | None
    faces_stored: int
    faces_in_group: int | None
    duration_seconds: float | None
    failed_images: list[FailedImage] = Field(description="Each photo that could not be digested, with its reason.")
    not_listed: list[dict[str, Any]] = Field(description="Entries of the source that were not listed, and why.")
    errors: list[str]
    face_ids: list[str] = Field(
        description="The first 100 ids of the faces it stored, once it has finished; "
        "the rest from GET /v1/get-digests/{job_id}/face-ids?offset={face_ids_next_offset}."
    )
    face_ids_next_offset: str | None = Field(description="Null when face_ids holds every one.")
    warning: str | None = Field(None, description="Set when the digest will wait (no daemon is running).")


class JobList(BaseModel):
    total_jobs: int = Field(description="How many digests the history holds for the filter (not the page's length).")
    jobs: list[Job]


class FaceIdsPage(BaseModel):
    job_id: str
    face_ids: list[str]
    next_offset: str | None = Field(description="Pass it back as `offset` for the next page; null on the last.")


# ------------------------------------------------------------------------------------------------
# Photos
# ------------------------------------------------------------------------------------------------

GroupPath = Annotated[GroupId, PathParam(description="The group: letters, digits, '-', '_', '.'.")]


class Photo(BaseModel):
    photo_id: str = Field(description="The photo's id in the group's ledger.")
    path: str = Field(description="Its path within the folder or s3:// prefix it was digested from.")
    status: Literal["done", "failed"]
    error: str | None = Field(description="Why it could not be digested, when it failed.")
    faces: int = Field(description="Faces found in it.")
    digested: str | None = Field(description="When it was digested (ISO 8601, UTC).")


class Photos(BaseModel):
    group_id: str
    profile: str
    photos: list[Photo]
    next_offset: str | None = Field(description="Pass it back as `offset` for the next page; null on the last.")


class Deleted(BaseModel):
    """What a delete removed from the group."""

    group_id: str
    faces: int
    photos: int = Field(description="Photos deleted (a tombstone keeps later digests from reading them again).")
    people: int = Field(description="People left without faces, removed.")
    files: int = Field(description="Uploaded photos removed from the server's disk.")
    face_ids: list[str] = Field(description="Every face deleted (empty for a whole group).")
    photo_paths: list[str] = Field(description="The photos that lost faces or were deleted, within their source.")


class Verified(BaseModel):
    verified: bool = Field(description="similarity >= threshold: the same person.")
    similarity: float = Field(description="Cosine similarity of the two faces' embeddings.")
    threshold: float = Field(description="The profile's search threshold.")
    profile: str


# ------------------------------------------------------------------------------------------------
# Search
# ------------------------------------------------------------------------------------------------


class FacialArea(BaseModel):
    x: int
    y: int
    w: int
    h: int


class QueryFace(BaseModel):
    facial_area: FacialArea
    confidence: float


class MatchedFace(BaseModel):
    face_id: str
    score: float = Field(description="Cosine similarity to the selfie's face.")
    facial_area: FacialArea
    face_index: int
    person_id: int | None
    query_face: int = Field(description="Which face of the selfie it matched (with all_faces).")


IN_SOURCE = "The photo's path within the folder or s3:// prefix it was digested from."


class MatchedPhoto(BaseModel):
    photo_id: str = Field(description="The photo's id (GET and DELETE /v1/groups/{group_id}/photos).")
    image_path: str = Field(description=IN_SOURCE)
    score: float = Field(description="Its best face's score.")
    faces: list[MatchedFace]


class SearchAnswer(BaseModel):
    group_id: str
    profile: str
    threshold: float
    query_faces: list[QueryFace]
    photos: list[MatchedPhoto] = Field(description="Best first.")


# ------------------------------------------------------------------------------------------------
# People
# ------------------------------------------------------------------------------------------------


class ClusterBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"group_id": "wedding"}]})
    group_id: GroupId
    profile: ProfileName = DEFAULT_PROFILE
    full: bool = Field(False, description="Re-cluster every face (names, merges and splits are kept).")


class NameBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Alice"}]})
    name: str | None = Field(description="The person's name; null or '' clears it.")


class MergeBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"keep": 1, "others": [4, 7]}]})
    keep: int = Field(description="The person who keeps the faces (and their name).")
    others: list[int] = Field(min_length=1, description="The people merged into `keep`.")


class SplitBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"face_ids": ["5b0c3d0e-6a86-5f53-9d4e-0b8f2f6f1c27"]}]})
    face_ids: list[str] = Field(min_length=1, description="Faces of the person to move to a new person.")


class Person(BaseModel):
    person_id: int
    name: str | None
    face_count: int
    representative_face_id: str
    representative_image_path: str = Field(description=IN_SOURCE)
    group_id: str
    profile: str
    updated: str | None = Field(None, description="When clustering last changed the person (ISO 8601, UTC).")


class PersonFace(BaseModel):
    face_id: str
    photo_id: str
    image_path: str = Field(description=IN_SOURCE)
    face_index: int
    facial_area: FacialArea
    pinned: bool = Field(description="Kept with this person by a merge or split through later clustering.")


class PersonWithFaces(Person):
    faces: list[PersonFace]


class People(BaseModel):
    group_id: str
    profile: str
    total_people: int
    people: list[Person] = Field(description="Most faces first.")


class Clustered(People):
    run_id: str = Field(description="The Dagster run of the people asset that clustered them.")


class ClusterQueued(BaseModel):
    run_id: str
    status: Status


# ------------------------------------------------------------------------------------------------
# One photo
# ------------------------------------------------------------------------------------------------


class FoundFace(BaseModel):
    face_index: int
    facial_area: FacialArea
    confidence: float
    landmarks: list[list[float]] = Field(description="(x, y) points: 5 for dlib's and YuNet's, more for others.")
    crop_jpeg_base64: str | None = Field(None, description="The face with a margin, when `crops` was asked for.")


class Faces(BaseModel):
    profile: str
    width: int
    height: int
    total_faces: int
    faces: list[FoundFace] = Field(description="Left to right.")


class EmbeddedFace(BaseModel):
    face_index: int
    facial_area: FacialArea
    confidence: float
    embedding: list[float] = Field(description="Unit length, as stored and searched.")


class Embeddings(BaseModel):
    profile: str
    model: str
    total_faces: int
    faces: list[EmbeddedFace]


class FeaturedFace(BaseModel):
    face_index: int
    facial_area: FacialArea
    confidence: float
    landmarks: list[list[float]]
    age: float | None = None
    dominant_gender: str | None = None
    gender: dict[str, float] | None = None
    dominant_emotion: str | None = None
    emotion: dict[str, float] | None = None


class Features(BaseModel):
    profile: str
    landmark_points: int | None
    total_faces: int
    faces: list[FeaturedFace]


# ------------------------------------------------------------------------------------------------
# Health
# ------------------------------------------------------------------------------------------------


class StoreCheck(BaseModel):
    up: bool
    kind: Literal["embedded", "server"]
    path: str | None = None
    exists: bool | None = None
    error: str | None = None


class InstanceCheck(BaseModel):
    up: bool
    daemon: bool | None = None
    error: str | None = None


class ModelCheck(BaseModel):
    up: bool
    missing: list[str] = Field(description="Weight files not in the weights folder.")


class Health(BaseModel):
    """Without the API key (when the server has one), the status only."""

    status: Literal["ok", "degraded"]
    store: StoreCheck | None = None
    instance: InstanceCheck | None = None
    models: dict[str, ModelCheck] | None = None
