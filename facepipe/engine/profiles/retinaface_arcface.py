"""The seed system's profile: RetinaFace detection and ArcFace 512-d embedding, on onnxruntime.

deepface fetches the weights into its weights folder when they are reachable; when they are not,
MissingWeightsError names the file and the folder to put it in. The onnxruntime sessions are
built on first use inside the worker process (they must not cross a fork).
"""

import cv2
import numpy as np

from facepipe.engine.images import resize_long_side
from facepipe.engine.profiles import DetectedFace, clip_box, unit_rows
from facepipe.engine.weights import build_or_explain

RETINAFACE_WEIGHTS = ("retinaface.onnx", "https://github.com/serengil/deepface_models/releases/download/v1.0/retinaface.onnx")
ARCFACE_WEIGHTS = ("arcface_weights.onnx", "https://github.com/serengil/deepface_models/releases/download/v1.0/arcface_weights.onnx")

# ArcFace's canonical 5-point template for a 112 x 112 chip (insightface's arcface_dst).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


class RetinaFaceArcFaceProfile:
    name = "retinaface-arcface"
    detector = "retinaface"
    model = "ArcFace"
    dimension = 512

    def __init__(self) -> None:
        from deepface import DeepFace

        self._detector = build_or_explain(
            lambda: DeepFace.build_model("retinaface", task="face_detector"), *RETINAFACE_WEIGHTS
        )
        self._arcface = build_or_explain(lambda: DeepFace.build_model("ArcFace"), *ARCFACE_WEIGHTS)

    def faces(self, image: np.ndarray, detection_size: int) -> list[DetectedFace]:
        height, width = image.shape[:2]
        small, scale = resize_long_side(image, detection_size)
        found = []
        for region in self._detector.detect_faces(small):
            # the image's left eye first, as in ArcFace's template (retinaface names them by the person)
            points = [region.right_eye, region.left_eye, region.nose, region.mouth_right, region.mouth_left]
            landmarks = np.array(points, dtype=np.float32) / scale
            matrix, _ = cv2.estimateAffinePartial2D(landmarks, ARCFACE_TEMPLATE, method=cv2.LMEDS)
            found.append(
                DetectedFace(
                    box=clip_box(region.x / scale, region.y / scale, (region.x + region.w) / scale,
                                 (region.y + region.h) / scale, width, height),
                    landmarks=[(float(x), float(y)) for x, y in landmarks],
                    confidence=float(region.confidence),
                    chip=cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0),
                )
            )
        return found

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.dimension), np.float32)
        # deepface feeds its onnx ArcFace BGR pixels scaled to [0, 1] ("base" normalisation)
        batch = np.stack(chips).astype(np.float32) / 255.0
        return unit_rows(self._arcface.predict(batch))
