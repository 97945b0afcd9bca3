"""Search across head pose: a frontal selfie against the same person's turned and tilted faces.

    .venv/bin/python benchmarks/pose_recognition.py                  # lfw150, every person
    .venv/bin/python benchmarks/pose_recognition.py --people 40 --chips /tmp/chips

For each person of a labelled LFW set (benchmarks/labelled_faces.py; one person centred in each
photo): every photo's head pose, from dlib's 68 landmarks on the person's face and a generic 3-D
face (cv2.solvePnP): yaw (turned left/right), pitch and roll. The person's most frontal photo is
the selfie, found as `facepipe search` finds it (search.selfie_faces); each other photo is a
target, binned by |yaw|. A tilted head is a head rotated in the photo's plane: each person's
second most frontal photo is also rotated by 25 and 45 degrees (synthetic, said so in the bins).

Each target is looked at twice, so that detection and recognition are told apart:
- as a digest finds it: the profile's detector at the digest's defaults (faces_in_image); the
  target is found when a face is detected on the person's centred box, and the search score of
  the photo is its best face's similarity to the selfie (search.py ranks photos so);
- with the face's box given (LFW centres the face in a box of ~250/2.2 px, the Viola-Jones box
  it was cut around), aligned by the profile's 5-point landmarks and embedded: what recognition
  alone does with a face the detector missed.

Per bin: faces found, search recall at the profile's threshold (and a few others), the
similarity distribution, and strangers: other people's photos of that bin whose best face
reaches the threshold for some selfie. `--chips DIR` writes each bin's aligned chips (box given)
as a PNG to look at: the 5-point alignment of a turned face is where recognition goes wrong.
"""

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.labelled_faces import SETS, identities_of
from facepipe.domain.request import DEFAULT_CONFIDENCE
from facepipe.domain.search import selfie_faces
from facepipe.engine.faces import faces_in_image
from facepipe.engine.images import decode_image
from facepipe.engine.listing import read_image_bytes
from facepipe.engine.presets import DEFAULT_MIN_FACE_SIZE
from facepipe.engine.profiles import PROFILES, Detection, load_profile

YAW_BINS = (
    (0, 15, "frontal, |yaw| < 15°"),
    (15, 30, "turned 15-30°"),
    (30, 45, "turned 30-45°"),
    (45, 90, "turned ≥ 45°"),
)
TILTS = (25, 45)
THRESHOLDS = (0.90, 0.91, 0.92, 0.93, 0.94)
# a generic face in millimetres (nose tip at the origin, y up): the 68-point model's nose tip (30),
# chin (8), outer eye corners (36, 45) and mouth corners (48, 54)
FACE_3D = np.array(
    [(0, 0, 0), (0, -63.6, -12.5), (-43.3, 32.7, -26), (43.3, 32.7, -26), (-28.9, -28.9, -24.1), (28.9, -28.9, -24.1)],
    dtype=np.float64,
)
FACE_POINTS = (30, 8, 36, 45, 48, 54)


@dataclass
class Target:
    person: str
    photo: str
    pose: str  # the bin
    yaw: float
    found: bool  # the detector found the person's face
    found_faces: np.ndarray  # every face found in the photo (rows), for the photo's search score
    given: np.ndarray  # the embedding with the box given
    chip: np.ndarray


