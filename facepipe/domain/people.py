"""People: the faces of a group clustered into persons, with manual names, merges and splits.

Each stored face gets `person_id` (an integer, per group) and `person_pinned` (true once a person
decided where the face belongs: merge, split). The people themselves are records of the store
(FaceStore.scroll_people), one per group and person: `person_id, name, face_count,
representative_face_id, representative_image_path`, its vector the mean of its faces' embeddings.

- `update_people(store, group)` assigns the faces that have no person yet to the nearest existing
  person (or to new people), never renumbering anyone; `full=True` re-clusters every face and
  carries ids and names over to the clusters that hold most of a person's faces.
- Pinned faces keep their person through any re-clustering, so manual decisions survive it.
"""

import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np

from facepipe.engine.clustering import carry_over_ids, cluster_embeddings
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES, unit_rows
from facepipe.store import FaceStore, StoredPoint, Where

INTERNAL_KEYS = ("stale",)  # set by the store when a person's faces were replaced; not shown


class PersonNotFound(LookupError):
    pass


def _shown(payload: dict[str, Any]) -> dict[str, Any]:
    # a server drops payload keys set to None: an unnamed person may have no "name" key
    return {"name": None, **{k: v for k, v in payload.items() if k not in INTERNAL_KEYS}}


def list_people(store: FaceStore, group_id: str, profile: str = DEFAULT_PROFILE) -> list[dict[str, Any]]:
    """The group's people, most faces first."""
    records = store.scroll_people(group_id, profile)
    return sorted((_shown(r.payload) for r in records), key=lambda p: (-p["face_count"], p["person_id"]))


