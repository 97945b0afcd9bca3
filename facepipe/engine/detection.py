"""Find every face of at least `min_face_size` pixels, whatever the size of the photo.

A detector sees faces down to its own smallest size (`smallest_face`, in the pixels it is given:
64 px for dlib's HOG, 40 px for YuNet). To find faces of `min_face_size` pixels in the full-size
photo, the photo is scaled by smallest_face / min_face_size before detection: shrunk when only
large faces are wanted, enlarged when small ones are. No fixed pixel budget decides what is found.

When the scaled photo is larger than the detector takes whole (`detector.tile_size` a side: a
memory bound for dlib, the network's input for RetinaFace), it is cut into as few overlapping
tiles as cover it, each scaled on its own so that the enlarged photo never exists in memory. A
face smaller than the overlap lies wholly inside a tile; the photo is also seen whole at a third
of the scale, where the faces too large for the overlap are found. Detections cut by a tile's
inner edge are dropped and duplicates merged.

A detector that sees faces only up to a size (`detector.largest_face`: YuNet's anchors end at 256
px) is given a pyramid instead: the photo at the scale, then each view `largest_face /
smallest_face` times smaller, down to the one where the whole photo is no wider than its largest
face. Each view keeps the faces of its own band (a face too large for a view is cut into
fragments there, and found whole in a coarser one); its tiles overlap by more than that band, and
each keeps the faces centred in its own part of the overlap (a face near a tile's edge may be
found there with a shifted box, and whole in the neighbour).
"""

import math

import cv2
import numpy as np

from facepipe.engine.profiles import Detection, FaceDetector

# A part of the photo in its pixels: x0, y0, x1, y1
Region = tuple[int, int, int, int]

# How much wider than the face the overlap between tiles is: the detector needs a little context.
OVERLAP_MARGIN = 1.25
# A detection this close (detector pixels) to a tile's inner edge is taken as cut by it.
EDGE = 2


def detection_scale(smallest_face: int, min_face_size: float) -> float:
    """The scale at which a face of `min_face_size` pixels is the smallest the detector sees."""
    return smallest_face / min_face_size


