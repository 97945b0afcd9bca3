"""Detection recall by face size, on photos whose faces are known. Prints the table behind the presets.

    .venv/bin/python benchmarks/detection_recall.py             # 32 photos of 1.5 to 24 MP (~25 min)
    .venv/bin/python benchmarks/detection_recall.py --small     # 9 photos of 1 to 4 MP (the CI version:
                                                                # facepipe_tests/test_detection_recall.py)
    .venv/bin/python benchmarks/detection_recall.py --settings default,bare-dlib --json
    .venv/bin/python benchmarks/detection_recall.py --scan      # the smallest face dlib finds (~1 min)

The photos are made here, from the one-face photos of ../shared/faces/images (couple.jpg,
selfie-many-people.jpg and img67.jpg left out), whose face is first found at full resolution: its
box is the ground truth. Each test photo is a canvas of 1 to 24 megapixels on a smooth random
background, of one of three kinds:

  portrait  one source photo, scaled so that its face is 160 to 600 px wide
  group     head-and-shoulders crops of many source photos in a loose grid, faces of one size band
            (24-32, 32-40, 40-64, 64-96, 96-160 px wide), dozens of them on the large canvases
  mosaic    3 x 3 group photos of 500 x 333 px, 1,500 px in all, faces 36 to 110 px wide (like
            nine ordinary group photos tiled, the case that showed the 1,024 px budget's loss)

The full set: at each of 2, 6, 12 and 24 MP, 2 portraits and a group per band; and 4 mosaics (32 photos).

Each photo is written as a JPEG (quality 92) and read back as a digest reads it. A detection
finds a true face when their boxes overlap by IoU >= 0.3 (one detection per face, greedily); a
kept detection (confidence >= 0.5, facepipe's default) that finds none is a false detection.
Sizes are the true box's width at full resolution. Settings:

  portraits, default, crowd   facepipe's presets (min_face_size 160, 40, 24): detection and
                              alignment as a digest does them, decode included
  default, colour HOG         levers: the default with HOG on the colour photo (as the seed ran it),
  default, untiled            and with the scaled photo seen whole, however large, instead of tiles
  detection-1024              the old way: every photo shrunk to 1,024 px on its long side
  bare-dlib                   dlib as the face_recognition library and the seed's detector run
                              it: HOG on the full-size colour photo, upsampled once
"""

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facepipe.engine.faces import decode_reduction, find_faces
from facepipe.engine.images import decode_image, decode_image_reduced, jpeg_size
from facepipe.engine.presets import PRESETS
from facepipe.engine.profiles import load_profile

IMAGES = ROOT.parent / "shared" / "faces" / "images"
NOT_ONE_FACE = {"couple.jpg", "selfie-many-people.jpg", "img67.jpg"}
BANDS = ((0, 32), (32, 40), (40, 64), (64, 96), (96, 160), (160, 10**6))
CONFIDENCE = 0.5
MATCH_IOU = 0.3


def band_name(band: tuple[int, int]) -> str:
    low, high = band
    return f"< {high}" if low == 0 else f">= {low}" if high == 10**6 else f"{low}-{high}"


# ---------------------------------------------------------------- ground truth and test photos


@dataclass
class Source:
    name: str
    image: np.ndarray
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of its one face


def sources(profile) -> list[Source]:
    """The one-face sample photos, each with the box of its face, found at full resolution."""
    found = []
    for path in sorted(IMAGES.iterdir()):
        if path.name in NOT_ONE_FACE or path.name.startswith("."):
            continue
        image = decode_image(path.read_bytes())
        # faces down to 1/12 of the photo: a one-face photo's face is larger, a stranger behind is not missed
        faces = find_faces(profile, image, CONFIDENCE, max(image.shape[:2]) / 12).faces
        if len(faces) == 1:
            x, y, w, h = faces[0].box
            found.append(Source(path.name, image, (x, y, x + w, y + h)))
    return found


