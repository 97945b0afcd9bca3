"""The HTTP service (`facepipe serve`): the seed system's API, as a thin layer over facepipe.

Every digest is a Dagster run submitted to the instance's run queue (the daemon of `facepipe ui`
or of the deployment executes it; this process never runs one), every status is read from
Dagster's run storage and event log, every search and person from the face store.

Many clients share this process (README, "Many clients at once"):
- the embedded face store admits one process at a time: this one keeps it open between requests
  (store.StoreLease), one store operation at a time, and hands it over as soon as a digest step or
  `facepipe search` waits for it; a request waits for it up to FACEPIPE_STORE_WAIT_SECONDS, then
  answers 503 with Retry-After. No request holds it while a model runs;
- a search's selfie is embedded in a pool of worker processes (FACEPIPE_SEARCH_WORKERS; dlib's
  models are not thread-safe), at most FACEPIPE_SEARCH_QUEUE searches at once, one more is a 503;
- the other one-photo endpoints run the models in this process, holding `_MODEL_LOCK`;
- `/health` is answered from a check made at most every HEALTH_CACHE_SECONDS, that opens no store file.
"""

import asyncio
import base64
import json
import multiprocessing
import secrets
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import cv2
from dagster import DagsterEventType
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facepipe import settings
from facepipe.clients.local import (
    LaunchError,
    cancel_digest,
    daemon_is_running,
    instance_for_digests,
    start_digest,
    start_people,
    start_retry,
)
from facepipe.defs.partitions import GROUPS
from facepipe.domain.people import (
    PersonNotFound,
    list_people,
    merge_people,
    name_person,
    person_with_faces,
    split_person,
)
from facepipe.domain.request import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONFIDENCE,
    MAX_PATH_LENGTH,
    GroupId,
    ProfileName,
    allowed_folder,
    default_workers,
    digest_request,
    valid_workers,
)
from facepipe.domain.search import SearchError, group_profile, group_profiles, matching_photos, selfie_faces_in
from facepipe.engine.faces import faces_in_image
from facepipe.engine.images import decode_image
from facepipe.engine.listing import ImageError, too_large
from facepipe.engine.presets import DEFAULT_MIN_FACE_SIZE, DEFAULT_PRESET, Preset
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES, load_profile
from facepipe.engine.weights import ATTRIBUTE_WEIGHTS, MissingWeightsError, missing_attribute_weights, weights_folder
from facepipe.platform.history import STATUS_NAMES, DigestNotFound, count_digests, digest_runs, digest_summary
from facepipe.platform.worker_check import WorkerConfigError
from facepipe.store import (
    MIN_FREE_BYTES,
    StoreBusy,
    StoreDamaged,
    StoreLease,
    StoreNotWritable,
    StoreUnavailable,
    free_bytes,
    lease_from_settings,
    open_store_from_settings,
)

RETRY_AFTER_SECONDS = 10
CLUSTER_WAIT_SECONDS = 300.0  # POST /cluster-faces answers 202 with the run id past this
UPLOAD_CHUNK = 1 << 20

HEALTH_CACHE_SECONDS = 5.0

_MODEL_LOCK = threading.Lock()  # dlib's detector, shape predictor and ResNet are not thread-safe


app = FastAPI(
    title="facepipe",
    summary="Digest photo collections into searchable, clustered faces; search them with a selfie.",
    description="Digests are Dagster runs on the instance's run queue; faces and people live in the face store.",
)

FORM_OVERHEAD = 1 << 20  # a multipart body's other fields and boundaries, beside the photo
MAX_JSON_BYTES = 1 << 20  # a JSON body: a digest request is under 10 kB, a split's face ids a few 100 kB


