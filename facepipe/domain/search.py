"""Search a group with a selfie: the group's photos showing the same person, best first.

The selfie goes through the same engine as a digest (decode, detect, align, embed with the
group's profile); its face is then a cosine query to Qdrant, filtered to the group. The embedding
(~0.3 CPU-s with dlib) is done before the store is opened, which is held for the query only (ms).

Default thresholds (cosine similarity of L2-normalised embeddings), each profile's
`search_threshold` (engine/profiles):
- dlib 0.93, measured on three labelled sets, 173 people (benchmarks/search_threshold.py):
  ../shared/faces images/ and lfw10/, and benchmarks/identities/lfw150/. No threshold gives both
  recall >= 0.97 and no stranger on them: dlib's ResNet puts some different people's faces closer
  than some of one person's (the closest different-person pair is at 0.9522, the farthest
  same-person pair at 0.8455). 0.93 has the best pairwise F1 on the three together (0.913): it
  matches 0.913 of the same-person pairs and 244 of 553,172 different-person pairs (4.4 in
  10,000). Searching as a user does (each labelled photo in turn the selfie, a photo returned on
  its best face), it finds 0.914 of a person's photos, and 0.46 photos of other people per search
  among 1,057 photos; on images/ alone 0.994 with 4 stranger photos in 62 searches (the look-alikes
  person05 and person06, 0.9344). A lower --threshold finds more of a person and more strangers.
- retinaface-arcface 0.32: deepface's ArcFace cosine distance of 0.68, not calibrated here (its
  weights cannot be downloaded where this was measured).
"""

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from facepipe.domain.request import DEFAULT_CONFIDENCE
from facepipe.engine.faces import Face, faces_in_image
from facepipe.engine.images import decode_image
from facepipe.engine.listing import ImageError, read_image_bytes
from facepipe.engine.presets import DEFAULT_MIN_FACE_SIZE
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES, load_profile
from facepipe.store import FaceStore


class SearchError(Exception):
    """A search that cannot be made: unreadable selfie, no face in it, unknown group."""


class FacialArea(TypedDict):
    """A face's box in its photo's pixels, as the store keeps it."""

    x: int
    y: int
    w: int
    h: int


class QueryFace(TypedDict):
    """A selfie face searched with."""

    facial_area: FacialArea
    confidence: float


@dataclass
class Match:
    face_id: str
    score: float  # cosine similarity to the query face
    facial_area: FacialArea
    face_index: int
    person_id: int | None
    query_face: int  # which face of the selfie matched


@dataclass
class PhotoMatch:
    image_path: str
    score: float  # of its best face
    faces: list[Match] = field(default_factory=list)


@dataclass
class SearchResult:
    group_id: str
    profile: str
    threshold: float
    query_faces: list[QueryFace]
    photos: list[PhotoMatch]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _area(box: tuple[int, int, int, int]) -> FacialArea:
    x, y, w, h = box
    return FacialArea(x=x, y=y, w=w, h=h)


def group_profiles(store: FaceStore, group_id: str) -> list[str]:
    """The profiles whose face collection holds faces of the group."""
    found = [p for p in PROFILES if store.count_faces(group_id, p)]
    if not found:  # an empty group: unknown, or a damaged store (StoreDamaged, never "unknown")
        for profile in PROFILES:
            store.check_group_kept(group_id, profile)
    return sorted(found, key=lambda p: p != DEFAULT_PROFILE)


def selfie_faces(selfie_path: str, profile_name: str, all_faces: bool = False) -> list[Face]:
    """The selfie's faces (engine Face objects), the largest only unless `all_faces`; the selfie's
    faces are found as a digest with the default confidence finds the group's."""
    try:
        data = read_image_bytes(selfie_path)[0]
    except ImageError as err:
        raise SearchError(f"cannot read the selfie {selfie_path}: {err}") from None
    return selfie_faces_in(data, selfie_path, profile_name, all_faces)


