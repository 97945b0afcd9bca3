"""A group's photos: upload some (kept under $FACEPIPE_HOME/uploads/{group}/ and digested there) and
list what the group's ledger holds, each photo by its ledger id and its path within its source."""

import hashlib
import itertools
import os
import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from facepipe import settings
from facepipe.api.dependencies import KEY, CodeServerDep, Instance, Store
from facepipe.api.paths import photo_names
from facepipe.api.routes.digests import page_offset, queued_job
from facepipe.api.schemas import GroupPath, Job, Photo, Photos, errors
from facepipe.api.uploads import BINARY, decoded, upload_bytes
from facepipe.clients.local import photo_reader
from facepipe.domain.request import default_workers, digest_request
from facepipe.domain.thumbnails import face_crop_jpeg, read_stored_photo
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES
from facepipe.store import FaceStore, StoredPoint, Where

router = APIRouter(tags=["photos"], dependencies=KEY)

MAX_PHOTOS_PER_UPLOAD = 20  # the body of an upload may hold this many photos at the byte budget each
MAX_NAME_LENGTH = 200  # characters of an uploaded photo's file name, extension kept


def group_uploads(group_id: str) -> Path:
    return settings.uploads_dir() / group_id


def safe_name(filename: str | None) -> str:
    """The upload's file name without any folder (a client's `../../x.jpg` is `x.jpg`), without a
    leading dot (no hidden file, no `..`), at most MAX_NAME_LENGTH characters."""
    name = PurePosixPath((filename or "").replace("\\", "/").replace("\0", "")).name.lstrip(".")
    if not name:
        return "photo.jpg"
    stem, suffix = os.path.splitext(name)
    return stem[: MAX_NAME_LENGTH - len(suffix[:20])] + suffix[:20]


def keep_photo(folder: Path, name: str, data: bytes) -> Path:
    """Write the photo into `folder` as `name`, never over another photo: the same bytes under that
    name are kept as they are; different ones get `name-2`, `name-3`, ... ."""
    folder.mkdir(parents=True, exist_ok=True)
    stem, suffix = os.path.splitext(name)
    digest = hashlib.sha256(data).digest()
    for n in itertools.count(1):
        path = folder / (name if n == 1 else f"{stem}-{n}{suffix}")
        try:
            with open(path, "xb") as f:  # created here, or it exists: no photo is ever overwritten
                f.write(data)
            return path
        except FileExistsError:
            if hashlib.sha256(path.read_bytes()).digest() == digest:
                return path
    raise AssertionError("unreachable")


@router.post("/groups/{group_id}/photos", status_code=202, response_model=Job, responses=errors(413, 503))
async def post_photos(
    group_id: GroupPath,
    files: Annotated[
        list[UploadFile],
        File(
            description=f"One or more photos (at most {MAX_PHOTOS_PER_UPLOAD}).",
            json_schema_extra={"items": {"type": "string", **BINARY}},
        ),
    ],
    instance: Instance,
    code_server: CodeServerDep,
) -> dict[str, Any]:
    """Keep the photos in the group's upload folder and queue a digest of that folder (the photos
    digested before are skipped); poll GET /v1/get-digests/{job_id}. Each photo is refused (413,
    422) as the one-photo endpoints refuse it, and none is kept then."""
    if len(files) > MAX_PHOTOS_PER_UPLOAD:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "files"),
                    "msg": f"{len(files)} photos: at most {MAX_PHOTOS_PER_UPLOAD} in one request",
                }
            ]
        )
    photos = []
    for file in files:
        data = await upload_bytes(file)
        await run_in_threadpool(decoded, data, file.filename)  # within the pixel budget, a photo at all
        photos.append((safe_name(file.filename), data))
    folder = group_uploads(group_id)
    for name, data in photos:
        await run_in_threadpool(keep_photo, folder, name, data)
    request = digest_request(str(folder), group_id)
    return await run_in_threadpool(queued_job, request, default_workers(), instance, code_server)


def ledger_profile(store: FaceStore, group_id: str, profile: str | None) -> str:
    """The profile whose ledger lists the group's photos: `profile`, or the first that has any."""
    if profile:
        return profile
    for name in sorted(PROFILES, key=lambda p: p != DEFAULT_PROFILE):
        if store.count_images(group_id, name):
            return name
    raise HTTPException(404, f"unknown group {group_id!r}: no photo was digested into it")


@router.get("/groups/{group_id}/photos", response_model=Photos, responses=errors(404, 503))
def get_photos(
    group_id: GroupPath,
    store: Store,
    instance: Instance,
    profile: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[str | None, Query(description="The `next_offset` of the page before.")] = None,
) -> dict[str, Any]:
    """The group's photos as its ledger records them, a page at a time: each with its id (for
    DELETE), its path within the source it was digested from, its status and its faces."""
    if profile and profile not in PROFILES:
        raise HTTPException(404, f"no profile {profile!r}: choose among {sorted(PROFILES)}")
    offset = page_offset(offset, "a photo id")
    with store() as faces:
        chosen = ledger_profile(faces, group_id, profile)
        keys = ("image_path", "status", "error", "faces", "run_id", "timestamp")
        # a deleted photo's tombstone is no photo of the group
        where = Where({"status": ["done", "failed"]})
        ledger, next_offset = faces.images_page(group_id, chosen, where, limit, offset, payload_keys=keys)
    names = photo_names(instance, ledger)
    photos = [
        Photo(
            photo_id=p.id,
            path=names[p.payload["image_path"]],
            status=p.payload["status"],
            error=p.payload.get("error"),
            faces=p.payload.get("faces") or 0,
            digested=p.payload.get("timestamp"),
        )
        for p in ledger
    ]
    return {"group_id": group_id, "profile": chosen, "photos": photos, "next_offset": next_offset}


def stored_face(store: FaceStore, group_id: str, face_id: str) -> StoredPoint:
    """The group's face by its id, whichever profile stored it; 404 if the group has none such."""
    try:
        face_id = str(uuid.UUID(face_id))
    except ValueError:
        raise HTTPException(404, f"no face {face_id!r} in group {group_id!r}: a face id is a UUID") from None
    for profile in PROFILES:
        for face in store.get_faces(group_id, profile, [face_id]):
            return face
    raise HTTPException(404, f"no face {face_id!r} in group {group_id!r}")


@router.get(
    "/groups/{group_id}/faces/{face_id}/crop",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "JPEG"},
        **errors(404, 503),
    },
)
def get_face_crop(group_id: GroupPath, face_id: str, store: Store) -> Response:
    """The face cut out of its photo as a JPEG, at the photo's resolution, with a margin (a square a
    half larger than the face's box). 404 for a face the group does not have, or whose photo can no
    longer be read."""
    with store() as faces:
        face = stored_face(faces, group_id, face_id)
    in_s3 = face.payload["image_path"].startswith("s3://")
    jpeg = face_crop_jpeg(face, photo_reader([face]) if in_s3 else read_stored_photo)
    if jpeg is None:
        raise HTTPException(404, f"face {face_id!r}: its photo can no longer be read (moved or deleted)")
    return Response(jpeg, media_type="image/jpeg")
