"""Deletes (the right to be forgotten) and 1:1 verification, over the face store; no Dagster.

What a delete removes, wherever the group kept it:
- a face: from the faces collection (so from search), from its person (each person that lost faces
  is recounted at once: count, mean vector, representative face; one left without faces is
  removed), and its thumbnail file;
- a photo: its faces, and its ledger row becomes a tombstone (the path only, status "deleted"): every
  later digest of the same source leaves the photo out, among the entries not listed, with the
  reason engine.listing.DELETED_FROM_GROUP. A photo uploaded to facepipe (under
  $FACEPIPE_HOME/uploads/) is removed from the disk instead, with its ledger row: nothing can list
  it again, and the same name uploaded later is a new photo;
- the faces deleted from a photo that stays (a face, a person, "forget me"): the photo's ledger row
  counts them no more and keeps their boxes (`deleted_faces`), so the next digest skips the photo as
  unchanged, and one that reads it again (its bytes changed, --redigest) leaves out the faces found
  at those boxes;
- a group: all of it, in every profile (faces, ledger rows and tombstones, people, thumbnails, its
  uploads folder); a later digest into the same group id starts a new group.

"Forget me" deletes the faces a selfie matches in a group at the profile's search threshold, as
search.matching_photos matches them: the faces `facepipe search` shows for that selfie.
"""

import os
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facepipe import settings
from facepipe.domain.people import PersonNotFound, get_person, person_faces, recount_people
from facepipe.domain.request import DEFAULT_CONFIDENCE
from facepipe.domain.search import SearchResult, group_profiles, matching_photos
from facepipe.domain.thumbnails import thumbnail_path
from facepipe.engine.faces import Face, faces_in_image
from facepipe.engine.images import decode_image
from facepipe.engine.listing import ImageError, read_image_bytes
from facepipe.engine.presets import DEFAULT_MIN_FACE_SIZE
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES, load_profile
from facepipe.store import PHOTO_DELETED, FaceStore, StoredPoint, Where, image_point_id, local_path


class NothingToDelete(LookupError):
    """What a delete names is not in the group (a photo, a face, a person, the group itself)."""


class VerifyError(ValueError):
    """A photo that verify cannot use: unreadable, or without a face."""


@dataclass
class Deleted:
    """What a delete removed from a group."""

    group_id: str
    faces: int = 0
    photos: int = 0  # photos deleted: tombstones in the ledger, or uploaded files removed with their row
    people: int = 0  # persons left without faces, removed
    files: int = 0  # uploaded photos removed from $FACEPIPE_HOME/uploads
    face_ids: list[str] = field(default_factory=list)  # every deleted face (left empty by a group delete)
    image_paths: list[str] = field(default_factory=list)  # the photos that lost faces or were deleted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uploaded_file(path: str) -> Path | None:
    """The file of a photo uploaded to facepipe (under settings.uploads_dir()); None for any other photo."""
    if path.startswith("s3://"):
        return None
    real = Path(os.path.realpath(path))
    return real if real.is_relative_to(os.path.realpath(settings.uploads_dir())) else None


def _profile_of(store: FaceStore, group_id: str, profile: str | None) -> str:
    """`profile`, or the one the group's faces have (the default for a group without faces)."""
    if profile:
        return profile
    found = group_profiles(store, group_id)
    return found[0] if found else DEFAULT_PROFILE


def _remove_faces(
    store: FaceStore, group_id: str, profile: str, faces: list[StoredPoint], deleted: Deleted, photos_stay: bool
) -> None:
    """Delete `faces` of the group, their thumbnails, and recount their people. When their photos
    stay in the group, each photo's ledger row counts those faces no more and keeps their boxes."""
    if not faces:
        return
    ids = [str(face.id) for face in faces]
    store.delete_faces(group_id, profile, ids)
    for face_id in ids:
        thumbnail_path(face_id).unlink(missing_ok=True)
    persons = {face.payload["person_id"] for face in faces if face.payload.get("person_id") is not None}
    if persons:
        recount_people(store, group_id, profile, persons)
        left = {person.payload["person_id"] for person in store.get_people(group_id, profile, persons)}
        deleted.people += len(persons - left)
    by_photo: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for face in faces:
        by_photo[face.payload["image_path"]].append(face.payload["facial_area"])
    if photos_stay:
        for row in store.get_images(group_id, profile, _photo_ids(group_id, profile, by_photo)):
            boxes = by_photo[row.payload["image_path"]]
            store.set_images_payload(
                group_id,
                profile,
                [row.id],
                {
                    "faces": max(0, (row.payload.get("faces") or 0) - len(boxes)),
                    "deleted_faces": [*(row.payload.get("deleted_faces") or []), *boxes],
                },
            )
    deleted.faces += len(ids)
    deleted.face_ids += ids
    deleted.image_paths += [path for path in by_photo if path not in deleted.image_paths]