def detect_faces(detector: FaceDetector, image: np.ndarray, scale: float) -> list[Detection]:
    """Every face `detector` finds in `image` seen at `scale`, in `image`'s pixels, best first."""
    pixels = detector.detector_input(image)
    height, width = pixels.shape[:2]
    tile = detector.tile_size
    if detector.largest_face is not None:
        return merge_duplicates(_detect_pyramid(detector, pixels, scale, detector.largest_face))
    if max(width, height) * scale <= tile:
        return merge_duplicates(_detect_region(detector, pixels, scale, (0, 0, width, height)))

    # the whole photo at a third of the scale (or less, to fit one tile), for the faces too large
    # for the overlap: a third keeps the overlap small and the whole view cheap (~1/9 of the tiles)
    whole_scale = min(scale / 3, tile / max(width, height))
    found = _detect_region(detector, pixels, whole_scale, (0, 0, width, height))
    # tiles at `scale`, overlapping by more than the largest face the whole view may miss
    overlap = min(tile // 2, math.ceil(OVERLAP_MARGIN * detector.smallest_face * scale / whole_scale))
    for x0, y0, x1, y1 in tiles(width, height, scale, tile, overlap):
        inner = (x0 > 0, y0 > 0, x1 < width, y1 < height)
        for face in _detect_region(detector, pixels, scale, (x0, y0, x1, y1)):
            if not _cut_by_edge(face, (x0, y0, x1, y1), inner, EDGE / scale):
                found.append(face)
    return merge_duplicates(found)


def _detect_pyramid(detector: FaceDetector, pixels: np.ndarray, scale: float, largest: int) -> list[Detection]:
    height, width = pixels.shape[:2]
    tile = detector.tile_size
    overlap = min(tile // 2, math.ceil(OVERLAP_MARGIN * largest))
    found: list[Detection] = []
    while True:
        coarsest = max(width, height) * scale <= largest
        for x0, y0, x1, y1 in tiles(width, height, scale, tile, overlap):
            inner = (x0 > 0, y0 > 0, x1 < width, y1 < height)
            for face in _detect_region(detector, pixels, scale, (x0, y0, x1, y1)):
                in_band = coarsest or face.width * scale <= largest
                if in_band and _centre_in_core(face, (x0, y0, x1, y1), inner, overlap / 2 / scale):
                    found.append(face)
        if coarsest:
            return found
        scale /= largest / detector.smallest_face


def tiles(width: int, height: int, scale: float, tile: int, overlap: int) -> list[Region]:
    """Regions of the photo (x0, y0, x1, y1), as few as cover it at most `tile` pixels a side once
    scaled by `scale`, all of one size, overlapping by `overlap` scaled pixels."""

    def spans(length: int) -> list[tuple[int, int]]:
        scaled = length * scale
        count = max(1, math.ceil((scaled - overlap) / (tile - overlap)))
        size = (scaled + (count - 1) * overlap) / count
        step = size - overlap
        return [(round(i * step / scale), min(length, round((i * step + size) / scale))) for i in range(count)]

    return [(x0, y0, x1, y1) for y0, y1 in spans(height) for x0, x1 in spans(width)]


def _detect_region(detector: FaceDetector, pixels: np.ndarray, scale: float, region: Region) -> list[Detection]:
    x0, y0, x1, y1 = region
    crop = pixels[y0:y1, x0:x1]
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    if size != (x1 - x0, y1 - y0):
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    fx, fy = (x1 - x0) / size[0], (y1 - y0) / size[1]  # back to the photo's pixels
    found = []
    for face in detector.detect(crop):
        bx0, by0, bx1, by1 = face.box
        landmarks = None if face.landmarks is None else face.landmarks * (fx, fy) + (x0, y0)
        found.append(
            Detection((bx0 * fx + x0, by0 * fy + y0, bx1 * fx + x0, by1 * fy + y0), face.confidence, landmarks)
        )
    return found


def _cut_by_edge(face: Detection, region: Region, inner: tuple[bool, bool, bool, bool], edge: float) -> bool:
    x0, y0, x1, y1 = face.box
    left, top, right, bottom = inner
    return (
        (left and x0 <= region[0] + edge)
        or (top and y0 <= region[1] + edge)
        or (right and x1 >= region[2] - edge)
        or (bottom and y1 >= region[3] - edge)
    )


def _centre_in_core(face: Detection, region: Region, inner: tuple[bool, bool, bool, bool], half: float) -> bool:
    """Whether the face's centre lies in the part of the tile no neighbour shares more than half of
    the overlap of: each point of the photo is in one tile's core, and a face of the view's band
    centred there lies wholly inside that tile (the overlap is wider than the band's faces)."""
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    left, top, right, bottom = inner
    return (
        (not left or cx >= region[0] + half)
        and (not top or cy >= region[1] + half)
        and (not right or cx < region[2] - half)
        and (not bottom or cy < region[3] - half)
    )


def merge_duplicates(faces: list[Detection], iou: float = 0.4, inside: float = 0.7) -> list[Detection]:
    """Best first, without the faces that overlap a better one (IoU above `iou`) or lie mostly
    (`inside` of their area) within one: the same face seen by two tiles or at two scales."""
    kept: list[Detection] = []
    for face in sorted(faces, key=lambda f: -f.confidence):
        overlaps = [_overlap(face, other) for other in kept]
        if not any(union > iou or within > inside for union, within in overlaps):
            kept.append(face)
    return kept


def _overlap(a: Detection, b: Detection) -> tuple[float, float]:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    intersection = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    area_a, area_b = (ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0)
    union = area_a + area_b - intersection
    return (
        intersection / union if union > 0 else 0.0,
        intersection / min(area_a, area_b) if min(area_a, area_b) > 0 else 0.0,
    )
