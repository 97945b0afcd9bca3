"""The labelled face sets the identity benchmarks score, embedded through facepipe's own engine.

- `images`: ../shared/faces/images, 64 photos, 62 labelled (identities.csv, 13 people). Every face
  found is kept; the one scored in each labelled photo is its largest, the person it was taken of
  (people behind them, in 4 photos, and the unlabelled couple and selfie are kept, unscored).
- `lfw10`: ../shared/faces/lfw10, 100 LFW photos of 10 people (lfw10/identities.csv), one centred
  face each, a few with other people in the background. Every face found is kept; the one scored
  in each photo is the face nearest the photo's centre (the labelled person's).
- `lfw150`: benchmarks/identities/lfw150, 900 LFW photos (deep-funneled, 250 x 250) of 150 more
  people, 6 each, none of lfw10's (benchmarks/identities/SOURCES.md); scored as lfw10.

Faces come from `faces_in_chunk` at the digest's defaults (the code path of a digest), or from a
store into which the folders were digested. `combined` joins sets, prefixing identities with the
set's name, so that a cluster or a search hit across sets counts as a different-person pair.
"""

import argparse
import csv
import importlib
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES = ROOT.parent / "shared" / "faces"
IDENTITIES = ROOT / "benchmarks" / "identities"
# set name -> (folder, identities file, how a labelled photo's face is chosen)
SETS = {
    "images": (SAMPLES / "images", SAMPLES / "identities.csv", "largest face"),
    "lfw10": (SAMPLES / "lfw10", SAMPLES / "lfw10" / "identities.csv", "face nearest the centre"),
    "lfw150": (IDENTITIES / "lfw150", IDENTITIES / "lfw150" / "identities.csv", "face nearest the centre"),
}


@dataclass
class FaceSet:
    name: str
    photos: list[str]  # the photo (file name) of each face found
    vectors: np.ndarray  # unit embeddings, one row per face found
    labelled: list[int]  # the rows scored
    truth: list[str]  # the identity of each scored row
    raw_norms: np.ndarray | None  # each scored row's raw descriptor norm (unknown when read from a store)
    unscored_photos: list[str]  # labelled photos without a scored face

    def describe(self) -> str:
        missing = f", {len(self.unscored_photos)} labelled photos unscored" if self.unscored_photos else ""
        rule = SETS[self.name][2] if self.name in SETS else "each set's rule"
        return (
            f"{self.name}: {len(self.photos)} faces from {len(set(self.photos))} photos, "
            f"{len(self.labelled)} scored ({rule}), "
            f"{len(set(self.truth))} people{missing}"
        )


def identities_of(name: str) -> dict[str, str]:
    with open(SETS[name][1]) as f:
        return {row["image"]: row["identity"] for row in csv.DictReader(f)}


def scored_faces(
    name: str, photos: list[str], boxes: list[tuple], sizes: list[tuple]
) -> tuple[list[int], list[str], list[str]]:
    """The rows to score (by the set's rule), their identities, and the labelled photos left without one."""
    identities = identities_of(name)
    by_photo: dict[str, list[int]] = {}
    for i, photo in enumerate(photos):
        by_photo.setdefault(photo, []).append(i)
    chosen = {}
    for photo, rows in by_photo.items():
        if photo not in identities:
            continue
        if SETS[name][2] == "largest face":
            chosen[photo] = max(rows, key=lambda i: boxes[i][2])
        else:

            def off_centre(i):
                (x, y, w, h), (width, height) = boxes[i], sizes[i]
                return (x + w / 2 - width / 2) ** 2 + (y + h / 2 - height / 2) ** 2

            chosen[photo] = min(rows, key=off_centre)
    labelled = sorted(chosen.values())
    return labelled, [identities[photos[i]] for i in labelled], sorted(set(identities) - set(chosen))


@contextmanager
def recorded_raw_norms(profile: str):
    """Record the norm of each raw descriptor the profile computes, before it is L2-normalised."""
    from facepipe.engine.profiles import PROFILES

    module: Any = importlib.import_module(PROFILES[profile].implementation.split(":")[0])  # patched below
    original, norms = module.unit_rows, []

    def recording(vectors):
        vectors = np.asarray(vectors, dtype=np.float32)
        norms.extend(np.linalg.norm(vectors, axis=1).tolist())
        return original(vectors)

    module.unit_rows = recording
    try:
        yield norms
    finally:
        module.unit_rows = original