class BoundedBody:
    """Refuse a request body larger than it may be (a photo upload: FACEPIPE_MAX_IMAGE_BYTES and its
    form; anything else: MAX_JSON_BYTES) before it is read: at once by its Content-Length, and else
    (chunked, or a length that lies) by counting the bytes as they arrive, stopping at the budget, so
    no body is ever held or parsed past it. Each upload is bounded again as it is read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        upload = headers.get(b"content-type", b"").startswith(b"multipart/")
        budget = settings.max_image_bytes() + FORM_OVERHEAD if upload else MAX_JSON_BYTES
        what = "a photo upload (FACEPIPE_MAX_IMAGE_BYTES)" if upload else "a request that is not a photo upload"

        def refused(size: str = "") -> str:
            return f"refused: the request is {size}more than the {budget:,} bytes {what} may take"

        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > budget:
            await JSONResponse({"detail": refused(f"{int(length):,} bytes, ")}, status_code=413)(scope, receive, send)
            return None
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > budget:  # FastAPI answers an HTTPException raised while it reads the body
                raise HTTPException(413, refused())
            return message

        return await self.app(scope, counted, send)


app.add_middleware(BoundedBody)


@app.exception_handler(RequestValidationError)
async def _bad_request(request, err: RequestValidationError):
    """422 naming each bad field, in a sentence (no pydantic internals)."""
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {"loc": list(e["loc"]), "msg": str(e["msg"]).removeprefix("Value error, "), "type": e["type"]}
                for e in err.errors()
            ]
        },
    )


@app.exception_handler(StoreDamaged)
async def _damaged_store(request, err: StoreDamaged):
    """A damaged face store: 500 with the message that names it and what to do, never an empty answer."""
    return JSONResponse(status_code=500, content={"detail": str(err)})


@app.exception_handler(StoreNotWritable)
async def _unwritable_store(request, err: StoreNotWritable):
    """A face store on a full or read-only disk: 503 with the message that names it and what to do."""
    return JSONResponse(status_code=503, content={"detail": str(err)})


_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Required when the server has FACEPIPE_API_KEY set."
)


def require_key(given: Annotated[str | None, Depends(_key_header)]) -> None:
    expected = settings.api_key()
    if expected and not (given and secrets.compare_digest(given.encode(), expected.encode())):
        raise HTTPException(
            401, "missing or wrong API key: send it in the X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"}
        )


KEY = [Depends(require_key)]


# ------------------------------------------------------------------------------------------------
# Shared helpers: the store, the instance, uploads
# ------------------------------------------------------------------------------------------------


def _busy(message: str) -> HTTPException:
    return HTTPException(
        503, f"{message}; retry in {RETRY_AFTER_SECONDS} s", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


_lease: StoreLease | None = None
_lease_made = threading.Lock()


@contextmanager
def _store():
    """The face store, for one store operation of a request (this process keeps it open between
    them, see store.StoreLease); 503 with Retry-After when another process holds it past
    FACEPIPE_STORE_WAIT_SECONDS, or a Qdrant server cannot be reached."""
    global _lease
    with _lease_made:
        if _lease is None:
            _lease = lease_from_settings()
    try:
        with _lease.use(settings.store_wait_seconds()) as store:
            yield store
    except (StoreBusy, StoreUnavailable) as err:
        raise _busy(str(err)) from None


def _profile_of(store, group_id: str, profile: str | None) -> str:
    profiles = group_profiles(store, group_id)
    if not profiles:
        raise HTTPException(404, f"unknown group {group_id!r}: it has no faces; digest photos into it first")
    if profile and profile not in profiles:
        raise HTTPException(404, f"group {group_id!r} has no faces with profile {profile!r} (it has {profiles})")
    return profile or profiles[0]


_instance_made = threading.Lock()
_the_instance = None


def _instance():
    """The Dagster instance, made once per process (making one reads its folder and its yaml)."""
    global _the_instance
    with _instance_made:
        if _the_instance is None:
            _the_instance = instance_for_digests()
    return _the_instance


def _field_errors(err: ValidationError, prefix: str = "body") -> RequestValidationError:
    """pydantic's errors as FastAPI's own 422, each naming its field."""
    return RequestValidationError(
        [
            {"type": e["type"], "loc": (prefix, *e["loc"]), "msg": e["msg"].removeprefix("Value error, ")}
            for e in err.errors(include_url=False, include_context=False, include_input=False)
        ]
    )


async def _upload_bytes(file: UploadFile) -> bytes:
    """The upload's bytes, refused past the byte budget digests use (FACEPIPE_MAX_IMAGE_BYTES)."""
    budget = settings.max_image_bytes()
    chunks, size = [], 0
    while chunk := await file.read(UPLOAD_CHUNK):
        size += len(chunk)
        if size > budget:
            raise HTTPException(413, f"{file.filename}: {too_large(size, budget, 'upload')}")
        chunks.append(chunk)
    return b"".join(chunks)


