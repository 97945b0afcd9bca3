"""Where model weights live, and how they get there.

deepface looks for weights in `$DEEPFACE_HOME/.deepface/weights` (DEEPFACE_HOME defaults to the
user's home) and downloads the missing ones. The dlib profile's weights ship in the PyPI package
face_recognition_models, so we link them there and nothing is downloaded.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from facepipe import settings
from facepipe.engine.profiles import PROFILES, Weight


class MissingWeightsError(RuntimeError):
    """A model weight is not on disk and could not be fetched."""


def weights_folder() -> Path:
    return settings.deepface_home() / ".deepface" / "weights"


def link_bundled_dlib_weights() -> Path:
    """Link face_recognition_models' dlib weights into deepface's weights folder."""
    import face_recognition_models

    source = Path(face_recognition_models.__file__).parent / "models"
    folder = weights_folder()
    folder.mkdir(parents=True, exist_ok=True)
    for name in (weight.file for weight in PROFILES["dlib"].weights):
        target = folder / name
        if target.exists():
            continue
        # missing, or a link left broken by a removed environment: link it anew, atomically, since
        # other worker processes may be doing the same
        fresh = folder / f".{name}.{os.getpid()}"
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(source / name)
        fresh.replace(target)
    return folder


Model = TypeVar("Model")


def build_or_explain(build: Callable[[], Model], weight: Weight) -> Model:
    """Run a deepface model builder; when its weight cannot be fetched, say which file goes where."""
    try:
        return build()
    except Exception as err:
        file_name, url = weight.file, weight.url
        if (weights_folder() / file_name).is_file():
            raise
        raise MissingWeightsError(
            f"model weight {file_name} is missing from {weights_folder()} and could not be "
            f"downloaded ({type(err).__name__}: {err}). Download it from {url} and put it in "
            f"{weights_folder()}, or set DEEPFACE_HOME to a folder whose .deepface/weights has it."
        ) from err


# deepface's facial attribute models (the HTTP API's /get-features), on onnxruntime: model, weight file
ATTRIBUTE_WEIGHTS = {
    "age": ("Age", "age_model_weights.onnx"),
    "gender": ("Gender", "gender_model_weights.onnx"),
    "emotion": ("Emotion", "facial_expression_model_weights.onnx"),
}
ATTRIBUTE_WEIGHTS_URL = "https://github.com/serengil/deepface_models/releases/download/v1.0/"


def missing_attribute_weights(attributes: list[str]) -> MissingWeightsError | None:
    """What is missing for deepface to tell `attributes` (age, gender, emotion), said as the error
    to raise; None when every weight is there."""
    missing = [
        ATTRIBUTE_WEIGHTS[a][1] for a in attributes if not (weights_folder() / ATTRIBUTE_WEIGHTS[a][1]).is_file()
    ]
    if not missing:
        return None
    return MissingWeightsError(
        f"deepface's attribute weights {', '.join(missing)} are missing from {weights_folder()} (they are not "
        f"downloaded here). Download them from {ATTRIBUTE_WEIGHTS_URL} and put them in {weights_folder()}, or set "
        "DEEPFACE_HOME to a folder whose .deepface/weights has them; "
        "or ask for attributes=none to get the landmarks only."
    )
