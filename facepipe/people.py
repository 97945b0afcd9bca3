"""People: the faces of a group clustered into persons, with manual names, merges and splits.

Each face's payload in `faces_<profile>` gets `person_id` (an integer, per group) and
`person_pinned` (true once a person decided where the face belongs: merge, split). The people
themselves live in the vectorless `people_<profile>` collection, one point per group and person:
`person_id, name, face_count, representative_face_id, representative_image_path`.

- `update_people(store, group)` assigns the faces that have no person yet to the nearest existing
  person (or to new people), never renumbering anyone; `full=True` re-clusters every face and
  carries ids and names over to the clusters that hold most of a person's faces.
- Pinned faces keep their person through any re-clustering, so manual decisions survive it.
"""

import uuid
from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
from qdrant_client import models

from facepipe.engine.clustering import (
    CLUSTER_DISTANCE,
    carry_over_ids,
    cluster_embeddings,
    medoid,
    nearest_person,
)
from facepipe.engine.profiles import DEFAULT_PROFILE, unit_rows
from facepipe.store import ID_NAMESPACE, FaceStore, faces_collection, group_filter


class PersonNotFound(LookupError):
    pass


def people_collection(profile: str) -> str:
    return "people_" + profile.replace("-", "_")


def person_point_id(group_id: str, person_id: int, profile: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"person:{group_id}:{person_id}:{profile}"))


def _ensure_people_collection(store: FaceStore, profile: str) -> None:
    if not store.client.collection_exists(people_collection(profile)):
        store.client.create_collection(people_collection(profile), vectors_config={})


def list_people(store: FaceStore, group_id: str, profile: str = DEFAULT_PROFILE) -> list[dict]:
    """The group's people, most faces first."""
    records = store._scroll(people_collection(profile), group_filter(group_id))
    # qdrant drops payload keys set to None: an unnamed person has no "name" key
    return sorted(({"name": None, **r.payload} for r in records), key=lambda p: (-p["face_count"], p["person_id"]))


def get_person(store: FaceStore, group_id: str, person_id: int, profile: str = DEFAULT_PROFILE) -> dict:
    found = []
    if store.client.collection_exists(people_collection(profile)):
        found = store.client.retrieve(people_collection(profile), [person_point_id(group_id, person_id, profile)])
    if not found:
        raise PersonNotFound(f"group {group_id!r} has no person {person_id}")
    return {"name": None, **found[0].payload}


def person_faces(store: FaceStore, group_id: str, person_id: int, profile: str = DEFAULT_PROFILE,
                 with_vectors: bool = False) -> list[models.Record]:
    filter_ = group_filter(group_id)
    filter_.must.append(models.FieldCondition(key="person_id", match=models.MatchValue(value=person_id)))
    return list(store._scroll(faces_collection(profile), filter_, with_vectors=with_vectors))


def update_people(store: FaceStore, group_id: str, profile: str = DEFAULT_PROFILE, full: bool = False,
                  max_distance: float | None = None) -> dict:
    """Cluster the group's faces into people and write `person_id` into each face's payload.

    Incremental by default: faces already with a person keep it, and only new faces are placed.
    Returns counts: faces, people, new_people, faces_assigned (that changed person or got one).
    """
    max_distance = CLUSTER_DISTANCE[profile] if max_distance is None else max_distance
    faces = store.faces(group_id, profile, with_vectors=True)
    _ensure_people_collection(store, profile)
    old_people = {p["person_id"]: p for p in list_people(store, group_id, profile)}
    previous = [f.payload.get("person_id") for f in faces]
    pinned = [bool(f.payload.get("person_pinned")) for f in faces]
    next_id = max([*old_people, *(p for p in previous if p is not None), 0]) + 1
    vectors = unit_rows(np.array([f.vector for f in faces])) if faces else np.zeros((0, 1))

    if full or all(p is None for p in previous):
        assigned = carry_over_ids(cluster_embeddings(vectors, max_distance), previous, pinned, next_id)
        # pinned faces stay where a person put them, whatever the clustering says
        assigned = [prev if pin else new for prev, new, pin in zip(previous, assigned, pinned)]
    else:
        assigned = list(previous)
        known = defaultdict(list)
        for i, person in enumerate(previous):
            if person is not None:
                known[person].append(i)
        known_vectors = {person: vectors[idx] for person, idx in known.items()}
        waiting = []
        for i, person in enumerate(previous):
            if person is None:
                assigned[i] = nearest_person(vectors[i], known_vectors, max_distance)
                if assigned[i] is None:
                    waiting.append(i)
        # faces like no one known: new people among themselves
        if waiting:
            labels = cluster_embeddings(vectors[waiting], max_distance)
            fresh = carry_over_ids(labels, [None] * len(waiting), [False] * len(waiting), next_id)
            for i, person in zip(waiting, fresh):
                assigned[i] = person

    changed = defaultdict(list)
    for face, before, after in zip(faces, previous, assigned):
        if before != after:
            changed[after].append(face.id)
    for person, ids in changed.items():
        store.client.set_payload(faces_collection(profile), payload={"person_id": person}, points=ids)

    people = _write_people(store, group_id, profile, faces, vectors, assigned, old_people)
    return {
        "faces": len(faces),
        "people": len(people),
        "new_people": len(set(people) - set(old_people)),
        "faces_assigned": sum(len(ids) for ids in changed.values()),
    }