def _decoded(data: bytes, name: str | None):
    """Decoded by the digests' own code: the pixel budget and the formats are theirs."""
    try:
        return decode_image(data)
    except ImageError as err:
        status = 413 if str(err).startswith("refused") else 422
        raise HTTPException(status, f"file {name!r}: {err}") from None


def _faces(image, profile_name: str, confidence: float, min_face_size: int):
    try:
        with _MODEL_LOCK:
            return faces_in_image(load_profile(profile_name), image, confidence, min_face_size)[0]
    except MissingWeightsError as err:
        raise HTTPException(503, str(err)) from None


def _face_fields(face) -> dict:
    """What every one-photo endpoint says of a face: index, box, confidence, landmarks."""
    return {
        "face_index": face.face_index,
        "facial_area": _area(face.box),
        "confidence": face.confidence,
        "landmarks": [[round(x, 1), round(y, 1)] for x, y in face.landmarks],
    }


def _area(box) -> dict:
    return dict(zip("xywh", (int(v) for v in box)))


def _crop_b64(image, box, margin: float = 0.25) -> str:
    """The face with a margin, as a base64 JPEG."""
    x, y, w, h = box
    pad_x, pad_y = int(w * margin), int(h * margin)
    crop = image[max(0, y - pad_y) : y + h + pad_y, max(0, x - pad_x) : x + w + pad_x]
    return base64.b64encode(cv2.imencode(".jpg", crop)[1].tobytes()).decode()


def _require_daemon(instance) -> None:
    if not daemon_is_running(instance):
        raise HTTPException(
            503,
            "no Dagster daemon is running on this instance, so a queued run would wait: "
            "start one with `facepipe ui` (webserver and daemon) or `dagster-daemon run`",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


# ------------------------------------------------------------------------------------------------
# Digests
# ------------------------------------------------------------------------------------------------


class DigestBody(BaseModel):
    """A digest of one source into one group: the seed's JSON, and facepipe's own knobs."""

    model_config = ConfigDict(extra="forbid")

    local_dir_path: str | None = Field(
        None, max_length=MAX_PATH_LENGTH, description="A folder on the server, under FACEPIPE_ALLOWED_ROOTS."
    )
    s3_bucket: str | None = Field(None, description="An S3 bucket, with s3_prefix.")
    s3_prefix: str | None = Field(None, description="The key prefix within s3_bucket ('' for all of it).")
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    group_id: GroupId = Field(description="The group (event, album): letters, digits, '-', '_', '.'.")
    confidence: float = Field(DEFAULT_CONFIDENCE, ge=0.0, le=1.0, description="Faces detected below this are dropped.")
    threads: int = Field(
        default_factory=default_workers, description="Parallel worker processes (1 to FACEPIPE_MAX_WORKERS)."
    )
    profile: ProfileName = DEFAULT_PROFILE
    preset: Preset = DEFAULT_PRESET
    min_face_size: int | None = Field(None, ge=8)
    redigest: bool = False
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=1)

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


# the request's source fields by the names this body gives them
BODY_NAMES = {
    "path": "local_dir_path",
    "bucket": "s3_bucket",
    "prefix": "s3_prefix",
    "endpoint_url": "s3_endpoint_url",
    "region": "s3_region",
}


def _renamed(err: RequestValidationError) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": tuple(BODY_NAMES.get(part, part) for part in e["loc"])} for e in err.errors()]
    )


def _job(summary: dict, run_config: dict | None) -> dict:
    """A digest as the seed's clients know it, then everything else facepipe knows of it."""
    request = (
        (run_config or {}).get("ops", {}).get("digest", {}).get("ops", {}).get("list_images", {}).get("config", {})
    )
    job = {
        "job_id": summary["run_id"],
        "status": summary["status"],
        "progress": summary["progress_percent"],
        "group_id": summary["group_id"],
        "source": summary["source"],
        "confidence": request.get("confidence"),
        "threads": summary["workers"],
        "images_total": summary["images_listed"],
        "images_processed": (summary["images_skipped"] or 0) + summary["images_done"],
        "images_failed": summary["images_failed"],
        "faces_processed": summary["faces_detected"],
        "total_faces": summary["faces_stored"],
        "start_time": summary["start_time"],
        "end_time": summary["end_time"],
        "error": "; ".join(summary["errors"]) or None,
    }
    return {**job, **{k: v for k, v in summary.items() if k not in ("run_id", "progress_percent", "workers")}}