def background(width: int, height: int, rng) -> np.ndarray:
    """Smooth random colour: no edges for a detector to take for a face."""
    coarse = np.clip(rng.integers(50, 200, (6, 8, 1)) + rng.integers(-25, 26, (6, 8, 3)), 0, 255).astype(np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def head_and_shoulders(source: Source) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A crop of the source around its face (hair and neck too), and the face box in the crop."""
    x0, y0, x1, y1 = source.box
    w, h = x1 - x0, y1 - y0
    height, width = source.image.shape[:2]
    cx0, cy0 = max(0, int(x0 - 0.3 * w)), max(0, int(y0 - 0.5 * h))
    cx1, cy1 = min(width, int(x1 + 0.3 * w)), min(height, int(y1 + 0.6 * h))
    return source.image[cy0:cy1, cx0:cx1], (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0)


def paste(canvas: np.ndarray, crop: np.ndarray, box, face_width: float, x: int, y: int) -> tuple | None:
    """Paste `crop` scaled so that its face is `face_width` wide, at (x, y); the face box, or None if
    the face would not lie wholly on the canvas."""
    scale = face_width / (box[2] - box[0])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    scaled = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    height, width = canvas.shape[:2]
    face = tuple(v * scale for v in box)
    face = (face[0] + x, face[1] + y, face[2] + x, face[3] + y)
    if face[0] < 0 or face[1] < 0 or face[2] > width or face[3] > height:
        return None
    visible = scaled[max(0, -y) : height - y, max(0, -x) : width - x]
    canvas[max(0, y) : max(0, y) + visible.shape[0], max(0, x) : max(0, x) + visible.shape[1]] = visible
    return face


def portrait(sources: list[Source], megapixels: float, rng) -> tuple[np.ndarray, list]:
    width = int(np.sqrt(megapixels * 1e6 * 1.5))
    height = int(width / 1.5)
    if rng.random() < 0.5:
        width, height = height, width
    canvas = background(width, height, rng)
    source = sources[rng.integers(len(sources))]
    face_width = rng.uniform(160, 600)
    crop, box = source.image, source.box
    x = int(width / 2 - (box[0] + box[2]) / 2 * face_width / (box[2] - box[0]))
    y = int(height / 2 - (box[1] + box[3]) / 2 * face_width / (box[2] - box[0]))
    return canvas, [paste(canvas, crop, box, face_width, x, y)]


def group(sources: list[Source], width: int, height: int, band: tuple[float, float], rng, most: int = 80):
    """Faces of widths in `band` on a jittered grid. A cell is 2.2 times the widest face: centres
    stay 1.76 face widths apart, so no crop (1.6 x 2.1 face boxes) covers another's face."""
    canvas = background(width, height, rng)
    low, high = band
    cell = 2.2 * high
    columns, rows = max(1, int(width // cell)), max(1, int(height // cell))
    cells = [(c, r) for r in range(rows) for c in range(columns)]
    rng.shuffle(cells)
    faces = []
    for column, row in cells[:most]:
        crop, box = head_and_shoulders(sources[rng.integers(len(sources))])
        scale = rng.uniform(low, high) / (box[2] - box[0])
        x = (column + rng.uniform(0.4, 0.6)) * width / columns - (box[0] + box[2]) / 2 * scale
        y = (row + rng.uniform(0.35, 0.55)) * height / rows - (box[1] + box[3]) / 2 * scale
        face = paste(canvas, crop, box, scale * (box[2] - box[0]), int(x), int(y))
        if face:
            faces.append(face)
    return canvas, faces


def mosaic(sources: list[Source], rng) -> tuple[np.ndarray, list]:
    canvas, faces = np.zeros((999, 1500, 3), np.uint8), []
    for index in range(9):
        # each group photo has faces of about one size, from 36 to 110 px wide
        width = rng.uniform(40, 100)
        tile, tile_faces = group(sources, 500, 333, (0.9 * width, 1.1 * width), rng, most=int(rng.integers(3, 8)))
        x, y = 500 * (index % 3), 333 * (index // 3)
        canvas[y : y + 333, x : x + 500] = tile
        faces += [(f[0] + x, f[1] + y, f[2] + x, f[3] + y) for f in tile_faces]
    return canvas, faces


def make_photos(sources: list[Source], small: bool, seed: int = 7) -> list[tuple[str, np.ndarray, list]]:
    """(name, pixels, true boxes) of each test photo, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    photos: list[tuple[str, np.ndarray, list]] = []
    groups = ((24, 32), (32, 40), (40, 64), (64, 96), (96, 160))
    # the small version: 9 photos of 1 to 4 MP, a portrait and a group per band, and a mosaic
    kinds: list[tuple[float, str | tuple[int, int]]] = (
        [
            (1, "portrait"),
            (1, groups[0]),
            (1, groups[1]),
            (2, groups[2]),
            (2, groups[3]),
            (4, "portrait"),
            (4, groups[1]),
            (4, groups[4]),
            (1.5, "mosaic"),
        ]
        if small
        else [(mp, kind) for mp in (2, 6, 12, 24) for kind in ("portrait", "portrait", *groups, "mosaic")]
    )
    for megapixels, kind in kinds:
        if kind == "portrait":
            name, (pixels, faces) = f"portrait-{megapixels}mp", portrait(sources, megapixels, rng)
        elif kind == "mosaic":
            name, (pixels, faces) = "mosaic-1.5mp", mosaic(sources, rng)
        else:
            assert isinstance(kind, tuple)  # a band of face widths
            width = int(np.sqrt(megapixels * 1e6 * 1.5))
            name = f"group-{megapixels}mp-{kind[0]}-{kind[1]}px"
            pixels, faces = group(sources, width, int(width / 1.5), kind, rng)
        photos.append((f"{len(photos):02d}-{name}", pixels, faces))
    return photos


# ---------------------------------------------------------------- detectors and scoring


def facepipe_setting(profile, min_face_size):
    """A digest's decode, detection and alignment at `min_face_size` (a number, or a function of the
    photo's (width, height))."""

    def detect(data: bytes):
        size = min_face_size(jpeg_size(data)) if callable(min_face_size) else min_face_size
        image, full_size = decode_image_reduced(data, decode_reduction(profile, size))
        found = find_faces(profile, image, CONFIDENCE, size, full_size)
        return [(x, y, x + w, y + h) for x, y, w, h in (f.box for f in found.faces)]

    return detect


def bare_dlib(data: bytes):
    import dlib

    detector = bare_dlib.__dict__.setdefault("detector", dlib.get_frontal_face_detector())
    rgb = cv2.cvtColor(decode_image(data), cv2.COLOR_BGR2RGB)
    rects, margins, _ = detector.run(rgb, 1)
    return [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r, m in zip(rects, margins)]


def settings(profile_name: str) -> dict:
    profile = load_profile(profile_name)
    found = {name: facepipe_setting(profile, size) for name, size in PRESETS.items()}
    if profile_name == "dlib":
        # levers, each the default with one thing undone: HOG on the colour photo (as the seed ran it),
        # and the scaled photo seen whole however large (memory grows with it: ~9 bytes a pixel)
        colour, untiled = copy.copy(profile), copy.copy(profile)
        hog: Any = copy.copy(profile.detectors[0])  # a method of its own, below
        hog.detector_input = lambda image: cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        colour.detectors = (hog, *profile.detectors[1:])
        untiled.detectors = tuple(copy.copy(d) for d in profile.detectors)
        for detector in untiled.detectors:
            detector.tile_size = 10**6
        found["default, colour HOG"] = facepipe_setting(colour, PRESETS["default"])
        found["default, untiled"] = facepipe_setting(untiled, PRESETS["default"])
        # the old default: the detector saw a copy 1,024 px on its long side, so faces of 80 px there
        found["detection-1024"] = facepipe_setting(profile, lambda size: 80 * max(size) / 1024)
        found["bare-dlib"] = bare_dlib
    return found


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth: list, detected: list) -> tuple[list[bool], int]:
    """Which true faces were found, and how many detections found none (greedy, best IoU first)."""
    pairs = sorted(((iou(t, d), i, j) for i, t in enumerate(truth) for j, d in enumerate(detected)), reverse=True)
    found, used = [False] * len(truth), set()
    for overlap, i, j in pairs:
        if overlap < MATCH_IOU:
            break
        if not found[i] and j not in used:
            found[i] = True
            used.add(j)
    return found, len(detected) - len(used)


def evaluate(photos: list, detect, workdir: Path) -> dict:
    per_band = {band_name(b): [0, 0] for b in BANDS}  # true faces, found
    false, seconds, megapixels, per_photo = 0, 0.0, 0.0, {}
    for name, _, truth in photos:
        data = (workdir / f"{name}.jpg").read_bytes()
        start = time.perf_counter()
        detected = detect(data)
        seconds += time.perf_counter() - start
        found, extra = match(truth, detected)
        false += extra
        per_photo[name] = {"faces": len(truth), "found": sum(found), "false": extra}
        for box, ok in zip(truth, found):
            width = box[2] - box[0]
            band = next(b for b in BANDS if b[0] <= width < b[1])
            per_band[band_name(band)][0] += 1
            per_band[band_name(band)][1] += ok
    for _, pixels, _ in photos:
        megapixels += pixels.shape[0] * pixels.shape[1] / 1e6
    return {
        "bands": {
            b: {"faces": n, "found": k, "recall": round(k / n, 3) if n else None} for b, (n, k) in per_band.items()
        },
        "false_detections": false,
        "seconds": round(seconds, 2),
        "photos_per_second": round(len(photos) / seconds, 3),
        "megapixels_per_second": round(megapixels / seconds, 2),
        "photos": per_photo,
    }


def recall_at_least(result: dict, min_face_size: float) -> float:
    """Recall over the bands that start at or above `min_face_size`."""
    faces = found = 0
    for band in BANDS:
        if band[0] >= min_face_size:
            faces += result["bands"][band_name(band)]["faces"]
            found += result["bands"][band_name(band)]["found"]
    return round(found / faces, 3) if faces else 1.0


def run(profile_name: str, chosen: list[str], small: bool) -> dict:
    """Make the test photos and score each setting on them."""
    photos = make_photos(sources(load_profile("dlib")), small)
    available = settings(profile_name)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, pixels, _ in photos:
            ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 92])
            (Path(workdir) / f"{name}.jpg").write_bytes(data.tobytes())
        for setting in chosen or list(available):
            results[setting] = evaluate(photos, available[setting], Path(workdir))
    sizes = sorted(p.shape[0] * p.shape[1] / 1e6 for _, p, _ in photos)
    return {
        "profile": profile_name,
        "photos": len(photos),
        "faces": sum(len(t) for _, _, t in photos),
        "megapixels": [round(sizes[0], 1), round(sizes[-1], 1)],
        "results": results,
    }


def table(run: dict) -> str:
    """The per-band recall of each setting, as a Markdown table."""
    results = run["results"]
    first = next(iter(results.values()))
    lines = [
        f"{run['photos']} photos ({run['megapixels'][0]} to {run['megapixels'][1]} MP), {run['faces']} faces "
        f"(widths at full size), profile {run['profile']}; recall per face width:",
        "",
        "| setting | " + " | ".join(f"{band_name(b)} px" for b in BANDS) + " | false detections | photos/s | MP/s |",
        "|---" * (len(BANDS) + 4) + "|",
        "| (true faces) | " + " | ".join(str(first["bands"][band_name(b)]["faces"]) for b in BANDS) + " | | | |",
    ]
    for setting, result in results.items():
        recalls = " | ".join(
            "" if result["bands"][band_name(b)]["recall"] is None else f"{result['bands'][band_name(b)]['recall']:.3f}"
            for b in BANDS
        )
        lines.append(
            f"| {setting} | {recalls} | {result['false_detections']} | {result['photos_per_second']:.2f} "
            f"| {result['megapixels_per_second']:.1f} |"
        )
    return "\n".join(lines)


def scan(profile_name: str = "dlib") -> str:
    """Recall by face width in the pixels a detector is given: the measurement behind dlib's HOG's
    `smallest_face` (the profile's first detector). Group photos with faces of 20 to 48 px, seen
    whole at twice their size."""
    from facepipe.engine.detection import detect_faces

    detector = load_profile(profile_name).detectors[0]
    people, rng = sources(load_profile("dlib")), np.random.default_rng(3)
    widths, found = [], []
    for band in [(20, 30), (24, 40), (30, 48)] * 2:
        pixels, truth = group(people, 1500, 1000, band, rng)
        detected = [f.box for f in detect_faces(detector, pixels, 2.0) if f.confidence >= CONFIDENCE]
        widths += [2 * (box[2] - box[0]) for box in truth]
        found += match(truth, detected)[0]
    width_px, hits = np.array(widths), np.array(found)
    lines = ["| face width at the detector's input (px) | faces | recall |", "|---|---|---|"]
    for low in range(40, 96, 4):
        picked = (width_px >= low) & (width_px < low + 4)
        if picked.any():
            lines.append(f"| {low}-{low + 4} | {picked.sum()} | {hits[picked].mean():.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the CI version: 9 photos of 1 to 4 MP")
    parser.add_argument("--profile", default="dlib")
    parser.add_argument("--settings", default="", help="comma-separated; default: all of the profile's")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--scan", action="store_true", help="recall by face width at the detector's input")
    args = parser.parse_args()
    if args.scan:
        print(scan(args.profile))
        return
    result = run(args.profile, [s for s in args.settings.split(",") if s], args.small)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
