"""The seed system's profile: RetinaFace detection and ArcFace 512-d embedding, on onnxruntime.

deepface fetches the weights into its weights folder when they are reachable; when they are not,
MissingWeightsError names the file and the folder to put it in. The onnxruntime sessions are
built on first use inside the worker process (they must not cross a fork).
"""

import cv2
import numpy as np

from facepipe.engine.profiles import PROFILES, DetectedFace, Detection, FaceDetector, clip_box, unit_rows
from facepipe.engine.weights import build_or_explain

# retina-face's scores are probabilities; candidates down to this are returned, for the digest's
# confidence threshold to drop and count
MIN_SCORE = 0.3

# ArcFace's canonical 5-point template for a 112 x 112 chip (insightface's arcface_dst).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


class RetinaFaceArcFaceProfile:
    spec = PROFILES["retinaface-arcface"]
    # RetinaFace's smallest anchors are 16 px (stride 8); faces of ~20 px are the smallest it finds
    # reliably (not measured here: its weights are a download)
    smallest_face = 20
    # retina-face shrinks any input whose short side passes 1024 px (or long side 1980 px) before
    # the network sees it: larger views are tiled instead, so that small faces survive
    tile_size = 1024
    largest_face: int | None = None

    def __init__(self) -> None:
        from deepface import DeepFace

        retinaface_weight, arcface_weight = self.spec.weights
        self._detector = build_or_explain(
            lambda: DeepFace.build_model("retinaface", task="face_detector"), retinaface_weight
        )
        self._arcface = build_or_explain(lambda: DeepFace.build_model("ArcFace"), arcface_weight)
        # one network finds the faces and their landmarks: the profile is its own detector
        self.detectors: tuple[FaceDetector, ...] = (self,)

    def detector_input(self, image: np.ndarray) -> np.ndarray:
        return image

    def detect(self, pixels: np.ndarray) -> list[Detection]:
        from retinaface import RetinaFace

        # deepface's wrapper would let retina-face rescale the view and keep only scores >= 0.9;
        # the view is already at the scale it needs, and the digest's confidence decides what is kept
        found = RetinaFace.detect_faces(pixels, threshold=MIN_SCORE, model=self._detector.model, allow_upscaling=False)
        faces = []
        for face in found.values() if isinstance(found, dict) else []:
            marks = face["landmarks"]
            # the image's left eye first, as in ArcFace's template (retina-face names them by the person)
            points = [marks["right_eye"], marks["left_eye"], marks["nose"], marks["mouth_right"], marks["mouth_left"]]
            x0, y0, x1, y1 = (float(v) for v in face["facial_area"])
            faces.append(Detection((x0, y0, x1, y1), float(face["score"]), np.array(points, dtype=np.float32)))
        return faces

    def align(self, image: np.ndarray, faces: list[Detection]) -> list[DetectedFace]:
        height, width = image.shape[:2]
        found = []
        for face in faces:
            assert face.landmarks is not None  # RetinaFace gives every face its 5 points
            matrix, _ = cv2.estimateAffinePartial2D(
                face.landmarks.astype(np.float32), ARCFACE_TEMPLATE, method=cv2.LMEDS
            )
            found.append(
                DetectedFace(
                    box=clip_box(*face.box, width, height),
                    landmarks=[(float(x), float(y)) for x, y in face.landmarks],
                    confidence=face.confidence,
                    chip=cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0),
                )
            )
        return found

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        if not chips:
            return np.zeros((0, self.spec.dimension), np.float32)
        # deepface feeds its onnx ArcFace BGR pixels scaled to [0, 1] ("base" normalisation)
        batch = np.stack(chips).astype(np.float32) / 255.0
        return unit_rows(self._arcface.predict(batch))