def _job_by_id(instance, job_id: str) -> dict:
    try:
        summary = digest_summary(instance, job_id)
    except DigestNotFound as err:
        raise HTTPException(404, str(err)) from None
    return _job(summary, instance.get_run_by_id(job_id).run_config)


@app.post("/digest", status_code=202, dependencies=KEY, tags=["digests"])
def post_digest(body: DigestBody) -> dict:
    """Queue a digest (a Dagster run); poll GET /get-digests/{job_id} for its progress."""
    if body.local_dir_path:
        path = body.local_dir_path
    else:
        path = f"s3://{body.s3_bucket}/{body.s3_prefix or ''}"
    try:
        request = digest_request(
            path,
            body.group_id,
            s3_endpoint_url=body.s3_endpoint_url,
            s3_region=body.s3_region,
            confidence=body.confidence,
            profile=body.profile,
            redigest=body.redigest,
            chunk_size=body.chunk_size,
            preset=body.preset,
            min_face_size=body.min_face_size,
        )
    except ValidationError as err:
        raise _renamed(_field_errors(err)) from None
    except ValueError as err:  # an s3 path the parser refuses
        raise HTTPException(422, str(err)) from None
    instance = _instance()
    try:
        job_id = start_digest(request, workers=body.threads, instance=instance)
    except WorkerConfigError as err:  # no Celery worker would run it, or one would split the store
        raise HTTPException(503, str(err)) from None
    except LaunchError as err:  # the code server did not answer in time: a busy machine
        raise _busy(str(err)) from None
    answer = _job_by_id(instance, job_id)
    if not daemon_is_running(instance):
        answer["warning"] = (
            "no Dagster daemon is running on this instance: the digest waits in the queue until "
            "one starts (`facepipe ui` or `dagster-daemon run`)"
        )
    return answer


Status = Literal["queued", "processing", "completed", "failed", "canceled"]


@app.get("/get-digests", dependencies=KEY, tags=["digests"])
def get_digests(
    group_id: str | None = None,
    status: Status | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict:
    """Digests, newest first, filtered by group, status and creation time (ISO 8601; UTC unless it says)."""
    since, until = (t.replace(tzinfo=UTC) if t and t.tzinfo is None else t for t in (since, until))
    instance = _instance()
    # a page costs the page: each finished run's summary is kept in its tags (history.digest_runs)
    runs = digest_runs(instance, group_id, status, since, until, limit)
    jobs = [_job(summary, dict(run.run_config)) for summary, run in runs]
    return {"total_jobs": count_digests(instance, group_id, status, since, until), "jobs": jobs}


@app.get("/get-digests/{job_id}", dependencies=KEY, tags=["digests"])
def get_digest(job_id: str) -> dict:
    """One digest: status, progress, counts, times and errors (each failed photo with its reason)."""
    return _job_by_id(_instance(), job_id)


@app.get("/get-digests/{job_id}/face-ids", dependencies=KEY, tags=["digests"])
def get_digest_face_ids(
    job_id: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: str | None = None
) -> dict:
    """The ids of the faces the digest stored, a page at a time: pass `next_offset` back as `offset`."""
    offset = offset or None
    try:
        offset = offset and str(uuid.UUID(offset))
    except ValueError:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "offset"),
                    "msg": "offset must be a face id: the next_offset of the page before",
                }
            ]
        ) from None
    instance = _instance()
    try:
        summary = digest_summary(instance, job_id)
    except DigestNotFound as err:
        raise HTTPException(404, str(err)) from None
    if not summary["profile"] or not summary["group_id"]:
        return {"job_id": job_id, "face_ids": [], "next_offset": None}
    with _store() as store:
        ids, next_offset = store.face_ids_of_run(summary["group_id"], summary["profile"], job_id, limit, offset)
    return {"job_id": job_id, "face_ids": ids, "next_offset": next_offset}