def _write_people(store: FaceStore, group_id: str, profile: str, faces, vectors, assigned,
                  old_people: dict[int, dict]) -> dict[int, dict]:
    """Rewrite the group's people table from the faces' assignments; names carry over by id."""
    members = defaultdict(list)
    for i, person in enumerate(assigned):
        members[person].append(i)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    people, points = {}, []
    for person, idx in sorted(members.items()):
        representative = faces[idx[medoid(vectors[idx])]]
        payload = {
            "group_id": group_id, "person_id": person,
            "name": old_people.get(person, {}).get("name"),
            "face_count": len(idx),
            "representative_face_id": str(representative.id),
            "representative_image_path": representative.payload["image_path"],
            "profile": profile, "updated": now,
        }
        people[person] = payload
        points.append(models.PointStruct(id=person_point_id(group_id, person, profile), vector={}, payload=payload))
    if points:
        store.client.upsert(people_collection(profile), points)
    gone = [person_point_id(group_id, p, profile) for p in old_people if p not in people]
    if gone:
        store.client.delete(people_collection(profile), points_selector=models.PointIdsList(points=gone))
    return people


def _refresh_people(store: FaceStore, group_id: str, profile: str) -> None:
    """Recount the people table after a manual change, from the faces as they are now."""
    faces = store.faces(group_id, profile, with_vectors=True)
    vectors = unit_rows(np.array([f.vector for f in faces])) if faces else np.zeros((0, 1))
    assigned = [f.payload.get("person_id") for f in faces]
    keep = [i for i, p in enumerate(assigned) if p is not None]
    old_people = {p["person_id"]: p for p in list_people(store, group_id, profile)}
    _write_people(store, group_id, profile, [faces[i] for i in keep], vectors[keep],
                  [assigned[i] for i in keep], old_people)


def name_person(store: FaceStore, group_id: str, person_id: int, name: str | None,
                profile: str = DEFAULT_PROFILE) -> dict:
    get_person(store, group_id, person_id, profile)
    store.client.set_payload(people_collection(profile), payload={"name": name or None},
                             points=[person_point_id(group_id, person_id, profile)])
    return get_person(store, group_id, person_id, profile)


def merge_people(store: FaceStore, group_id: str, keep: int, others: list[int],
                 profile: str = DEFAULT_PROFILE) -> dict:
    """Move every face of `others` to `keep`, pinned, so a re-cluster does not pull them apart again.

    `keep` keeps its name, or takes the first name among `others` if it has none.
    """
    target = get_person(store, group_id, keep, profile)
    sources = [get_person(store, group_id, other, profile) for other in others if other != keep]
    faces = [f.id for p in (target, *sources) for f in person_faces(store, group_id, p["person_id"], profile)]
    store.client.set_payload(faces_collection(profile), payload={"person_id": keep, "person_pinned": True},
                             points=faces)
    name = target["name"] or next((s["name"] for s in sources if s["name"]), None)
    _refresh_people(store, group_id, profile)
    return name_person(store, group_id, keep, name, profile)


def split_person(store: FaceStore, group_id: str, person_id: int, face_ids: list[str],
                 profile: str = DEFAULT_PROFILE) -> dict:
    """Move some faces of a person out to a new person; both sides are pinned where they are."""
    get_person(store, group_id, person_id, profile)
    faces = {str(f.id) for f in person_faces(store, group_id, person_id, profile)}
    moving = [str(uuid.UUID(f)) for f in face_ids]
    strangers = [f for f in moving if f not in faces]
    if strangers:
        raise PersonNotFound(f"person {person_id} of group {group_id!r} has no face {strangers[0]}")
    if not moving or len(moving) == len(faces):
        raise ValueError("a split moves some of the person's faces, not none or all")
    taken = [p["person_id"] for p in list_people(store, group_id, profile)]
    all_ids = {f.payload.get("person_id") for f in store.faces(group_id, profile)} - {None}
    new_id = max([*taken, *all_ids, 0]) + 1
    staying = sorted(faces - set(moving))
    store.client.set_payload(faces_collection(profile), payload={"person_pinned": True}, points=staying)
    store.client.set_payload(faces_collection(profile), payload={"person_id": new_id, "person_pinned": True},
                             points=moving)
    _refresh_people(store, group_id, profile)
    return get_person(store, group_id, new_id, profile)


def run_people(group_id: str, profile: str = DEFAULT_PROFILE, full: bool = False, instance=None) -> dict:
    """Materialise the group's `people` asset as a Dagster run on the local instance; its counts.

    Raises LookupError for a group never digested, RuntimeError (with the step's message) if the run fails.
    """
    from dagster import execute_job, reconstructable

    from facepipe.definitions import get_people_job
    from facepipe.defs.partitions import digest_groups
    from facepipe.digests import instance_for_digests

    instance = instance or instance_for_digests()
    if not instance.has_dynamic_partition(digest_groups.name, group_id):
        raise LookupError(f"unknown group {group_id!r}: digest photos into it first")
    run_config = {
        "ops": {"people": {"config": {"profile": profile, "full": full}}},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    tags = {"dagster/partition": group_id, "facepipe/group_id": group_id, "facepipe/profile": profile}
    with execute_job(reconstructable(get_people_job), instance, run_config=run_config, tags=tags) as result:
        if not result.success:
            failures = [e.step_failure_data.error.message.strip() for e in result.get_step_failure_events()
                        if e.step_failure_data.error]
            raise RuntimeError(failures[0] if failures else f"people run {result.run_id} failed")
        materialization = result.get_asset_materialization_events()[0].step_materialization_data.materialization
        counts = {key: value.value for key, value in materialization.metadata.items()}
        return {**counts, "run_id": result.run_id}
