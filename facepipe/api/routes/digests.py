"""Digests: queue one (a Dagster run on the instance's run queue), list them, follow one, page
through the faces it stored, cancel and retry. Every status is read from Dagster's run storage and
event log."""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from dagster import DagsterInstance
from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from facepipe import settings
from facepipe.api.dependencies import KEY, CodeServerDep, Instance, Store, busy
from facepipe.api.paths import path_in_source
from facepipe.api.schemas import BODY_NAMES, DigestBody, FaceIdsPage, Job, JobList, Status, errors
from facepipe.clients.local import CodeServer, LaunchError, cancel_digest, daemon_is_running, start_digest, start_retry
from facepipe.domain.request import DigestChoices, DigestRequest, digest_request, list_images_config
from facepipe.platform.history import (
    DigestNotFound,
    count_digests,
    digest_runs,
    digest_summary,
    job_id_of,
    run_id_of,
    seed_fields,
)
from facepipe.platform.worker_check import WorkerConfigError

router = APIRouter(tags=["digests"], dependencies=KEY)

FACE_IDS_IN_JOB = 100  # the rest: GET /get-digests/{job_id}/face-ids


def field_errors(err: ValidationError, prefix: str = "body") -> RequestValidationError:
    """pydantic's errors as FastAPI's own 422, each naming its field by the body's name for it."""
    return RequestValidationError(
        [
            {
                "type": e["type"],
                "loc": (prefix, *(BODY_NAMES.get(str(part), part) for part in e["loc"])),
                "msg": e["msg"].removeprefix("Value error, "),
            }
            for e in err.errors(include_url=False, include_context=False, include_input=False)
        ]
    )


def page_offset(offset: str | None, what: str) -> str | None:
    """A page's `offset` as the store takes it (an id), or a 422 naming it."""
    try:
        return str(uuid.UUID(offset)) if offset else None
    except ValueError:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "offset"),
                    "msg": f"offset must be {what}: the next_offset of the page before",
                }
            ]
        ) from None


def job(summary: dict[str, Any], run_config: dict[str, Any] | None) -> dict[str, Any]:
    """A digest as the seed's clients know it, then everything else facepipe knows of it."""
    seed = seed_fields(summary)
    if seed["confidence"] is None:  # a run launched before its confidence was a tag
        seed["confidence"] = list_images_config(run_config or {}).get("confidence")
    rest = {k: v for k, v in summary.items() if k not in ("progress_percent", "workers")}
    # each photo by its path within the source, not where the server keeps it
    for key in ("failed_images", "not_listed"):
        rest[key] = [{**entry, "path": path_in_source(entry["path"], summary["source"])} for entry in rest[key]]
    answer = {**seed, **rest, "face_ids": [], "face_ids_next_offset": None}
    # the photos uploaded to the service: their folder by its name under $FACEPIPE_HOME
    uploads = str(settings.uploads_dir())
    if answer["source"] and answer["source"].startswith(uploads + "/"):
        answer["source"] = "uploads/" + answer["source"].removeprefix(uploads + "/")
    return answer


def with_face_ids(answer: dict[str, Any], store: Store) -> dict[str, Any]:
    """The job with the first FACE_IDS_IN_JOB ids of the faces it stored, once it has finished (a
    running digest's store step may hold the store: a poll never waits for it)."""
    if answer["status"] in ("completed", "failed", "canceled") and answer["faces_stored"] and answer["profile"]:
        with store() as faces:
            answer["face_ids"], answer["face_ids_next_offset"] = faces.face_ids_of_run(
                answer["group_id"], answer["profile"], answer["run_id"], FACE_IDS_IN_JOB
            )
    return answer


def job_by_id(instance: DagsterInstance, job_id: str) -> dict[str, Any]:
    run_id = run_id_of(job_id)
    try:
        summary = digest_summary(instance, run_id)
    except DigestNotFound as err:
        raise HTTPException(404, str(err)) from None
    run = instance.get_run_by_id(run_id)
    return job(summary, dict(run.run_config) if run else None)


@router.post(
    "/digest",
    status_code=202,
    response_model=Job,
    response_model_exclude_unset=True,
    responses=errors(413, 503),
)
def post_digest(body: DigestBody, instance: Instance, code_server: CodeServerDep) -> dict[str, Any]:
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
            **body.model_dump(include=set(DigestChoices.model_fields)),
        )
    except ValidationError as err:
        raise field_errors(err) from None
    except ValueError as err:  # an s3 path the parser refuses
        raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(err)}]) from None
    return queued_job(request, body.threads, instance, code_server)