@app.post("/digest/{job_id}/cancel", dependencies=KEY, tags=["digests"])
def post_cancel(job_id: str) -> dict:
    """Cancel a queued or running digest; the faces it stored stay, a later digest does the rest."""
    instance = _instance()
    try:
        cancel_digest(instance, job_id)
    except DigestNotFound as err:
        raise HTTPException(404, str(err)) from None
    except (ValueError, RuntimeError) as err:
        raise HTTPException(409, str(err)) from None
    return _job_by_id(instance, job_id)


@app.post("/digest/{job_id}/retry", status_code=202, dependencies=KEY, tags=["digests"])
def post_retry(job_id: str) -> dict:
    """Queue a re-execution of a failed or canceled digest: the chunks that succeeded are not redone."""
    instance = _instance()
    try:
        new_id = start_retry(job_id, instance)
    except DigestNotFound as err:
        raise HTTPException(404, str(err)) from None
    except ValueError as err:
        raise HTTPException(409, str(err)) from None
    return _job_by_id(instance, new_id)


# ------------------------------------------------------------------------------------------------
# Search and people
# ------------------------------------------------------------------------------------------------


@app.post("/search-face", dependencies=KEY, tags=["search"])
async def post_search_face(
    file: Annotated[UploadFile, File(description="The selfie.")],
    group_id: Annotated[str, Form()],
    top_k: Annotated[int, Form(ge=1, le=10000)] = 100,
    threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    profile: Annotated[str | None, Form()] = None,
    all_faces: Annotated[bool, Form()] = False,
) -> dict:
    """The group's photos showing the selfie's person (its largest face), best first, with scores,
    boxes, face ids and person ids. `threshold` defaults to the profile's calibrated one."""
    data = await _upload_bytes(file)
    await run_in_threadpool(_decoded, data, file.filename)  # a bad upload is told apart from a photo with no face
    name = repr(file.filename)
    # embedded before the store is touched, with the profile asked for, else the default: a group
    # digested with another profile is embedded again
    guessed = profile or DEFAULT_PROFILE
    try:
        with _search_slot():
            faces = await _embedded(data, name, guessed, all_faces)

            def match():
                with _store() as store:
                    chosen = group_profile(store, group_id, profile)
                    if chosen != guessed:
                        return chosen, None
                    return chosen, matching_photos(store, group_id, chosen, faces, top_k, threshold)

            chosen, result = await run_in_threadpool(match)
            if result is None:
                faces = await _embedded(data, name, chosen, all_faces)
                result = await run_in_threadpool(_matching, group_id, chosen, faces, top_k, threshold)
    except SearchError as err:
        raise HTTPException(404 if "unknown group" in str(err) else 400, str(err)) from None
    except MissingWeightsError as err:
        raise HTTPException(503, str(err)) from None
    return result.to_dict()


def _matching(group_id: str, profile: str, faces: list, top_k: int, threshold: float | None):
    with _store() as store:
        return matching_photos(store, group_id, profile, faces, top_k, threshold)


_search_pool: ProcessPoolExecutor | None = None
_search_slots: threading.BoundedSemaphore | None = None
_search_made = threading.Lock()


@contextmanager
def _search_slot():
    """One of FACEPIPE_SEARCH_QUEUE places for a search; 503 with Retry-After when none is free."""
    global _search_slots
    with _search_made:
        if _search_slots is None:
            _search_slots = threading.BoundedSemaphore(settings.search_queue())
    if not _search_slots.acquire(blocking=False):
        raise _busy(f"{settings.search_queue()} searches are being answered (FACEPIPE_SEARCH_QUEUE)")
    try:
        yield
    finally:
        _search_slots.release()


