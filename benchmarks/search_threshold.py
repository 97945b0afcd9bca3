"""How the search threshold separates same-person from different-person faces, per labelled set and together.

    .venv/bin/python benchmarks/search_threshold.py                 # embed ../shared/faces/{images,lfw10} now
    .venv/bin/python benchmarks/search_threshold.py --sets images   # one set
    .venv/bin/python benchmarks/search_threshold.py --store HOME/qdrant --group sample

Over the pairs of scored faces (benchmarks/labelled_faces.py says which), per set and for the sets
together (people of different sets are different people): how many same-person pairs a cosine
threshold matches and how many different-person pairs it lets through, pairwise precision, recall
and F1; the raw dlib descriptors' norms and what dlib's own rule (euclidean distance < 0.6 between
raw descriptors) converts to in cosine similarity on each set, and how that rule itself scores; and
how far img1.jpg's person stands from everyone else. Each profile's search_threshold
(facepipe/engine/profiles) holds the chosen value.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.labelled_faces import FaceSet, combined, identities_of, labelled_sets
from facepipe.engine.profiles import PROFILES

THRESHOLDS = np.round(np.arange(0.890, 0.9601, 0.005), 4)
DLIB_RULE = 0.6  # dlib's same-person rule: euclidean distance between raw descriptors


def pair_line(same_matched: int, same: int, different_matched: int, different: int) -> str:
    precision = same_matched / max(same_matched + different_matched, 1)
    recall = same_matched / max(same, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return (
        f"same-person matched {same_matched}/{same}, different-person matched {different_matched}/{different}, "
        f"P {precision:.3f}  R {recall:.3f}  F1 {f1:.3f}"
    )


def report(faces: FaceSet, profile: str) -> None:
    print(f"\n## {faces.describe()}")
    who = np.array(faces.truth)
    vectors = faces.vectors[faces.labelled]
    upper = np.triu_indices(len(who), 1)
    same, similarity = (who[:, None] == who[None, :])[upper], (vectors @ vectors.T)[upper]
    print(
        f"{same.sum()} same-person pairs, {(~same).sum()} different-person pairs; same-person similarity "
        f"min {similarity[same].min():.4f}, median {np.median(similarity[same]):.3f}; different-person "
        f"median {np.median(similarity[~same]):.3f}, max {similarity[~same].max():.4f}"
    )
    closest = np.argmax(np.where(same, -2.0, similarity))
    i, j = upper[0][closest], upper[1][closest]
    print(
        f"closest different-person pair: {faces.photos[faces.labelled[i]]} ({who[i]}) and "
        f"{faces.photos[faces.labelled[j]]} ({who[j]}), {similarity[~same].max():.4f}"
    )
    of_set = np.array([t.split(":", 1)[0] for t in who]) if ":" in who[0] else None
    if of_set is not None:  # the sets together: how close do people of different sets come?
        across = (of_set[:, None] != of_set[None, :])[upper]
        print(f"{across.sum()} pairs across sets: similarity max {similarity[across].max():.4f}")

    if faces.raw_norms is not None and profile == "dlib":
        norms = faces.raw_norms
        mean = norms.mean()
        raw = vectors * norms[:, None]
        distance = np.linalg.norm(raw[:, None, :] - raw[None, :, :], axis=2)[upper]
        near = np.abs(distance - DLIB_RULE) <= 0.02
        print(
            f"raw descriptor norms: mean {mean:.3f} (min {norms.min():.3f}, max {norms.max():.3f}); dlib's "
            f"{DLIB_RULE} rule converts to cosine 1 - {DLIB_RULE}² / (2 · {mean:.3f}²) = "
            f"{1 - DLIB_RULE**2 / (2 * mean**2):.4f}; pairs at a raw distance of {DLIB_RULE} ± 0.02 have "
            f"cosine {similarity[near].min():.3f} to {similarity[near].max():.3f}"
        )
        rule = distance < DLIB_RULE
        print(
            f"dlib's own rule, raw distance < {DLIB_RULE}: "
            + pair_line(int(rule[same].sum()), int(same.sum()), int(rule[~same].sum()), int((~same).sum()))
        )

    chosen = PROFILES[profile].search_threshold
    print("cosine threshold sweep:")
    for threshold in sorted({*THRESHOLDS, chosen}):
        line = pair_line(
            int((similarity[same] >= threshold).sum()),
            int(same.sum()),
            int((similarity[~same] >= threshold).sum()),
            int((~same).sum()),
        )
        print(f"  >= {threshold:.4f}: {line}{'  <- default' if threshold == chosen else ''}")


def img1_margin(faces: FaceSet) -> None:
    """img1.jpg's search: her other faces (the couple's and the selfie's included) vs everyone else."""
    identities = identities_of("images")
    query = faces.photos.index("img1.jpg")
    scores = faces.vectors @ faces.vectors[query]
    hers = [s for i, s in enumerate(scores) if i != query and identities.get(faces.photos[i]) == "person01"]
    # the couple and the selfie are unlabelled: her face there is their best match
    hers += [
        max(s for i, s in enumerate(scores) if faces.photos[i] == photo)
        for photo in ("couple.jpg", "selfie-many-people.jpg")
    ]
    others = [s for i, s in enumerate(scores) if identities.get(faces.photos[i], "person01") != "person01"]
    print(
        f"\nimg1.jpg: her {len(hers)} other faces (couple and selfie included) {min(hers):.3f} to {max(hers):.3f}; "
        f"nearest labelled other person {max(others):.3f}"
    )


def main() -> None:
    args, sets = labelled_sets(__doc__.split("\n")[0])
    for faces in sets:
        report(faces, args.profile)
    if len(sets) > 1:
        report(combined(sets), args.profile)
    for faces in sets:
        if faces.name == "images":
            img1_margin(faces)


if __name__ == "__main__":
    main()