def get_person(store: FaceStore, group_id: str, person_id: int, profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    found = store.get_people(group_id, profile, [person_id])
    if not found:
        raise PersonNotFound(f"group {group_id!r} has no person {person_id}")
    return _shown(found[0].payload)


def person_faces(
    store: FaceStore, group_id: str, person_id: int, profile: str = DEFAULT_PROFILE, with_vectors: bool = False
) -> list[StoredPoint]:
    return list(store.scroll_faces(group_id, profile, Where({"person_id": person_id}), with_vectors=with_vectors))


def person_with_faces(
    store: FaceStore, group_id: str, person_id: int, profile: str = DEFAULT_PROFILE
) -> dict[str, Any]:
    """A person and each of their faces (id, photo, box, pinned), by photo; the faces' records too,
    for what a caller adds (thumbnails)."""
    person = get_person(store, group_id, person_id, profile)
    records = sorted(
        person_faces(store, group_id, person_id, profile),
        key=lambda f: (f.payload["image_path"], f.payload["face_index"]),
    )
    person["faces"] = [
        {
            "face_id": str(f.id),
            "image_path": f.payload["image_path"],
            "face_index": f.payload["face_index"],
            "facial_area": f.payload["facial_area"],
            "pinned": bool(f.payload.get("person_pinned")),
        }
        for f in records
    ]
    return {**person, "records": records}


class LoadedFaces(NamedTuple):
    ids: list[str]
    vectors: np.ndarray  # unit rows, float32, in the order of ids
    payloads: list[dict[str, Any]]


def _load(
    store: FaceStore,
    group_id: str,
    profile: str,
    where: Where | None = None,
    keys: tuple[str, ...] = ("person_id", "person_pinned", "image_path"),
) -> LoadedFaces:
    """Ids, unit vectors (float32) and a few payload fields of the group's faces matching `where`, a page at a
    time: memory is 4 bytes x dimensions per face plus the ids, not the faces' payloads."""
    ids: list[str] = []
    rows: list[np.ndarray] = []
    payloads: list[dict[str, Any]] = []
    page: list[list[float] | None] = []
    for point in store.scroll_faces(group_id, profile, where, with_vectors=True, payload_keys=keys, page=2048):
        ids.append(point.id)
        payloads.append(point.payload)
        page.append(point.vector)
        if len(page) == 4096:
            rows.append(unit_rows(np.array(page, np.float32)))
            page = []
    if page:
        rows.append(unit_rows(np.array(page, np.float32)))
    vectors = np.concatenate(rows) if rows else np.zeros((0, 1), np.float32)
    return LoadedFaces(ids, vectors, payloads)


def update_people(
    store: FaceStore,
    group_id: str,
    profile: str = DEFAULT_PROFILE,
    full: bool = False,
    max_distance: float | None = None,
) -> dict[str, Any]:
    """Cluster the group's faces into people and write `person_id` into each face's payload.

    Incremental by default: faces already with a person keep it, and only new faces are placed,
    each with one nearest-person query (a person's vector is the mean of its faces' unit
    embeddings, so 1 - its dot product with a face is the face's mean cosine distance to the
    person's faces: average linkage's own rule). Only the people who gained faces or lost some
    (a changed photo's faces replaced) are recounted. `full=True` re-clusters every face.
    Returns counts: faces, people, new_people, faces_assigned (that changed person or got one).
    """
    max_distance = PROFILES[profile].cluster_distance if max_distance is None else max_distance
    store.ensure_people_collection(profile)
    old_people = {
        r.payload["person_id"]: r.payload
        for r in store.scroll_people(group_id, profile, payload_keys=("person_id", "name", "stale"))
    }
    next_id = max([*old_people, 0]) + 1
    unplaced = Where(missing=("person_id",))
    total = store.count_faces(group_id, profile)
    placed = total - store.count_faces(group_id, profile, unplaced)

    if full or placed == 0:
        ids, vectors, payloads = _load(store, group_id, profile)
        previous: list[int | None] = [p.get("person_id") for p in payloads]
        pinned = [bool(p.get("person_pinned")) for p in payloads]
        assigned = carry_over_ids(cluster_embeddings(vectors, max_distance), previous, pinned, next_id)
        # pinned faces stay where a person put them, whatever the clustering says
        assigned = [prev if pin and prev is not None else new for prev, new, pin in zip(previous, assigned, pinned)]
        changed = _assign(store, group_id, profile, ids, previous, assigned)
        people = _people_from(
            group_id, profile, ids, vectors, [p["image_path"] for p in payloads], assigned, old_people
        )
        store.write_people(group_id, profile, people)
        kept = {payload["person_id"] for payload, _ in people}
        store.delete_people(group_id, profile, [p for p in old_people if p not in kept])
        new_people = len(kept - set(old_people))
    else:
        ids, vectors, payloads = _load(store, group_id, profile, unplaced)
        nearest = [
            store.nearest_people(group_id, profile, vector, limit=1, min_score=1.0 - max_distance) for vector in vectors
        ]
        # faces like no one known: new people among themselves
        waiting = [i for i, found in enumerate(nearest) if not found]
        labels = cluster_embeddings(vectors[waiting], max_distance) if waiting else np.zeros(0, int)
        fresh = dict(zip(waiting, carry_over_ids(labels, [None] * len(waiting), [False] * len(waiting), next_id)))
        assigned = [found[0].payload["person_id"] if found else fresh[i] for i, found in enumerate(nearest)]
        changed = _assign(store, group_id, profile, ids, [None] * len(ids), assigned)
        grown = {assigned[i] for i in set(range(len(ids))) - set(waiting)}
        stale = {p for p, payload in old_people.items() if payload.get("stale")}
        new_ids = sorted(set(assigned) - set(old_people))
        new_idx = [i for i, a in enumerate(assigned) if a in set(new_ids)]
        fresh_people = _people_from(
            group_id,
            profile,
            [ids[i] for i in new_idx],
            vectors[new_idx],
            [payloads[i]["image_path"] for i in new_idx],
            [assigned[i] for i in new_idx],
            {},
        )
        store.write_people(group_id, profile, fresh_people)
        recount_people(store, group_id, profile, (grown | stale) & set(old_people))
        new_people = len(new_ids)

    return {
        "faces": total,
        "people": store.count_people(group_id, profile),
        "new_people": new_people,
        "faces_assigned": changed,
    }


def _assign(
    store: FaceStore, group_id: str, profile: str, ids: list[str], previous: list[int | None], assigned: list[int]
) -> int:
    """Write each face's new person, one payload update per person; the number of faces moved."""
    changed: defaultdict[int, list[str]] = defaultdict(list)
    for face_id, before, after in zip(ids, previous, assigned):
        if before != after:
            changed[after].append(face_id)
    for person, moved in changed.items():
        store.set_faces_payload(group_id, profile, moved, {"person_id": person})
    return sum(len(moved) for moved in changed.values())


def _people_from(
    group_id: str,
    profile: str,
    ids: list[str],
    vectors: np.ndarray,
    image_paths: list[str],
    assigned: list[int],
    old_people: dict[int, dict[str, Any]],
) -> list[tuple[dict[str, Any], list[float]]]:
    """People from faces in memory, each a payload (count, medoid face) and its mean unit embedding."""
    if not len(ids):
        return []
    now = datetime.now(UTC).isoformat(timespec="seconds")
    persons, index = np.unique(np.asarray(assigned), return_inverse=True)
    sums = np.zeros((len(persons), vectors.shape[1]), np.float64)
    np.add.at(sums, index, vectors)
    counts = np.bincount(index, minlength=len(persons))
    # the medoid maximises v . (sum of its person's faces): O(n)
    closeness = np.einsum("ij,ij->i", vectors.astype(np.float64), sums[index])
    order = np.lexsort((-closeness, index))
    first = np.searchsorted(index[order], np.arange(len(persons)))
    points = []
    for k, person in enumerate(persons.tolist()):
        face = int(order[first[k]])
        points.append(
            _person_point(
                group_id,
                profile,
                int(person),
                int(counts[k]),
                sums[k] / counts[k],
                ids[face],
                image_paths[face],
                old_people.get(person, {}).get("name"),
                now,
            )
        )
    return points


def _person_point(
    group_id: str,
    profile: str,
    person: int,
    count: int,
    mean: np.ndarray,
    face_id: str,
    image_path: str,
    name: str | None,
    now: str,
) -> tuple[dict[str, Any], list[float]]:
    return {
        "group_id": group_id,
        "person_id": person,
        "name": name,
        "face_count": count,
        "representative_face_id": str(face_id),
        "representative_image_path": image_path,
        "profile": profile,
        "updated": now,
        "stale": False,
    }, mean.tolist()


def recount_people(store: FaceStore, group_id: str, profile: str, persons: set[int]) -> None:
    """Recompute some people from their faces as they are now (one filtered scroll per person, so
    the cost is those people's faces, not the group's); a person left without faces leaves the table."""
    names = {r.payload["person_id"]: r.payload.get("name") for r in store.get_people(group_id, profile, persons)}
    for person in sorted(persons):
        ids, vectors, payloads = _load(store, group_id, profile, Where({"person_id": person}), keys=("image_path",))
        if not ids:
            store.delete_people(group_id, profile, [person])
            continue
        store.write_people(
            group_id,
            profile,
            _people_from(
                group_id,
                profile,
                ids,
                vectors,
                [p["image_path"] for p in payloads],
                [person] * len(ids),
                {person: {"name": names.get(person)}},
            ),
        )


def name_person(
    store: FaceStore, group_id: str, person_id: int, name: str | None, profile: str = DEFAULT_PROFILE
) -> dict[str, Any]:
    get_person(store, group_id, person_id, profile)
    store.set_people_payload(group_id, profile, [person_id], {"name": name or None})
    return get_person(store, group_id, person_id, profile)


def merge_people(
    store: FaceStore, group_id: str, keep: int, others: list[int], profile: str = DEFAULT_PROFILE
) -> dict[str, Any]:
    """Move every face of `others` to `keep`, pinned, so a re-cluster does not pull them apart again.

    `keep` keeps its name, or takes the first name among `others` if it has none.
    """
    target = get_person(store, group_id, keep, profile)
    sources = [get_person(store, group_id, other, profile) for other in others if other != keep]
    faces = [f.id for p in (target, *sources) for f in person_faces(store, group_id, p["person_id"], profile)]
    store.set_faces_payload(group_id, profile, faces, {"person_id": keep, "person_pinned": True})
    name = target["name"] or next((s["name"] for s in sources if s["name"]), None)
    recount_people(store, group_id, profile, {keep, *(s["person_id"] for s in sources)})
    return name_person(store, group_id, keep, name, profile)


def split_person(
    store: FaceStore, group_id: str, person_id: int, face_ids: list[str], profile: str = DEFAULT_PROFILE
) -> dict[str, Any]:
    """Move some faces of a person out to a new person; both sides are pinned where they are."""
    get_person(store, group_id, person_id, profile)
    faces = {str(f.id) for f in person_faces(store, group_id, person_id, profile)}
    moving = [str(uuid.UUID(f)) for f in face_ids]
    strangers = [f for f in moving if f not in faces]
    if strangers:
        raise PersonNotFound(f"person {person_id} of group {group_id!r} has no face {strangers[0]}")
    if not moving or len(moving) == len(faces):
        raise ValueError("a split moves some of the person's faces, not none or all")
    new_id = max([p["person_id"] for p in list_people(store, group_id, profile)] + [0]) + 1
    staying = sorted(faces - set(moving))
    store.set_faces_payload(group_id, profile, staying, {"person_pinned": True})
    store.set_faces_payload(group_id, profile, moving, {"person_id": new_id, "person_pinned": True})
    recount_people(store, group_id, profile, {person_id, new_id})
    return get_person(store, group_id, new_id, profile)
