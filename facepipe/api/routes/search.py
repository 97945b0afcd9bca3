"""Search a group with a selfie: the selfie is embedded by a worker of the search pool, then matched
in the face store (one store operation, never held while a model runs)."""

from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException
from fastapi.concurrency import run_in_threadpool

from facepipe.api.dependencies import KEY, AppServices, Instance, Store, embedded, search_slot
from facepipe.api.paths import group_sources, path_in_sources
from facepipe.api.schemas import SearchAnswer, errors
from facepipe.api.uploads import IMAGE_BASE64, ONE_PHOTO, SELFIE, decoded, photo_bytes
from facepipe.domain.search import SearchError, group_profile, matching_photos
from facepipe.engine.profiles import DEFAULT_PROFILE
from facepipe.engine.weights import MissingWeightsError
from facepipe.store import image_point_id

router = APIRouter(tags=["search"], dependencies=KEY)


@router.post("/search-face", dependencies=ONE_PHOTO, response_model=SearchAnswer, responses=errors(400, 404, 413, 503))
async def post_search_face(
    group_id: Annotated[str, Form()],
    app_services: AppServices,
    store: Store,
    instance: Instance,
    file: SELFIE = None,
    image_base64: IMAGE_BASE64 = None,
    top_k: Annotated[int, Form(ge=1, le=10000)] = 100,
    threshold: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    profile: Annotated[str | None, Form()] = None,
    all_faces: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    """The group's photos showing the selfie's person (its largest face), best first, with scores,
    boxes, face ids and person ids. `threshold` defaults to the profile's calibrated one."""
    data, name = await photo_bytes(file, image_base64)
    await run_in_threadpool(decoded, data, name)  # a bad upload is told apart from a photo with no face
    name = repr(name)
    # embedded before the store is touched, with the profile asked for, else the default: a group
    # digested with another profile is embedded again
    guessed = profile or DEFAULT_PROFILE

    def match(faces: list, embedded_with: str) -> tuple[str, Any]:
        """The group's profile, and the matches of faces embedded with it (None if they were not)."""
        with store() as faces_store:
            chosen = group_profile(faces_store, group_id, profile)
            if chosen != embedded_with:
                return chosen, None
            return chosen, matching_photos(faces_store, group_id, chosen, faces, top_k, threshold)

    try:
        with search_slot(app_services):
            faces = await embedded(app_services, data, name, guessed, all_faces)
            chosen, result = await run_in_threadpool(match, faces, guessed)
            if result is None:
                faces = await embedded(app_services, data, name, chosen, all_faces)
                chosen, result = await run_in_threadpool(match, faces, chosen)
    except SearchError as err:
        raise HTTPException(404 if "unknown group" in str(err) else 400, str(err)) from None
    except MissingWeightsError as err:
        raise HTTPException(503, str(err)) from None
    answer = result.to_dict()
    sources = await run_in_threadpool(group_sources, instance, group_id)
    for found in answer["photos"]:
        found["photo_id"] = image_point_id(group_id, found["image_path"], answer["profile"])
        found["image_path"] = path_in_sources(found["image_path"], sources)
    return answer
