"""What a digest step hands on: each photo's faces and what became of it. Light (numpy, no
model library): the definitions' ops name these types, and Dagster checks their values."""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    face_index: int
    box: tuple[int, int, int, int]  # x, y, w, h in original pixels
    landmarks: list[tuple[float, float]]
    confidence: float
    embedding: np.ndarray = field(repr=False)  # unit length, float32


@dataclass
class ImageResult:
    path: str
    size: int
    mtime_ns: int
    etag: str | None = None
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[Face] = field(default_factory=list)
    faces_dropped: int = 0  # detected below the confidence threshold
    faces_too_small: int = 0  # detected narrower than min_face_size
    unchanged: bool = False  # same bytes as the store already has: not decoded
    previously_digested: bool = False
    error: str | None = None

    @property
    def faces_detected(self) -> int:
        """Every face the detector found: those kept, and those dropped for confidence or size."""
        return len(self.faces) + self.faces_dropped + self.faces_too_small


@dataclass
class ChunkResult:
    images: list[ImageResult]
    seconds: dict[str, float]  # time per stage: read, decode, detect (with alignment), embed
