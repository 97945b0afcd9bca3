"""One photo, not stored: its faces (boxes, landmarks, crops), their embeddings, their attributes."""

import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Form, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from facepipe.api.dependencies import KEY, MODEL_LOCK
from facepipe.api.schemas import Embeddings, Faces, Features, errors
from facepipe.api.uploads import (
    CONFIDENCE,
    IMAGE_BASE64,
    MIN_FACE,
    ONE_PHOTO,
    UPLOAD,
    area,
    crop_b64,
    face_fields,
    photo_faces,
)
from facepipe.domain.request import DEFAULT_CONFIDENCE, ProfileName
from facepipe.engine.presets import DEFAULT_MIN_FACE_SIZE
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES
from facepipe.engine.weights import ATTRIBUTE_WEIGHTS, missing_attribute_weights

router = APIRouter(tags=["one photo"], dependencies=KEY)

PHOTO_ERRORS = errors(413, 503)


@router.post(
    "/get-faces",
    dependencies=ONE_PHOTO,
    response_model=Faces,
    response_model_exclude_unset=True,
    responses=PHOTO_ERRORS,
)
async def post_get_faces(
    file: UPLOAD = None,
    image_base64: IMAGE_BASE64 = None,
    profile: Annotated[ProfileName, Form()] = DEFAULT_PROFILE,
    confidence: CONFIDENCE = DEFAULT_CONFIDENCE,
    min_face_size: MIN_FACE = DEFAULT_MIN_FACE_SIZE,
    crops: Annotated[bool, Form(description="Add each face's crop, a base64 JPEG.")] = False,
) -> dict[str, Any]:
    """The photo's faces, left to right: box, confidence, landmarks (and a crop on request)."""
    image, faces = await photo_faces(file, image_base64, profile, confidence, min_face_size)
    answer = []
    for f in faces:
        face = face_fields(f)
        if crops:
            face["crop_jpeg_base64"] = crop_b64(image, f.box)
        answer.append(face)
    return {
        "profile": profile,
        "width": image.shape[1],
        "height": image.shape[0],
        "total_faces": len(answer),
        "faces": answer,
    }


@router.post("/get-embedding", dependencies=ONE_PHOTO, response_model=Embeddings, responses=PHOTO_ERRORS)
async def post_get_embedding(
    file: UPLOAD = None,
    image_base64: IMAGE_BASE64 = None,
    profile: Annotated[ProfileName, Form()] = DEFAULT_PROFILE,
    confidence: CONFIDENCE = DEFAULT_CONFIDENCE,
    min_face_size: MIN_FACE = DEFAULT_MIN_FACE_SIZE,
) -> dict[str, Any]:
    """Each face's embedding (unit length, as stored and searched), with the profile and model."""
    _, faces = await photo_faces(file, image_base64, profile, confidence, min_face_size)
    return {
        "profile": profile,
        "model": PROFILES[profile].model_name,
        "total_faces": len(faces),
        "faces": [
            {
                "face_index": f.face_index,
                "facial_area": area(f.box),
                "confidence": f.confidence,
                "embedding": [round(float(v), 6) for v in f.embedding],
            }
            for f in faces
        ],
    }


def attributes_of(image: np.ndarray, box: Any, attributes: list[str]) -> dict[str, Any]:
    from deepface import DeepFace

    x, y, w, h = box
    with MODEL_LOCK:
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


@router.post(
    "/get-features",
    dependencies=ONE_PHOTO,
    response_model=Features,
    response_model_exclude_unset=True,
    responses=PHOTO_ERRORS,
)
async def post_get_features(
    file: UPLOAD = None,
    image_base64: IMAGE_BASE64 = None,
    profile: Annotated[ProfileName, Form()] = DEFAULT_PROFILE,
    confidence: CONFIDENCE = DEFAULT_CONFIDENCE,
    min_face_size: MIN_FACE = DEFAULT_MIN_FACE_SIZE,
    attributes: Annotated[
        str, Form(description="Comma-separated: age, gender, emotion; none for the landmarks only.")
    ] = "age,gender,emotion",
) -> dict[str, Any]:
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
    image, faces = await photo_faces(file, image_base64, profile, confidence, min_face_size)
    answer = []
    for f in faces:
        face = face_fields(f)
        if wanted:
            face.update(await run_in_threadpool(attributes_of, image, f.box, wanted))
        answer.append(face)
    return {
        "profile": profile,
        "landmark_points": len(faces[0].landmarks) if faces else None,
        "total_faces": len(answer),
        "faces": answer,
    }
