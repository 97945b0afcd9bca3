"""Down to what face size does dlib's ResNet still recognise a face? Prints the table behind the
default `min_face_size`.

    .venv/bin/python benchmarks/face_size_recognition.py          # both labelled sets (~3 min)

For every labelled photo of ../shared/faces (images/: 62, lfw10/: 100), its face is found and
embedded at full resolution. Then the whole photo is shrunk so that the face's box is N pixels
wide (N from 24 to 160; only where N is smaller than the face already is) and the face is embedded
again from the small photo, the way a digest would (5-point landmarks on the small photo, dlib's
150 px chip), with the known box scaled down so that detection is not what is measured here
(benchmarks/detection_recall.py measures that). For each N:

  self       cosine similarity of the small face to the same face at full size (median, 5th pct)
  same ok    the small face against the full-size faces of the same person's other photos: the
             share of those pairs at or above the search threshold
  others     the share of pairs with other people's full-size faces at or above the threshold
  rank-1     the nearest full-size face of another photo is the same person

`full` is the full-size face against the others (the ceiling).
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.labelled_faces import SETS, identities_of
from facepipe.engine.faces import find_faces
from facepipe.engine.images import decode_image
from facepipe.engine.profiles import PROFILES, Detection, load_profile

SIZES = (24, 32, 40, 48, 56, 64, 80, 96, 128, 160)


def labelled_photos() -> list[tuple[Path, str]]:
    """Every labelled photo of both sets, with its identity (prefixed by its set's name)."""
    return [(SETS[name][0] / image, f"{name}:{who}") for name in SETS for image, who in identities_of(name).items()]


def central_face(profile, image: np.ndarray):
    """The face nearest the photo's centre (lfw10 photos may show others behind), found down to 40 px."""
    faces = find_faces(profile, image, 0.5, 40).faces
    if not faces:
        return None
    height, width = image.shape[:2]
    return min(
        faces, key=lambda f: (f.box[0] + f.box[2] / 2 - width / 2) ** 2 + (f.box[1] + f.box[3] / 2 - height / 2) ** 2
    )


def embed_at(profile, image: np.ndarray, box, scale: float) -> np.ndarray:
    """The face in `box` embedded from a copy of the photo shrunk by `scale`."""
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    x, y, w, h = (round(v * scale) for v in box)
    (face,) = profile.align(small, [Detection((x, y, x + w, y + h), 1.0)])
    return profile.embed([face.chip])[0]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    profile = load_profile("dlib")
    threshold = PROFILES["dlib"].search_threshold

    people_found: list[str] = []
    embeddings: list[np.ndarray] = []
    small: dict[int, list[np.ndarray | None]] = {n: [] for n in SIZES}
    for path, person in labelled_photos():
        image = decode_image(path.read_bytes())
        face = central_face(profile, image)
        if face is None:
            print(f"no face found in {path.name}: left out")
            continue
        people_found.append(person)
        embeddings.append(profile.embed([face.chip])[0])
        for n in SIZES:
            small[n].append(embed_at(profile, image, face.box, n / face.box[2]) if n < face.box[2] else None)
    people, full = np.array(people_found), np.array(embeddings)
    same_person = people[:, None] == people[None, :]
    np.fill_diagonal(same_person, False)
    other_photo = ~np.eye(len(people), dtype=bool)
    print(f"{len(people)} labelled faces, {len(set(people))} people, search threshold {threshold}\n")
    print("| face width (px) | faces | self: median / 5th pct | same ok | others | rank-1 |")
    print("|---|---|---|---|---|---|")

    def row(label: str, rows: np.ndarray, vectors: np.ndarray, self_similarity: str) -> None:
        similarity = vectors @ full.T
        same, other = same_person[rows], ~same_person[rows] & other_photo[rows]
        similarity_to_others = np.where(other_photo[rows], similarity, -1)
        rank1 = same_person[rows, similarity_to_others.argmax(axis=1)].mean()
        print(
            f"| {label} | {len(rows)} | {self_similarity} | {(similarity[same] >= threshold).mean():.3f} "
            f"| {(similarity[other] >= threshold).mean():.4f} | {rank1:.3f} |"
        )

    row("full", np.arange(len(people)), full, "1 / 1")
    for n in SIZES:
        rows = np.array([i for i, v in enumerate(small[n]) if v is not None])
        vectors = np.array([small[n][i] for i in rows])
        selfs = np.einsum("ij,ij->i", vectors, full[rows])
        row(str(n), rows, vectors, f"{np.median(selfs):.3f} / {np.percentile(selfs, 5):.3f}")


if __name__ == "__main__":
    main()