def queued_job(
    request: DigestRequest, workers: int, instance: DagsterInstance, code_server: CodeServer
) -> dict[str, Any]:
    """The digest queued, as a job; with a warning when no daemon would start it."""
    try:
        run_id = start_digest(request, workers, instance, code_server)
    except WorkerConfigError as err:  # no Celery worker would run it, or one would split the store
        raise HTTPException(503, str(err)) from None
    except LaunchError as err:  # the code server did not answer in time: a busy machine
        raise busy(str(err)) from None
    answer = job_by_id(instance, run_id)
    if not daemon_is_running(instance):
        answer["warning"] = (
            "no Dagster daemon is running on this instance: the digest waits in the queue until "
            "one starts (`facepipe ui` or `dagster-daemon run`)"
        )
    return answer


@router.get("/get-digests", response_model=JobList, responses=errors(503))
def get_digests(
    instance: Instance,
    store: Store,
    group_id: str | None = None,
    status: Status | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    """Digests, newest first, filtered by group, status and creation time (ISO 8601; UTC unless it
    says); `total_jobs` counts the whole history for the filter, `jobs` is its first `limit`."""
    since, until = (t.replace(tzinfo=UTC) if t and t.tzinfo is None else t for t in (since, until))
    # a page costs the page: each finished run's summary is kept in its tags (history.digest_runs)
    runs = digest_runs(instance, group_id, status, since, until, limit)
    jobs = [with_face_ids(job(summary, dict(run.run_config)), store) for summary, run in runs]
    return {"total_jobs": count_digests(instance, group_id, status, since, until), "jobs": jobs}


@router.get("/get-digests/{job_id}", response_model=Job, response_model_exclude_unset=True, responses=errors(404, 503))
def get_digest(job_id: str, instance: Instance, store: Store) -> dict[str, Any]:
    """One digest: status, progress, counts, times and errors (each failed photo with its reason),
    and once it has finished the first ids of the faces it stored."""
    return with_face_ids(job_by_id(instance, job_id), store)


@router.get("/get-digests/{job_id}/face-ids", response_model=FaceIdsPage, responses=errors(404, 503))
def get_digest_face_ids(
    job_id: str,
    instance: Instance,
    store: Store,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[str | None, Query(description="The `next_offset` of the page before.")] = None,
) -> dict[str, Any]:
    """The ids of the faces the digest stored, a page at a time: pass `next_offset` back as `offset`."""
    offset = page_offset(offset, "a face id")
    run_id = run_id_of(job_id)
    try:
        summary = digest_summary(instance, run_id)
    except DigestNotFound as err:
        raise HTTPException(404, str(err)) from None
    if not summary["profile"] or not summary["group_id"]:
        return {"job_id": job_id_of(run_id), "face_ids": [], "next_offset": None}
    with store() as faces:
        ids, next_offset = faces.face_ids_of_run(summary["group_id"], summary["profile"], run_id, limit, offset)
    return {"job_id": job_id_of(run_id), "face_ids": ids, "next_offset": next_offset}


@router.post(
    "/digest/{job_id}/cancel", response_model=Job, response_model_exclude_unset=True, responses=errors(404, 409)
)
def post_cancel(job_id: str, instance: Instance) -> dict[str, Any]:
    """Cancel a queued or running digest; the faces it stored stay, a later digest does the rest."""
    try:
        cancel_digest(instance, run_id_of(job_id))
    except DigestNotFound as err:
        raise HTTPException(404, str(err)) from None
    except (ValueError, RuntimeError) as err:
        raise HTTPException(409, str(err)) from None
    return job_by_id(instance, job_id)


@router.post(
    "/digest/{job_id}/retry",
    status_code=202,
    response_model=Job,
    response_model_exclude_unset=True,
    responses=errors(404, 409, 503),
)
def post_retry(job_id: str, instance: Instance, code_server: CodeServerDep) -> dict[str, Any]:
    """Queue a re-execution of a failed or canceled digest: the chunks that succeeded are not redone."""
    try:
        new_id = start_retry(run_id_of(job_id), instance, code_server)
    except DigestNotFound as err:
        raise HTTPException(404, str(err)) from None
    except ValueError as err:
        raise HTTPException(409, str(err)) from None
    except LaunchError as err:  # the code server did not answer in time: a busy machine
        raise busy(str(err)) from None
    return job_by_id(instance, new_id)