async def _embedded(data: bytes, name: str, profile: str, all_faces: bool) -> list:
    """The selfie's faces, found and embedded by a worker process of the search pool."""
    global _search_pool
    with _search_made:
        if _search_pool is None:
            # spawned, not forked from this threaded process; each worker loads the default
            # profile's models once, before its first selfie
            _search_pool = ProcessPoolExecutor(
                settings.search_workers(),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=load_profile,
                initargs=(DEFAULT_PROFILE,),
            )
        pool = _search_pool
    try:
        return await asyncio.wrap_future(pool.submit(selfie_faces_in, data, name, profile, all_faces))
    except BrokenProcessPool:  # a worker died (out of memory?): a new pool for the next search
        with _search_made:
            if _search_pool is pool:
                _search_pool = None
        raise _busy("a search worker process died") from None


class ClusterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group_id: GroupId
    profile: ProfileName = DEFAULT_PROFILE
    full: bool = Field(False, description="Re-cluster every face (names, merges and splits are kept).")


def _people_of(group_id: str, profile: str | None) -> dict:
    with _store() as store:
        profile = _profile_of(store, group_id, profile)
        people = list_people(store, group_id, profile)
    return {"group_id": group_id, "profile": profile, "total_people": len(people), "people": people}


@app.post("/cluster-faces", dependencies=KEY, tags=["people"], response_model=None)
def post_cluster_faces(body: ClusterBody) -> dict | JSONResponse:
    """Cluster the group's faces into people: a run of the `people` asset on the run queue, waited
    for; the people, most faces first. Past CLUSTER_WAIT_SECONDS (a digest ahead in the queue), 202
    with the run id."""
    instance = _instance()
    if not instance.has_dynamic_partition(GROUPS, body.group_id):
        raise HTTPException(404, f"unknown group {body.group_id!r}: digest photos into it first")
    _require_daemon(instance)
    run_id = start_people(body.group_id, body.profile, body.full, instance)
    deadline = time.monotonic() + CLUSTER_WAIT_SECONDS
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.is_finished:
            break
        time.sleep(1)
    else:
        return JSONResponse({"run_id": run_id, "status": STATUS_NAMES.get(run.status)}, status_code=202)
    if STATUS_NAMES.get(run.status) != "completed":
        failures = [
            e.dagster_event.step_failure_data.error.message.strip()
            for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
            if e.dagster_event.step_failure_data.error
        ]
        raise HTTPException(
            500,
            f"clustering run {run_id} {STATUS_NAMES.get(run.status)}: "
            f"{failures[0] if failures else 'see the run in the Dagster UI'}",
        )
    return {"run_id": run_id, **_people_of(body.group_id, body.profile)}


@app.get("/groups/{group_id}/people", dependencies=KEY, tags=["people"])
def get_people(group_id: str, profile: str | None = None) -> dict:
    """The group's people, most faces first (POST /cluster-faces places new faces first)."""
    return _people_of(group_id, profile)


def _person_answer(store, group_id: str, person_id: int, profile: str) -> dict:
    person = person_with_faces(store, group_id, person_id, profile)
    del person["records"]
    return person


@contextmanager
def _person_errors():
    try:
        yield
    except PersonNotFound as err:
        raise HTTPException(404, str(err)) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


@app.get("/groups/{group_id}/people/{person_id}", dependencies=KEY, tags=["people"])
def get_one_person(group_id: str, person_id: int, profile: str | None = None) -> dict:
    """One person: name, face count and every face (id, photo, box)."""
    with _store() as store, _person_errors():
        return _person_answer(store, group_id, person_id, _profile_of(store, group_id, profile))


class NameBody(BaseModel):
    name: str | None = Field(description="The person's name; null or '' clears it.")


@app.post("/groups/{group_id}/people/{person_id}/name", dependencies=KEY, tags=["people"])
def post_name(group_id: str, person_id: int, body: NameBody, profile: str | None = None) -> dict:
    with _store() as store, _person_errors():
        return name_person(store, group_id, person_id, body.name, _profile_of(store, group_id, profile))


class MergeBody(BaseModel):
    keep: int = Field(description="The person who keeps the faces (and their name).")
    others: list[int] = Field(min_length=1, description="The people merged into `keep`.")


@app.post("/groups/{group_id}/people/merge", dependencies=KEY, tags=["people"])
def post_merge(group_id: str, body: MergeBody, profile: str | None = None) -> dict:
    """Merge `others` into `keep`; their faces stay with `keep` through later clustering."""
    with _store() as store, _person_errors():
        return merge_people(store, group_id, body.keep, body.others, _profile_of(store, group_id, profile))


