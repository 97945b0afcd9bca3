"""What the one-photo endpoints share: an upload's bytes within the byte budget, decoded within the
pixel budget by the digests' own code, and its faces found with the models of this process."""

import base64
from typing import Annotated, Any

import cv2
import numpy as np
from fastapi import Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

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


def optional_file(schema: dict[str, Any]) -> None:
    """An optional upload's schema as a file's (a string, format binary), not `anyOf [file, null]`:
    a field left out of a form is what makes it optional, and a generator reads this one as a file."""
    schema.pop("anyOf", None)
    schema.update(type="string", contentMediaType="application/octet-stream", **BINARY)


UPLOAD = Annotated[
    UploadFile | None,
    File(description="One photo (JPEG, PNG, WebP, ...); or give `image_base64`.", json_schema_extra=optional_file),
]
SELFIE = Annotated[
    UploadFile | None, File(description="The selfie; or give `image_base64`.", json_schema_extra=optional_file)
]
IMAGE_BASE64 = Annotated[
    str | None, Form(description="The photo's bytes in base64 (a `data:image/...;base64,` URL too), instead of `file`.")
]


async def each_part_once(request: Request) -> None:
    """422 for a form that repeats a part (two `file` parts to a one-photo endpoint): FastAPI would
    read the last and drop the others unsaid. The form is the one FastAPI parsed (Starlette keeps it)."""
    form = await request.form()
    for key in form:
        if (given := len(form.getlist(key))) > 1:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("body", key), "msg": f"give one `{key}`, not {given}"}]
            )


# the dependency of each endpoint that takes one photo (or one of each of verify's two)
ONE_PHOTO = [Depends(each_part_once)]


def base64_size(size: int) -> int:
    """The length of `size` bytes written in base64, with room for a data: URL's header."""
    return (size + 2) // 3 * 4 + 256


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


async def photo_bytes(file: UploadFile | None, image_base64: str | None, which: str = "") -> tuple[bytes, str]:
    """The photo given as a file or in base64 (exactly one of the two), within the byte budget, and
    a name for it in messages (the file's, or its field's). `which`: "1", "2" for verify's fields."""
    file_field, text_field = f"file{which}", f"image_base64{'_' + which if which else ''}"
    if (file is None) == (not image_base64):
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", file_field),
                    "msg": f"give one photo: a `{file_field}`, or its bytes in `{text_field}`",
                }
            ]
        )
    if file is not None:
        return await upload_bytes(file), str(file.filename)
    assert image_base64 is not None
    text = image_base64.split(",", 1)[1] if image_base64.startswith("data:") else image_base64
    budget = settings.max_image_bytes()
    if len(text) * 3 // 4 > budget + 2:  # refused by its length before it is decoded
        raise HTTPException(413, f"{text_field}: {too_large(len(text) * 3 // 4, budget, 'upload')}")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except ValueError:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", text_field), "msg": f"{text_field} is not base64"}]
        ) from None
    if len(data) > budget:
        raise HTTPException(413, f"{text_field}: {too_large(len(data), budget, 'upload')}")
    return data, text_field


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
    file: UploadFile | None, image_base64: str | None, profile: str, confidence: float, min_face_size: int
) -> tuple[np.ndarray, list[Face]]:
    data, name = await photo_bytes(file, image_base64)
    image = await run_in_threadpool(decoded, data, name)
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