def centred_box(width: int, height: int) -> tuple[float, float, float, float]:
    """LFW's face box: the photo is the Viola-Jones box enlarged 2.2 times, centred."""
    side = min(width, height) / 2.2
    return (width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2


def head_pose(predictor, dlib, rgb: np.ndarray, box) -> tuple[float, float, float]:
    """Yaw, pitch and roll in degrees, from the 68 landmarks on `box` and the generic face."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = predictor(rgb, dlib.rectangle(x0, y0, x1, y1))
    points = np.array([(shape.part(i).x, shape.part(i).y) for i in FACE_POINTS], dtype=np.float64)
    focal = rgb.shape[1]
    camera = np.array([[focal, 0, rgb.shape[1] / 2], [0, focal, rgb.shape[0] / 2], [0, 0, 1]], dtype=np.float64)
    _, rotation, _ = cv2.solvePnP(FACE_3D, points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    matrix, _ = cv2.Rodrigues(rotation)
    angles = cv2.RQDecomp3x3(matrix)[0]  # about x (pitch), y (yaw), z (roll)
    pitch = (angles[0] + 180) % 360 - 180  # the generic face looks down its z axis, the camera up it
    pitch = pitch - 180 if pitch > 90 else pitch + 180 if pitch < -90 else pitch
    return float(angles[1]), float(pitch), float(angles[2])


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    """The photo rotated about its centre, the same size, the corners filled from its edges."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def look(profile, image: np.ndarray, person: str, photo: str, pose: str, yaw: float) -> Target:
    """The target as a digest finds it and with its box given."""
    height, width = image.shape[:2]
    box = centred_box(width, height)
    faces, _ = faces_in_image(profile, image, DEFAULT_CONFIDENCE, DEFAULT_MIN_FACE_SIZE)

    def on_box(face) -> bool:
        x, y, w, h = face.box
        return box[0] <= x + w / 2 <= box[2] and box[1] <= y + h / 2 <= box[3]

    aligned = profile.align(image, [Detection(box, 1.0)])[0]
    given = profile.embed([aligned.chip])[0]
    found = np.array([f.embedding for f in faces]).reshape(len(faces), PROFILES[profile.spec.name].dimension)
    return Target(person, photo, pose, yaw, any(on_box(f) for f in faces), found, given, aligned.chip)


def pose_bin(yaw: float) -> str:
    return next(name for low, high, name in YAW_BINS if low <= abs(yaw) < high or high == 90)


def quartiles(values: np.ndarray) -> str:
    if not len(values):
        return "-"
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return " / ".join(f"{v:.3f}" for v in q)


def write_chips(folder: Path, bins: list[str], targets: list[Target], selfies: dict[str, np.ndarray]) -> None:
    """One PNG per bin: rows of a person's selfie chip, then that person's chips of the bin."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(bins):
        rows = []
        for person in sorted({t.person for t in targets if t.pose == name})[:12]:
            chips = [selfies[person]] + [t.chip for t in targets if t.pose == name and t.person == person][:5]
            row = np.concatenate(chips + [np.zeros_like(chips[0])] * (6 - len(chips)), axis=1)
            rows.append(row)
        if rows:
            path = folder / f"{i}-{name.split(',')[0].replace(' ', '_').replace('°', '').replace('≥', 'ge')}.png"
            cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows), cv2.COLOR_RGB2BGR))
            print(f"  chips of {name}: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="lfw150", choices=[n for n, s in SETS.items() if "centre" in s[2]])
    parser.add_argument("--people", type=int, help="the first N people only")
    parser.add_argument("--profile", default="dlib")
    parser.add_argument("--chips", type=Path, help="write each bin's aligned chips (box given) as PNGs here")
    args = parser.parse_args()

    import dlib
    from face_recognition_models import pose_predictor_model_location

    predictor = dlib.shape_predictor(pose_predictor_model_location())
    profile = load_profile(args.profile)
    folder = SETS[args.set][0]
    people: dict[str, list[str]] = {}
    for photo, person in sorted(identities_of(args.set).items()):
        people.setdefault(person, []).append(photo)
    names = sorted(people)[: args.people]
    cpu, wall = time.process_time(), time.perf_counter()

    targets: list[Target] = []
    selfies, selfie_chips = {}, {}
    selfie_yaws = []
    for i, person in enumerate(names):
        images = {photo: decode_image(read_image_bytes(str(folder / photo))[0]) for photo in people[person]}
        yaws = {}
        for photo, image in images.items():
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            yaws[photo] = head_pose(predictor, dlib, rgb, centred_box(image.shape[1], image.shape[0]))[0]
        by_pose = sorted(images, key=lambda p: abs(yaws[p]))
        selfie = by_pose[0]
        selfie_yaws.append(abs(yaws[selfie]))
        query = selfie_faces(str(folder / selfie), args.profile)[0]  # search's own selfie face
        selfies[person] = query.embedding
        selfie_chips[person] = look(profile, images[selfie], person, selfie, "", yaws[selfie]).chip
        for photo in by_pose[1:]:
            targets.append(look(profile, images[photo], person, photo, pose_bin(yaws[photo]), yaws[photo]))
        for degrees in TILTS:  # the second most frontal photo, rotated one way or the other by person
            image = rotated(images[by_pose[1]], degrees if i % 2 else -degrees)
            targets.append(look(profile, image, person, by_pose[1], f"tilted {degrees}° (rotated)", yaws[by_pose[1]]))

    bins = [name for _, _, name in YAW_BINS] + [f"tilted {d}° (rotated)" for d in TILTS]
    threshold = PROFILES[args.profile].search_threshold
    print(
        f"# {args.set}: {len(names)} people, a selfie each (its |yaw| median {np.median(selfie_yaws):.0f}°, "
        f"max {max(selfie_yaws):.0f}°) against {len(targets)} targets; threshold {threshold} ({args.profile})"
    )
    query_people = list(selfies)
    queries = np.array([selfies[p] for p in query_people])
    print(
        "\n| pose | targets | found by the detector | search recall (found) | recall with the box given "
        "| similarity, box given: min / q1 / median / q3 / max | stranger photos ≥ threshold (of pairs) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in bins:
        mine = [t for t in targets if t.pose == name]
        if not mine:
            print(f"| {name} | 0 | | | | | |")
            continue
        selfie_of = np.array([selfies[t.person] for t in mine])
        given = np.einsum("ij,ij->i", selfie_of, np.array([t.given for t in mine]))
        searched = np.array(
            [float((t.found_faces @ selfies[t.person]).max()) if len(t.found_faces) else -1.0 for t in mine]
        )
        # strangers: each selfie against every other person's target of the bin, the photo's best face
        best = np.array(
            [
                (t.found_faces @ queries.T).max(axis=0) if len(t.found_faces) else np.full(len(queries), -1.0)
                for t in mine
            ]
        )
        other = np.array([[t.person != p for p in query_people] for t in mine])
        strangers = int((best[other] >= threshold).sum())
        print(
            f"| {name} | {len(mine)} | {sum(t.found for t in mine)} ({np.mean([t.found for t in mine]):.2f}) "
            f"| {(searched >= threshold).sum()} ({np.mean(searched >= threshold):.2f}) "
            f"| {(given >= threshold).sum()} ({np.mean(given >= threshold):.2f}) | {quartiles(given)} "
            f"| {strangers} ({other.sum()}) |"
        )
    print("\nsearch recall (found) by threshold:")
    for t in THRESHOLDS:
        cells = []
        for name in bins:
            mine = [x for x in targets if x.pose == name]
            if mine:
                scores = [
                    float((x.found_faces @ selfies[x.person]).max()) if len(x.found_faces) else -1.0 for x in mine
                ]
                cells.append(f"{name.split(',')[0]} {np.mean(np.array(scores) >= t):.2f}")
        print(f"  >= {t:.2f}{'  <- default' if t == threshold else '':12} " + ", ".join(cells))
    print(
        f"\nCPU {time.process_time() - cpu:.0f} s, wall {time.perf_counter() - wall:.0f} s "
        f"({len(targets) + len(names)} photos looked at twice, the selfies once more through search)"
    )
    if args.chips:
        write_chips(args.chips, bins, targets, selfie_chips)


if __name__ == "__main__":
    main()
