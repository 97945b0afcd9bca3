"""Deletes (the right to be forgotten): a photo, a face, a person, a group, and "forget me" with a
selfie; and 1:1 verify. Each through facepipe.domain.forget, one store operation at a time."""

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from facepipe.api.dependencies import KEY, MODEL_LOCK, AppServices, Instance, Store, embedded, search_slot
from facepipe.api.paths import group_sources, path_in_sources
from facepipe.api.schemas import Deleted, GroupPath, Verified, errors
from facepipe.api.uploads import IMAGE_BASE64, ONE_PHOTO, SELFIE, decoded, optional_file, photo_bytes
from facepipe.domain.forget import (
    NothingToDelete,
    VerifyError,
    delete_face,
    delete_group,
    delete_person,
    delete_photo,
    forget,
    verify,
    verify_face,
)
from facepipe.domain.request import ProfileName
from facepipe.domain.search import SearchError, group_profile
from facepipe.engine.profiles import DEFAULT_PROFILE
from facepipe.engine.weights import MissingWeightsError

router = APIRouter(tags=["forget"], dependencies=KEY)

PHOTO_FIELD = Annotated[UploadFile | None, File(json_schema_extra=optional_file)]


def answer(deleted: Any, instance: Instance) -> dict[str, Any]:
    """What a delete removed, its photos by their paths within their sources."""
    sources = group_sources(instance, deleted.group_id)
    found = deleted.to_dict()
    found["photo_paths"] = [path_in_sources(path, sources) for path in found.pop("image_paths")]
    return found


def deleting(store: Store, delete: Any, *args: Any, **kwargs: Any) -> Any:
    with store() as faces:
        try:
            return delete(faces, *args, **kwargs)
        except NothingToDelete as err:
            raise HTTPException(404, str(err)) from None


@router.delete("/groups/{group_id}/photos/{photo_id}", response_model=Deleted, responses=errors(404, 503))
def delete_one_photo(group_id: GroupPath, photo_id: str, store: Store, instance: Instance) -> dict[str, Any]:
    """Delete a photo (its id, from GET .../photos): its faces, and its ledger row, which stays as a
    tombstone so that later digests leave the photo out; an uploaded photo's file is removed."""
    return answer(deleting(store, delete_photo, group_id, photo_id), instance)


@router.delete("/groups/{group_id}/faces/{face_id}", response_model=Deleted, responses=errors(404, 503))
def delete_one_face(group_id: GroupPath, face_id: str, store: Store, instance: Instance) -> dict[str, Any]:
    """Delete one face: gone from search, its person and its thumbnail; its photo stays."""
    return answer(deleting(store, delete_face, group_id, face_id), instance)


@router.delete("/groups/{group_id}/people/{person_id}", response_model=Deleted, responses=errors(404, 503))
def delete_one_person(
    group_id: GroupPath, person_id: int, store: Store, instance: Instance, with_photos: bool = False
) -> dict[str, Any]:
    """Delete a person and their faces; `with_photos`: their photos too, every face in them."""
    return answer(deleting(store, delete_person, group_id, person_id, with_photos=with_photos), instance)


@router.delete("/groups/{group_id}", response_model=Deleted, responses=errors(404, 503))
def delete_whole_group(group_id: GroupPath, store: Store, instance: Instance) -> dict[str, Any]:
    """Delete the group in every profile: faces, photos, people, thumbnails and its uploaded photos."""
    return answer(deleting(store, delete_group, group_id), instance)


@router.post(
    "/groups/{group_id}/forget", dependencies=ONE_PHOTO, response_model=Deleted, responses=errors(400, 404, 413, 503)
)
async def post_forget(
    group_id: GroupPath,
    app_services: AppServices,
    store: Store,
    instance: Instance,
    file: SELFIE = None,
    image_base64: IMAGE_BASE64 = None,
    threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
) -> dict[str, Any]:
    """Forget me: delete the group's faces that match the selfie's largest face (the faces a search
    with it finds, at the profile's search threshold); the photos stay, without them."""
    data, name = await photo_bytes(file, image_base64)
    await run_in_threadpool(decoded, data, name)

    def profile_of_group() -> str:
        with store() as faces:
            return group_profile(faces, group_id)

    def forgotten(selfie_faces: list) -> Any:
        with store() as faces:
            return forget(faces, group_id, profile, selfie_faces, threshold)

    try:
        profile = await run_in_threadpool(profile_of_group)
        with search_slot(app_services):
            selfie_faces = await embedded(app_services, data, repr(name), profile, False)
        deleted = await run_in_threadpool(forgotten, selfie_faces)
    except SearchError as err:
        raise HTTPException(404 if "unknown group" in str(err) else 400, str(err)) from None
    except MissingWeightsError as err:
        raise HTTPException(503, str(err)) from None
    return answer(deleted, instance)


@router.post("/verify", dependencies=ONE_PHOTO, response_model=Verified, responses=errors(400, 404, 413, 503))
async def post_verify(
    store: Store,
    file1: PHOTO_FIELD = None,
    file2: PHOTO_FIELD = None,
    image_base64_1: IMAGE_BASE64 = None,
    image_base64_2: IMAGE_BASE64 = None,
    group_id: Annotated[str | None, Form(description="With face_id: the group of the stored face.")] = None,
    face_id: Annotated[str | None, Form(description="A stored face, compared with photo 2.")] = None,
    profile: Annotated[ProfileName | None, Form()] = None,
) -> dict[str, Any]:
    """Whether two faces are the same person: the largest faces of two photos (file1 and file2, or
    their base64), or a stored face (group_id and face_id) and the largest face of photo 2. Their
    cosine similarity against the profile's search threshold: verify says "same person" where
    search finds them."""
    second, name2 = await photo_bytes(file2, image_base64_2, "2")
    await run_in_threadpool(decoded, second, name2)
    try:
        if face_id:
            if not group_id:
                raise HTTPException(422, "face_id needs the group_id of its group")

            def against_stored() -> Any:
                with store() as faces, MODEL_LOCK:
                    return verify_face(faces, group_id, face_id, second, profile)

            result = await run_in_threadpool(against_stored)
        else:
            first, name1 = await photo_bytes(file1, image_base64_1, "1")
            await run_in_threadpool(decoded, first, name1)

            def photos() -> Any:
                with MODEL_LOCK:
                    return verify(first, second, profile or DEFAULT_PROFILE)

            result = await run_in_threadpool(photos)
    except VerifyError as err:
        message = str(err)
        if "no face found" in message:
            raise HTTPException(400, message) from None
        raise HTTPException(404 if "has no face" in message or "not a face id" in message else 422, message) from None
    except MissingWeightsError as err:
        raise HTTPException(503, str(err)) from None
    found = result.to_dict()
    return {key: found[key] for key in ("verified", "similarity", "threshold", "profile")}