def _photo_ids(group_id: str, profile: str, stored_paths: Iterable[str]) -> list[str]:
    """The ledger ids of the group's photos at these paths (as the store keeps them)."""
    return [image_point_id(group_id, local_path(path), profile) for path in stored_paths]


def _ledger_row(store: FaceStore, group_id: str, profile: str, photo: str) -> StoredPoint:
    """The ledger row of one of the group's photos, by its id (store.image_point_id) or its path as
    the group's digests listed it; NothingToDelete if the group has no such photo (or it was deleted)."""
    try:
        photo_id = str(uuid.UUID(photo))
    except ValueError:  # not an id: a path
        photo_id = image_point_id(group_id, photo, profile)
    rows = store.get_images(group_id, profile, [photo_id])
    if not rows or rows[0].payload.get("status") == PHOTO_DELETED:
        raise NothingToDelete(f"group {group_id!r} has no photo {photo!r} (with profile {profile})")
    return rows[0]


def delete_photo(store: FaceStore, group_id: str, photo: str, profile: str | None = None) -> Deleted:
    """Delete one of the group's photos (`photo`: its id or its path): its faces and its ledger row,
    which stays as a tombstone so that digests leave the photo out; an uploaded photo's file too."""
    profile = _profile_of(store, group_id, profile)
    row = _ledger_row(store, group_id, profile, photo)
    return _delete_photos(store, group_id, profile, [row])


def _delete_photos(store: FaceStore, group_id: str, profile: str, rows: list[StoredPoint]) -> Deleted:
    deleted = Deleted(group_id)
    for row in rows:
        stored = row.payload["image_path"]
        faces = list(store.scroll_faces(group_id, profile, Where({"image_path": stored})))
        _remove_faces(store, group_id, profile, faces, deleted, photos_stay=False)
        uploaded = _uploaded_file(local_path(stored))
        if uploaded is not None and uploaded.exists():
            uploaded.unlink()
            deleted.files += 1
        # an uploaded photo leaves no tombstone: nothing can list it again
        store.delete_images(group_id, profile, [row.id], tombstones=uploaded is None)
        deleted.photos += 1
        if stored not in deleted.image_paths:
            deleted.image_paths.append(stored)
    return deleted


def delete_face(store: FaceStore, group_id: str, face_id: str, profile: str | None = None) -> Deleted:
    """Delete one face of the group; its photo stays, without it."""
    profile = _profile_of(store, group_id, profile)
    try:
        found = store.get_faces(group_id, profile, [str(uuid.UUID(face_id))])
    except ValueError:
        raise NothingToDelete(f"{face_id!r} is not a face id (a UUID, as search and `people show` give)") from None
    if not found:
        raise NothingToDelete(f"group {group_id!r} has no face {face_id} (with profile {profile})")
    deleted = Deleted(group_id)
    _remove_faces(store, group_id, profile, found, deleted, photos_stay=True)
    return deleted


def delete_person(
    store: FaceStore, group_id: str, person_id: int, profile: str | None = None, with_photos: bool = False
) -> Deleted:
    """Delete a person and their faces; `with_photos`: their photos too (every face in them, and
    the photos as delete_photo deletes them)."""
    profile = _profile_of(store, group_id, profile)
    try:
        get_person(store, group_id, person_id, profile)
    except PersonNotFound as err:
        raise NothingToDelete(str(err)) from None
    faces = person_faces(store, group_id, person_id, profile)
    if with_photos:
        photos = {face.payload["image_path"] for face in faces}
        rows = store.get_images(group_id, profile, _photo_ids(group_id, profile, photos))
        deleted = _delete_photos(store, group_id, profile, sorted(rows, key=lambda row: row.payload["image_path"]))
    else:
        deleted = Deleted(group_id)
        _remove_faces(store, group_id, profile, faces, deleted, photos_stay=True)
    if store.get_people(group_id, profile, [person_id]):  # a record that had no faces left to recount
        store.delete_people(group_id, profile, [person_id])
        deleted.people += 1
    return deleted


def delete_group(store: FaceStore, group_id: str) -> Deleted:
    """Delete the whole group, in every profile: faces, ledger (tombstones too), people, thumbnails,
    and its uploaded photos."""
    deleted = Deleted(group_id)
    for profile in PROFILES:
        for face in store.scroll_faces(group_id, profile, payload_keys=()):
            thumbnail_path(face.id).unlink(missing_ok=True)
        deleted.faces += store.count_faces(group_id, profile)
        deleted.photos += store.count_images(group_id, profile, Where({"status": ["done", "failed"]}))
        deleted.people += store.count_people(group_id, profile)
        store.delete_group(group_id, profile)
    folder = settings.uploads_dir() / group_id
    # a group id is a file name ('.', '..' are not groups): only a folder directly under uploads/
    if folder.is_dir() and folder.resolve().parent == settings.uploads_dir().resolve():
        deleted.files = sum(1 for item in folder.rglob("*") if item.is_file())
        shutil.rmtree(folder)
    if not (deleted.faces or deleted.photos or deleted.people or deleted.files):
        raise NothingToDelete(f"unknown group {group_id!r}: it has no faces, photos or people")
    return deleted


