"""What the one-photo endpoints share: an upload's bytes within the byte budget, decoded within the
pixel budget by the digests' own code, and its faces found with the models of this process."""

import base64
from typing import Annotated, Any

import cv2
import numpy as np
from fastapi import File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from facepipe import settings
from facepipe.api.dependencies import MODEL_LOCK
from facepipe.engine.faces import Face, faces_in_image
from facepipe.engine.images import decode_image
from facepipe.engine.listing import ImageError, too_large
from facepipe.engine.profiles import load_profile
from facepipe.engine.weights import MissingWeightsError

UPLOAD_CHUNK = 1 << 20

CONFIDENCE = Annotated[float, Form(ge=0.0, le=1.0, description="Faces detected below this are left out.")]
MIN_FACE = Annotated[int, Form(ge=8, description="The narrowest face to find, in the photo's pixels.")]
# `format: binary` beside FastAPI's contentMediaType: what client generators (openapi-python-client)
# read as a file to upload, not a string
BINARY = {"format": "binary"}
UPLOAD = Annotated[UploadFile, File(description="One photo (JPEG, PNG, WebP, ...).", json_schema_extra=BINARY)]


async def upload_bytes(file: UploadFile) -> bytes:
    """The upload's bytes, refused past the byte budget digests use (FACEPIPE_MAX_IMAGE_BYTES)."""
    budget = settings.max_image_bytes()
    chunks, size = [], 0
    while chunk := await file.read(UPLOAD_CHUNK):
        size += len(chunk)
        if size > budget:
            raise HTTPException(413, f"{file.filename}: {too_large(size, budget, 'upload')}")
        chunks.append(chunk)
    return b"".join(chunks)


def decoded(data: bytes, name: str | None) -> np.ndarray:
    """Decoded by the digests' own code: the pixel budget and the formats are theirs."""
    try:
        return decode_image(data)
    except ImageError as err:
        status = 413 if str(err).startswith("refused") else 422
        raise HTTPException(status, f"file {name!r}: {err}") from None


def faces_of(image: np.ndarray, profile_name: str, confidence: float, min_face_size: int) -> list[Face]:
    try:
        with MODEL_LOCK:
            return faces_in_image(load_profile(profile_name), image, confidence, min_face_size)[0]
    except MissingWeightsError as err:
        raise HTTPException(503, str(err)) from None


async def photo_faces(
    file: UploadFile, profile: str, confidence: float, min_face_size: int
) -> tuple[np.ndarray, list[Face]]:
    data = await upload_bytes(file)
    image = await run_in_threadpool(decoded, data, file.filename)
    faces = await run_in_threadpool(faces_of, image, profile, confidence, min_face_size)
    return image, faces


def area(box: Any) -> dict[str, int]:
    return dict(zip("xywh", (int(v) for v in box)))


def face_fields(face: Face) -> dict[str, Any]:
    """What every one-photo endpoint says of a face: index, box, confidence, landmarks."""
    return {
        "face_index": face.face_index,
        "facial_area": area(face.box),
        "confidence": face.confidence,
        "landmarks": [[round(x, 1), round(y, 1)] for x, y in face.landmarks],
    }


def crop_b64(image: np.ndarray, box: Any, margin: float = 0.25) -> str:
    """The face with a margin, as a base64 JPEG."""
    x, y, w, h = box
    pad_x, pad_y = int(w * margin), int(h * margin)
    crop = image[max(0, y - pad_y) : y + h + pad_y, max(0, x - pad_x) : x + w + pad_x]
    return base64.b64encode(cv2.imencode(".jpg", crop)[1].tobytes()).decode()
