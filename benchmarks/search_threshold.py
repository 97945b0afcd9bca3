"""How the search threshold separates same-person from different-person faces, per labelled set and together.

    .venv/bin/python benchmarks/search_threshold.py                 # embed every labelled set now (~3 CPU min)
    .venv/bin/python benchmarks/search_threshold.py --sets images   # one set
    .venv/bin/python benchmarks/search_threshold.py --store HOME/qdrant --group sample

Over the pairs of scored faces (benchmarks/labelled_faces.py says which), per set and for the sets
together (people of different sets are different people): how many same-person pairs a cosine
threshold matches and how many different-person pairs it lets through, pairwise precision, recall
and F1; the raw dlib descriptors' norms and what dlib's own rule (euclidean distance < 0.6 between
raw descriptors) converts to in cosine similarity on each set, and how that rule itself scores; and
how far img1.jpg's person stands from everyone else. Then search as a user runs it, on the sets
together as one group: each labelled photo in turn is the selfie, a photo is returned when its best
face reaches the threshold (search.py ranks photos so), and per threshold: the share of the
person's other photos returned (search recall), and the photos of other people returned (false
matches per query). Each profile's search_threshold (facepipe/engine/profiles) holds the chosen value.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.labelled_faces import FaceSet, combined, identities_of, labelled_sets
from facepipe.engine.profiles import PROFILES

THRESHOLDS = np.round(np.arange(0.900, 0.9601, 0.005), 4)
# the unlabelled photos of `images` in which person01 is one of several faces
PERSON01_ALSO = ("couple.jpg", "selfie-many-people.jpg")
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


def user_searches(faces: FaceSet, profile: str) -> None:
    """Each labelled photo's face in turn is the selfie; the group is every face of `faces`.

    A returned photo is a stranger's when its best face is another person's scored face; a photo
    returned on a face nobody labelled (LFW's background faces, the couple's other face) is counted
    apart: it may be the selfie's person.
    """
    photos = np.array(faces.photos)
    starts = np.flatnonzero(np.r_[True, photos[1:] != photos[:-1]])  # a photo's faces are consecutive
    assert len(starts) == len(set(faces.photos)), "a photo's faces are not consecutive"
    person = {faces.photos[row]: who for row, who in zip(faces.labelled, faces.truth)}
    for photo in PERSON01_ALSO:  # person01's photos among others, in `images` alone or with other sets
        for name, who in ((photo, "person01"), (f"images/{photo}", "images:person01")):
            if name in person or name in faces.photos:
                person[name] = who
    photo_person = np.array([person.get(p, "") for p in photos[starts]])
    query_person = np.array(faces.truth)
    query_photo = np.searchsorted(starts, faces.labelled, side="right") - 1
    similarity = faces.vectors[faces.labelled] @ faces.vectors.T
    best = np.maximum.reduceat(similarity, starts, axis=1)  # each selfie against each photo's best face
    ends = np.r_[starts[1:], len(photos)]
    best_row = np.stack([s + np.argmax(similarity[:, s:e], axis=1) for s, e in zip(starts, ends)], axis=1)
    own = query_photo[:, None] == np.arange(len(starts))[None, :]
    target = (photo_person[None, :] == query_person[:, None]) & ~own
    other = (photo_person[None, :] != "") & (photo_person[None, :] != query_person[:, None])
    on_scored = np.isin(best_row, faces.labelled)
    print(
        f"\n## Search as a user runs it: {faces.name}, {len(query_person)} selfies (each labelled photo's face) "
        f"against {len(starts)} photos; {int(target.sum())} photos of the selfie's person to find"
    )
    chosen = PROFILES[profile].search_threshold
    print(
        "| cosine ≥ | search recall | selfies finding all their photos | selfies with a stranger | "
        "stranger photos per selfie | photos matched on an unlabelled face |"
    )
    print("|---|---|---|---|---|---|")
    for threshold in sorted({*THRESHOLDS, chosen}):
        returned = (best >= threshold) & ~own
        found = (returned & target).sum(axis=1)
        stranger = returned & other & on_scored
        unlabelled = returned & ~target & ~stranger
        mark = "  <- default" if threshold == chosen else ""
        print(
            f"| {threshold:.3f}{mark} | {found.sum() / target.sum():.3f} ({found.sum()}/{target.sum()}) "
            f"| {(found == target.sum(axis=1)).sum()}/{len(found)} | {(stranger.sum(axis=1) > 0).sum()} "
            f"| {stranger.sum() / len(found):.4f} ({stranger.sum()}) | {unlabelled.sum()} |"
        )


def main() -> None:
    args, sets = labelled_sets(__doc__.split("\n")[0])
    for faces in sets:
        report(faces, args.profile)
    together = combined(sets) if len(sets) > 1 else sets[0]
    if len(sets) > 1:
        report(together, args.profile)
    user_searches(together, args.profile)
    if len(sets) > 1:  # and each set alone as a group
        for faces in sets:
            user_searches(faces, args.profile)
    for faces in sets:
        if faces.name == "images":
            img1_margin(faces)


if __name__ == "__main__":
    main()