def embedded_set(name: str, profile: str = "dlib", only: list[str] | None = None) -> FaceSet:
    """Every face of the set's photos (or of the photos named in `only`), through the digest's engine."""
    from facepipe.engine.faces import faces_in_chunk
    from facepipe.engine.listing import list_images
    from facepipe.engine.planning import ImageTask

    files = [f.path for f in list_images(SETS[name][0]) if only is None or Path(f.path).name in only]
    with recorded_raw_norms(profile) as norms:
        # one photo at a time, in order, so the recorded norms line up with the faces
        result = faces_in_chunk([ImageTask(path) for path in files], profile, confidence=0.5)
    faces = [(Path(r.path).name, face, (r.width, r.height)) for r in result.images for face in r.faces]
    assert len(norms) == len(faces), "the raw norms recorded do not match the faces found"
    photos = [photo for photo, _, _ in faces]
    labelled, truth, unscored = scored_faces(name, photos, [f.box for _, f, _ in faces], [s for _, _, s in faces])
    if only is not None:
        unscored = [photo for photo in unscored if photo in only]
    vectors = np.array([f.embedding for _, f, _ in faces]).reshape(len(faces), -1)
    return FaceSet(name, photos, vectors, labelled, truth, np.array(norms)[labelled], unscored)


def stored_sets(store_path: str, group: str, profile: str) -> list[FaceSet]:
    """The sets among a digested group's faces, told apart by the folder of each face's photo."""
    from facepipe.store import FaceStore

    with FaceStore.open(path=store_path) as store:
        faces = list(store.scroll_faces(group, profile, with_vectors=True))
    found = []
    for name, (folder, _, _) in SETS.items():
        mine = [f for f in faces if Path(f.payload["image_path"]).parent.resolve() == folder.resolve()]
        if not mine:
            continue
        mine.sort(key=lambda f: (f.payload["image_path"], f.payload["face_index"]))
        photos = [Path(f.payload["image_path"]).name for f in mine]
        boxes = [tuple(f.payload["facial_area"][k] for k in "xywh") for f in mine]
        sizes = [(f.payload["image_width"], f.payload["image_height"]) for f in mine]
        labelled, truth, unscored = scored_faces(name, photos, boxes, sizes)
        found.append(FaceSet(name, photos, np.array([f.vector for f in mine]), labelled, truth, None, unscored))
    if not found:
        raise SystemExit(
            f"group {group!r} in {store_path} holds no faces of {', '.join(str(s[0]) for s in SETS.values())}"
        )
    return found


def combined(sets: list[FaceSet]) -> FaceSet:
    """One set of every face of `sets`; identities carry their set's name, so no two sets share a person."""
    offsets = np.cumsum([0] + [len(s.photos) for s in sets])
    norms = None if any(s.raw_norms is None for s in sets) else np.concatenate([s.raw_norms for s in sets])
    return FaceSet(
        " + ".join(s.name for s in sets),
        [f"{s.name}/{p}" for s in sets for p in s.photos],
        np.concatenate([s.vectors for s in sets]),
        [int(o + i) for s, o in zip(sets, offsets) for i in s.labelled],
        [f"{s.name}:{t}" for s in sets for t in s.truth],
        norms,
        [f"{s.name}/{p}" for s in sets for p in s.unscored_photos],
    )


def labelled_sets(description: str) -> tuple[argparse.Namespace, list[FaceSet]]:
    """The command line shared by the identity benchmarks, and the sets it names."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sets", default=",".join(SETS), help=f"which labelled sets to embed now ({', '.join(SETS)})")
    parser.add_argument("--store", help="read the faces from an embedded Qdrant store folder instead")
    parser.add_argument("--group", default="sample", help="the group the sets' folders were digested into")
    parser.add_argument("--profile", default="dlib")
    args = parser.parse_args()
    if args.store:
        return args, stored_sets(args.store, args.group, args.profile)
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        parser.error(f"--sets: unknown set {unknown[0]!r}; choose among {', '.join(SETS)}")
    return args, [embedded_set(name, args.profile) for name in names]
