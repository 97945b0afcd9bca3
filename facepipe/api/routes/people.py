"""People: cluster a group's faces (a run of the people asset on the run queue), list them, show
one, name, merge and split them in the face store."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRun
from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse

from facepipe.api.dependencies import KEY, CodeServerDep, Instance, Store, busy, require_daemon
from facepipe.api.paths import group_sources, path_in_sources
from facepipe.api.schemas import (
    ClusterBody,
    Clustered,
    ClusterQueued,
    MergeBody,
    NameBody,
    People,
    Person,
    PersonWithFaces,
    SplitBody,
    errors,
)
from facepipe.clients.local import LaunchError, adopt_group, start_people
from facepipe.domain.people import (
    PersonNotFound,
    list_people,
    merge_people,
    name_person,
    person_with_faces,
    split_person,
)
from facepipe.domain.search import group_profiles
from facepipe.platform.history import STATUS_NAMES
from facepipe.store import FaceStore, image_point_id

router = APIRouter(tags=["people"], dependencies=KEY)

CLUSTER_WAIT_SECONDS = 300.0  # POST /cluster-faces answers 202 with the run id past this


def profile_of(store: FaceStore, group_id: str, profile: str | None) -> str:
    profiles = group_profiles(store, group_id)
    if not profiles:
        raise HTTPException(404, f"unknown group {group_id!r}: it has no faces; digest photos into it first")
    if profile and profile not in profiles:
        raise HTTPException(404, f"group {group_id!r} has no faces with profile {profile!r} (it has {profiles})")
    return profile or profiles[0]


def within_sources(person: dict[str, Any], instance: DagsterInstance) -> dict[str, Any]:
    """The person with their photos by their paths within their sources (and their ids)."""
    sources = group_sources(instance, person["group_id"])
    person["representative_image_path"] = path_in_sources(person["representative_image_path"], sources)
    for face in person.get("faces", []):
        face["photo_id"] = image_point_id(person["group_id"], face["image_path"], person["profile"])
        face["image_path"] = path_in_sources(face["image_path"], sources)
    return person


def people_of(store: Store, instance: DagsterInstance, group_id: str, profile: str | None) -> dict[str, Any]:
    with store() as faces:
        profile = profile_of(faces, group_id, profile)
        people = list_people(faces, group_id, profile)
    people = [within_sources(person, instance) for person in people]
    return {"group_id": group_id, "profile": profile, "total_people": len(people), "people": people}


def finished_run(instance: DagsterInstance, run_id: str, seconds: float) -> DagsterRun:
    """The run once it has finished, or as it is `seconds` from now."""
    deadline = time.monotonic() + seconds
    while True:
        run = instance.get_run_by_id(run_id)
        assert run is not None  # submitted already
        if run.is_finished or time.monotonic() > deadline:
            return run
        time.sleep(1)


@contextmanager
def person_errors() -> Iterator[None]:
    try:
        yield
    except PersonNotFound as err:
        raise HTTPException(404, str(err)) from None
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


@router.post(
    "/cluster-faces",
    response_model=Clustered,
    responses={
        202: {"model": ClusterQueued, "description": "Still running: poll the people."},
        **errors(404, 500, 503),
    },
)
def post_cluster_faces(body: ClusterBody, instance: Instance, store: Store, code_server: CodeServerDep) -> Any:
    """Cluster the group's faces into people: a run of the `people` asset on the run queue, waited
    for; the people, most faces first. Past CLUSTER_WAIT_SECONDS (a digest ahead in the queue), 202
    with the run id."""
    with store() as opened:  # a group digested elsewhere (a store copied or restored) gets its partition
        known = adopt_group(instance, opened, body.group_id, body.profile)
    if not known:
        raise HTTPException(404, f"unknown group {body.group_id!r}: digest photos into it first")
    require_daemon(instance)
    try:
        run_id = start_people(body.group_id, body.profile, body.full, instance, code_server)
    except LaunchError as err:  # the code server did not answer in time: a busy machine
        raise busy(str(err)) from None
    run = finished_run(instance, run_id, CLUSTER_WAIT_SECONDS)
    if not run.is_finished:
        return JSONResponse({"run_id": run_id, "status": STATUS_NAMES.get(run.status)}, status_code=202)
    if STATUS_NAMES.get(run.status) != "completed":
        failures = [
            e.dagster_event.step_failure_data.error.message.strip()
            for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
            if e.dagster_event and e.dagster_event.step_failure_data.error
        ]
        raise HTTPException(
            500,
            f"clustering run {run_id} {STATUS_NAMES.get(run.status)}: "
            f"{failures[0] if failures else 'see the run in the Dagster UI'}",
        )
    return {"run_id": run_id, **people_of(store, instance, body.group_id, body.profile)}


@router.get("/groups/{group_id}/people", response_model=People, responses=errors(404, 503))
def get_people(group_id: str, store: Store, instance: Instance, profile: str | None = None) -> dict[str, Any]:
    """The group's people, most faces first (POST /cluster-faces places new faces first)."""
    return people_of(store, instance, group_id, profile)


@router.get("/groups/{group_id}/people/{person_id}", response_model=PersonWithFaces, responses=errors(404, 503))
def get_one_person(
    group_id: str, person_id: int, store: Store, instance: Instance, profile: str | None = None
) -> dict[str, Any]:
    """One person: name, face count and every face (id, photo, box)."""
    with store() as faces, person_errors():
        person = person_with_faces(faces, group_id, person_id, profile_of(faces, group_id, profile))
    del person["records"]
    return within_sources(person, instance)


@router.post("/groups/{group_id}/people/{person_id}/name", response_model=Person, responses=errors(404, 503))
def post_name(
    group_id: str, person_id: int, body: NameBody, store: Store, instance: Instance, profile: str | None = None
) -> dict[str, Any]:
    with store() as faces, person_errors():
        named = name_person(faces, group_id, person_id, body.name, profile_of(faces, group_id, profile))
    return within_sources(named, instance)


@router.post("/groups/{group_id}/people/merge", response_model=Person, responses=errors(404, 503))
def post_merge(
    group_id: str, body: MergeBody, store: Store, instance: Instance, profile: str | None = None
) -> dict[str, Any]:
    """Merge `others` into `keep`; their faces stay with `keep` through later clustering."""
    with store() as faces, person_errors():
        merged = merge_people(faces, group_id, body.keep, body.others, profile_of(faces, group_id, profile))
    return within_sources(merged, instance)


@router.post("/groups/{group_id}/people/{person_id}/split", response_model=Person, responses=errors(404, 503))
def post_split(
    group_id: str, person_id: int, body: SplitBody, store: Store, instance: Instance, profile: str | None = None
) -> dict[str, Any]:
    """Move some faces of a person out to a new person; the new person."""
    with store() as faces, person_errors():
        split = split_person(faces, group_id, person_id, body.face_ids, profile_of(faces, group_id, profile))
    return within_sources(split, instance)