class SplitBody(BaseModel):
    face_ids: list[str] = Field(min_length=1, description="Faces of the person to move to a new person.")


@app.post("/groups/{group_id}/people/{person_id}/split", dependencies=KEY, tags=["people"])
def post_split(group_id: str, person_id: int, body: SplitBody, profile: str | None = None) -> dict:
    """Move some faces of a person out to a new person; the new person."""
    with _store() as store, _person_errors():
        return split_person(store, group_id, person_id, body.face_ids, _profile_of(store, group_id, profile))


# ------------------------------------------------------------------------------------------------
# One photo: faces, embeddings, features
# ------------------------------------------------------------------------------------------------


async def _photo_faces(file: UploadFile, profile: str, confidence: float, min_face_size: int):
    data = await _upload_bytes(file)
    image = await run_in_threadpool(_decoded, data, file.filename)
    faces = await run_in_threadpool(_faces, image, profile, confidence, min_face_size)
    return image, faces


CONFIDENCE = Annotated[float, Form(ge=0.0, le=1.0, description="Faces detected below this are left out.")]
MIN_FACE = Annotated[int, Form(ge=8, description="The narrowest face to find, in the photo's pixels.")]
UPLOAD = Annotated[UploadFile, File(description="One photo (JPEG, PNG, WebP, ...).")]


@app.post("/get-faces", dependencies=KEY, tags=["one photo"])
async def post_get_faces(
    file: UPLOAD,
    profile: Annotated[ProfileName, Form()] = DEFAULT_PROFILE,
    confidence: CONFIDENCE = DEFAULT_CONFIDENCE,
    min_face_size: MIN_FACE = DEFAULT_MIN_FACE_SIZE,
    crops: Annotated[bool, Form(description="Add each face's crop, a base64 JPEG.")] = False,
) -> dict:
    """The photo's faces, left to right: box, confidence, landmarks (and a crop on request)."""
    image, faces = await _photo_faces(file, profile, confidence, min_face_size)
    answer = []
    for f in faces:
        face = _face_fields(f)
        if crops:
            face["crop_jpeg_base64"] = _crop_b64(image, f.box)
        answer.append(face)
    return {
        "profile": profile,
        "width": image.shape[1],
        "height": image.shape[0],
        "total_faces": len(answer),
        "faces": answer,
    }


@app.post("/get-embedding", dependencies=KEY, tags=["one photo"])
async def post_get_embedding(
    file: UPLOAD,
    profile: Annotated[ProfileName, Form()] = DEFAULT_PROFILE,
    confidence: CONFIDENCE = DEFAULT_CONFIDENCE,
    min_face_size: MIN_FACE = DEFAULT_MIN_FACE_SIZE,
) -> dict:
    """Each face's embedding (unit length, as stored and searched), with the profile and model."""
    _, faces = await _photo_faces(file, profile, confidence, min_face_size)
    return {
        "profile": profile,
        "model": PROFILES[profile].model_name,
        "total_faces": len(faces),
        "faces": [
            {
                "face_index": f.face_index,
                "facial_area": _area(f.box),
                "confidence": f.confidence,
                "embedding": [round(float(v), 6) for v in f.embedding],
            }
            for f in faces
        ],
    }


def _attributes_of(image, box, attributes: list[str]) -> dict:
    from deepface import DeepFace

    x, y, w, h = box
    with _MODEL_LOCK:
        found = DeepFace.analyze(
            image[y : y + h, x : x + w],
            actions=attributes,
            detector_backend="skip",
            enforce_detection=False,
            silent=True,
        )[0]
    keep = {"age": ("age",), "gender": ("dominant_gender", "gender"), "emotion": ("dominant_emotion", "emotion")}
    # deepface's numbers are numpy scalars
    return json.loads(json.dumps({k: found[k] for a in attributes for k in keep[a] if k in found}, default=float))


