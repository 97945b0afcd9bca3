"""How the search threshold separates same-person from different-person faces on the sample photos.

    .venv/bin/python benchmarks/search_threshold.py                     # embed ../shared/faces/images now
    .venv/bin/python benchmarks/search_threshold.py --store HOME/qdrant --group sample

Prints, over the pairs of the labelled one-face photos, how many same-person pairs a cosine
threshold keeps and how many different-person pairs it lets through, and how far img1.jpg's
person stands from everyone else. facepipe.search.DEFAULT_THRESHOLDS holds the chosen value.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clustering import sample_faces  # noqa: E402
from facepipe.search import DEFAULT_THRESHOLDS  # noqa: E402


def main() -> None:
    args, identities, names, vectors, labelled = sample_faces(__doc__.split("\n")[0])
    who = np.array([identities[names[i]] for i in labelled])
    similarity = vectors[labelled] @ vectors[labelled].T
    upper = np.triu_indices(len(labelled), 1)
    same, pairs = (who[:, None] == who[None, :])[upper], similarity[upper]
    print(f"{len(labelled)} labelled faces: {same.sum()} same-person pairs, {(~same).sum()} different-person pairs")
    print(f"same person: min {pairs[same].min():.3f}, median {np.median(pairs[same]):.3f}; "
          f"different: median {np.median(pairs[~same]):.3f}, max {pairs[~same].max():.3f}")

    chosen = DEFAULT_THRESHOLDS[args.profile]
    for threshold in sorted({*np.round(np.arange(0.90, 0.9501, 0.005), 4), chosen}):
        kept, let_through = int((pairs[same] >= threshold).sum()), int((pairs[~same] >= threshold).sum())
        precision = kept / max(kept + let_through, 1)
        recall = kept / same.sum()
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        mark = "  <- default" if threshold == chosen else ""
        print(f"cosine >= {threshold:.4f}: same kept {kept}/{same.sum()}, different let through "
              f"{let_through}/{(~same).sum()}, pairwise F1 {f1:.3f}{mark}")

    query = names.index("img1.jpg")
    scores = vectors @ vectors[query]
    hers = [s for i, s in enumerate(scores) if i != query and identities.get(names[i]) == "person01"]
    # the couple and the selfie are unlabelled: her face there is their best match
    hers += [max(s for i, s in enumerate(scores) if names[i] == photo) for photo in ("couple.jpg", "selfie-many-people.jpg")]
    others = [s for i, s in enumerate(scores) if identities.get(names[i], "person01") != "person01"]
    print(f"img1.jpg: her other faces (couple and selfie included) {min(hers):.3f} to {max(hers):.3f}; "
          f"nearest labelled other person {max(others):.3f}")


if __name__ == "__main__":
    main()