def selfie_faces_in(data: bytes, name: str, profile_name: str, all_faces: bool = False) -> list[Face]:
    """The faces of a selfie's bytes (`name` for the messages), as selfie_faces finds them. Runs in
    the HTTP service's search workers: no store, only the profile's models."""
    try:
        image = decode_image(data)
    except ImageError as err:
        raise SearchError(f"cannot read the selfie {name}: {err}") from None
    profile = load_profile(profile_name)
    # a selfie's face is large: faces of 1/8 of the photo are looked for first, which is fast
    large = max(DEFAULT_MIN_FACE_SIZE, max(image.shape[:2]) // 8)
    faces = [] if all_faces else faces_in_image(profile, image, DEFAULT_CONFIDENCE, large)[0]
    if not faces:  # every face (--all-faces), or a small one: as a digest finds them
        faces, _ = faces_in_image(profile, image, DEFAULT_CONFIDENCE, DEFAULT_MIN_FACE_SIZE)
    if not faces:
        raise SearchError(f"no face found in the selfie {name}")
    if not all_faces:
        faces = [max(faces, key=lambda f: f.box[2] * f.box[3])]
    return faces


def group_profile(store: FaceStore, group_id: str, profile: str | None = None) -> str:
    """The profile to search the group with: `profile`, or the one its faces have (the default first)."""
    profiles = group_profiles(store, group_id)
    if not profiles or (profile and profile not in profiles):
        with_profile = f" with profile {profile!r}" if profile else ""
        raise SearchError(f"unknown group {group_id!r}: it has no faces{with_profile}; digest photos into it first")
    return profile or profiles[0]


def search_faces(
    store: FaceStore,
    selfie_path: str,
    group_id: str,
    profile: str | None = None,
    top_k: int = 100,
    threshold: float | None = None,
    all_faces: bool = False,
) -> SearchResult:
    """The group's photos with a face like the selfie's, grouped by photo, best first.

    `top_k` caps the faces matched per selfie face; `threshold` is the least cosine similarity.
    The store stays open while the selfie is embedded: for a process that holds it anyway (tests,
    the notebook); the CLI and the HTTP service embed first (selfie_faces, then matching_photos).
    """
    profile = group_profile(store, group_id, profile)
    if not Path(selfie_path).is_file():
        raise SearchError(f"no such selfie file: {selfie_path}")
    faces = selfie_faces(selfie_path, profile, all_faces)
    return matching_photos(store, group_id, profile, faces, top_k, threshold)


def matching_photos(
    store: FaceStore, group_id: str, profile: str, faces: list[Face], top_k: int = 100, threshold: float | None = None
) -> SearchResult:
    """The group's photos with a face like one of `faces` (the selfie's, embedded with `profile`):
    a query of the store per face, milliseconds each."""
    threshold = PROFILES[profile].search_threshold if threshold is None else threshold
    photos: dict[str, PhotoMatch] = {}
    best: dict[tuple[str, str], Match] = {}  # one match per stored face: its best query face
    for query_index, face in enumerate(faces):
        for point in store.nearest_faces(group_id, profile, face.embedding.tolist(), limit=top_k, min_score=threshold):
            key = (point.payload["image_path"], str(point.id))
            score = round(float(point.score or 0.0), 4)  # a query's points all have a score
            if key in best and best[key].score >= score:
                continue
            best[key] = Match(
                str(point.id),
                score,
                point.payload["facial_area"],
                point.payload["face_index"],
                point.payload.get("person_id"),
                query_index,
            )
    by_photo: defaultdict[str, list[Match]] = defaultdict(list)
    for (image_path, _), match in best.items():
        by_photo[image_path].append(match)
    for image_path, matches in by_photo.items():
        matches.sort(key=lambda m: -m.score)
        photos[image_path] = PhotoMatch(image_path, matches[0].score, matches)
    query_faces = [QueryFace(facial_area=_area(f.box), confidence=f.confidence) for f in faces]
    ranked = sorted(photos.values(), key=lambda p: (-p.score, p.image_path))
    return SearchResult(group_id, profile, threshold, query_faces, ranked)