@app.post("/get-features", dependencies=KEY, tags=["one photo"])
async def post_get_features(
    file: UPLOAD,
    profile: Annotated[ProfileName, Form()] = DEFAULT_PROFILE,
    confidence: CONFIDENCE = DEFAULT_CONFIDENCE,
    min_face_size: MIN_FACE = DEFAULT_MIN_FACE_SIZE,
    attributes: Annotated[
        str, Form(description="Comma-separated: age, gender, emotion; none for the landmarks only.")
    ] = "age,gender,emotion",
) -> dict:
    """Each face's landmarks (every profile) and deepface's age, gender and emotion. Without their
    weights: 503 naming the missing files and the folder for them."""
    wanted = [a.strip() for a in attributes.split(",") if a.strip() and a.strip() != "none"]
    unknown = [a for a in wanted if a not in ATTRIBUTE_WEIGHTS]
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "attributes"),
                    "msg": f"unknown attributes {unknown}: choose among {list(ATTRIBUTE_WEIGHTS)}",
                }
            ]
        )
    missing = missing_attribute_weights(wanted)
    if missing:
        raise HTTPException(503, str(missing))
    image, faces = await _photo_faces(file, profile, confidence, min_face_size)
    answer = []
    for f in faces:
        face = _face_fields(f)
        if wanted:
            face.update(await run_in_threadpool(_attributes_of, image, f.box, wanted))
        answer.append(face)
    return {
        "profile": profile,
        "landmark_points": len(faces[0].landmarks) if faces else None,
        "total_faces": len(answer),
        "faces": answer,
    }


# ------------------------------------------------------------------------------------------------
# Health
# ------------------------------------------------------------------------------------------------


_health: tuple[float, dict] | None = None
_health_made = threading.Lock()


@app.get("/health", tags=["health"])
def get_health(given: Annotated[str | None, Depends(_key_header)]):
    """ "ok" or "degraded" (503): the store and the instance are up. With the API key (when the
    server has one): each check, the store, the instance (and its daemon) and the models. Checked
    at most every HEALTH_CACHE_SECONDS, without opening the store: answered from memory meanwhile."""
    global _health
    with _health_made:
        if _health is None or time.monotonic() - _health[0] > HEALTH_CACHE_SECONDS:
            _health = (time.monotonic(), _health_checks())
        checks = _health[1]
    expected = settings.api_key()
    keyed = not expected or (given and secrets.compare_digest(given.encode(), expected.encode()))
    answer = checks if keyed else {"status": checks["status"]}
    return JSONResponse(answer, status_code=200 if checks["status"] == "ok" else 503)


def _health_checks() -> dict:
    checks: dict = {}
    if settings.qdrant_url():  # a server: asked once per check
        try:
            with open_store_from_settings():
                pass
            checks["store"] = {"up": True, "kind": "server"}
        except Exception as err:
            checks["store"] = {"up": False, "kind": "server", "error": str(err)}
    else:  # embedded: its folder and its disk's room, no file of it opened (a digest may hold it)
        root = settings.qdrant_path()
        free = free_bytes(root)
        if free is not None and free < MIN_FREE_BYTES:
            error = f"{free / 2**20:.1f} MiB free on the disk of {root}, under the {MIN_FREE_BYTES // 2**20} MiB needed"
            checks["store"] = {"up": False, "kind": "embedded", "error": error}
        else:
            checks["store"] = {"up": True, "kind": "embedded", "path": str(root), "exists": root.is_dir()}
    try:
        instance = _instance()
        checks["instance"] = {"up": True, "daemon": daemon_is_running(instance)}
    except Exception as err:
        checks["instance"] = {"up": False, "error": f"{type(err).__name__}: {err}"}
    folder = weights_folder()
    # a weight without a URL ships in a PyPI package (dlib's) and is linked on first use
    missing = {
        name: [w.file for w in spec.weights if w.url and not (folder / w.file).is_file()]
        for name, spec in PROFILES.items()
    }
    missing["deepface-attributes"] = [f for _, f in ATTRIBUTE_WEIGHTS.values() if not (folder / f).is_file()]
    checks["models"] = {name: {"up": not files, "missing": files} for name, files in missing.items()}
    up = checks["store"]["up"] and checks["instance"]["up"]
    return {"status": "ok" if up else "degraded", **checks}


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    # one process: the embedded store admits one (held by its StoreLease); searches' models run in
    # its pool of worker processes
    uvicorn.run(app, host=host, port=port, workers=1)