def faces_to_forget(
    store: FaceStore, group_id: str, profile: str, selfie_faces: list[Face], threshold: float | None = None
) -> SearchResult:
    """The group's faces that "forget me" with `selfie_faces` deletes: every face search matches
    (at the profile's search threshold unless `threshold`), however many."""
    every_face = max(1, store.count_faces(group_id, profile))
    return matching_photos(store, group_id, profile, selfie_faces, top_k=every_face, threshold=threshold)


def forget(
    store: FaceStore, group_id: str, profile: str, selfie_faces: list[Face], threshold: float | None = None
) -> Deleted:
    """Forget me: delete the group's faces that match the selfie's (search.selfie_faces, embedded
    with `profile`); the photos stay, without those faces, and digests keep them out."""
    matches = faces_to_forget(store, group_id, profile, selfie_faces, threshold)
    face_ids = [match.face_id for photo in matches.photos for match in photo.faces]
    deleted = Deleted(group_id)
    _remove_faces(store, group_id, profile, store.get_faces(group_id, profile, face_ids), deleted, photos_stay=True)
    return deleted


# -- verify: are the faces of two photos the same person? ----------------------------------------


@dataclass
class VerifiedFace:
    """The face of one side of a verification: the largest of its photo's, or a stored face."""

    photo: str  # the photo's path or name ("photo 1" for bytes)
    facial_area: dict[str, int]
    faces_in_photo: int  # the largest is compared when there are several
    face_id: str | None = None  # a stored face's id


@dataclass
class Verification:
    verified: bool  # similarity >= threshold
    similarity: float  # cosine similarity of the two faces' embeddings
    threshold: float  # the profile's search threshold: verify says "same person" where search finds them
    profile: str
    face1: VerifiedFace
    face2: VerifiedFace

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def largest_face(photo: str | bytes, name: str, profile: str) -> tuple[Face, int]:
    """The largest face of a photo (a path, or its bytes) and how many it has, found as a digest finds
    faces (default confidence and smallest face); VerifyError when it cannot be read or has none."""
    try:
        data = photo if isinstance(photo, bytes) else read_image_bytes(photo)[0]
        image = decode_image(data)
    except ImageError as err:
        raise VerifyError(f"cannot read {name}: {err}") from None
    faces, _ = faces_in_image(load_profile(profile), image, DEFAULT_CONFIDENCE, DEFAULT_MIN_FACE_SIZE)
    if not faces:
        raise VerifyError(f"no face found in {name}: verify compares one face of each photo")
    return max(faces, key=lambda face: face.box[2] * face.box[3]), len(faces)


def _cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def _verification(similarity: float, profile: str, face1: VerifiedFace, face2: VerifiedFace) -> Verification:
    threshold = PROFILES[profile].search_threshold
    return Verification(similarity >= threshold, round(similarity, 4), threshold, profile, face1, face2)


def _side(face: Face, count: int, name: str) -> VerifiedFace:
    return VerifiedFace(name, dict(zip("xywh", face.box)), count)


def verify(photo1: str | bytes, photo2: str | bytes, profile: str = DEFAULT_PROFILE) -> Verification:
    """Whether the largest faces of two photos (paths, or their bytes) are the same person: their
    similarity against the profile's search threshold."""
    name1 = photo1 if isinstance(photo1, str) else "photo 1"
    name2 = photo2 if isinstance(photo2, str) else "photo 2"
    (face1, count1), (face2, count2) = largest_face(photo1, name1, profile), largest_face(photo2, name2, profile)
    similarity = _cosine(face1.embedding, face2.embedding)
    return _verification(similarity, profile, _side(face1, count1, name1), _side(face2, count2, name2))


def verify_face(
    store: FaceStore, group_id: str, face_id: str, photo: str | bytes, profile: str | None = None
) -> Verification:
    """Whether a stored face of the group and the largest face of `photo` are the same person. The
    photo's face is embedded with the group's profile: its embedding holds the store open meanwhile
    (~0.3 s with dlib)."""
    profile = _profile_of(store, group_id, profile)
    try:
        found = store.get_faces(group_id, profile, [str(uuid.UUID(face_id))], with_vectors=True)
    except ValueError:
        raise VerifyError(f"{face_id!r} is not a face id (a UUID, as search and `people show` give)") from None
    if not found:
        raise VerifyError(f"group {group_id!r} has no face {face_id} (with profile {profile})")
    stored = found[0]
    name = photo if isinstance(photo, str) else "the photo"
    face, count = largest_face(photo, name, profile)
    side1 = VerifiedFace(stored.payload["image_path"], stored.payload["facial_area"], 1, str(stored.id))
    return _verification(_cosine(stored.vector, face.embedding), profile, side1, _side(face, count, name))
