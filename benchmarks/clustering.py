"""Pairwise precision, recall and F1 of face clustering on the labelled sets, each alone and together.

    .venv/bin/python benchmarks/clustering.py                       # embed every labelled set now (~3 CPU min)
    .venv/bin/python benchmarks/clustering.py --sets lfw10          # one set
    .venv/bin/python benchmarks/clustering.py --store HOME/qdrant --group sample   # a digested group

Every face found is clustered (the couple, the selfie and LFW's background faces too); the scores
count the pairs of scored faces (benchmarks/labelled_faces.py says which): same cluster vs same
person. Per set, and for the sets clustered together (people of different sets are different
people): a sweep of facepipe's cut (average linkage, facepipe.engine.clustering), the exact cuts
at which precision and recall stop being perfect, then the algorithms the cut was chosen against.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.labelled_faces import FaceSet, combined, labelled_sets
from facepipe.engine.clustering import cluster_embeddings, cosine_distances, pairwise_scores
from facepipe.engine.profiles import PROFILES

CUTS = np.round(np.arange(0.050, 0.1251, 0.005), 4)


def algorithms(profile: str) -> dict:
    import dlib
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from sklearn.cluster import DBSCAN, HDBSCAN

    def linkage_cut(method, t):
        def run(x):
            d = cosine_distances(x, x)
            np.fill_diagonal(d, 0.0)
            return fcluster(linkage(squareform(d, checks=False), method=method), t, criterion="distance")

        return run

    def ward_cut(t):
        return lambda x: fcluster(linkage(x, method="ward"), t, criterion="distance")

    def chinese_whispers(euclidean):  # on unit vectors: cosine distance = euclidean² / 2
        return lambda x: np.array(
            dlib.chinese_whispers_clustering([dlib.vector(v) for v in x.astype(float)], euclidean)
        )

    def precomputed(model):
        return lambda x: model.fit_predict(np.clip(cosine_distances(x, x), 0, 2))

    chosen = PROFILES[profile].cluster_distance
    found = {f"average linkage, cosine distance {chosen} (facepipe)": lambda x: cluster_embeddings(x, chosen)}
    for t in (0.06, 0.09, 0.10):
        found[f"average linkage, cosine distance {t}"] = linkage_cut("average", t)
    for t in (0.07, 0.09):
        found[f"complete linkage, cosine distance {t}"] = linkage_cut("complete", t)
    for t in (0.60, 0.65):  # Ward's heights grow with the clusters' sizes: a cut is not a distance
        found[f"Ward linkage, euclidean {t} on unit vectors"] = ward_cut(t)
    for t in (0.06, 0.07):
        found[f"single linkage, cosine distance {t}"] = linkage_cut("single", t)
    for e in (0.30, 0.35, 0.40):
        found[f"Chinese whispers, euclidean {e} (cosine {e * e / 2:.3f})"] = chinese_whispers(e)
    for eps in (0.06, 0.07):
        found[f"DBSCAN eps {eps}, min_samples 2"] = precomputed(DBSCAN(eps=eps, min_samples=2, metric="precomputed"))
    found["HDBSCAN min_cluster_size 2"] = precomputed(HDBSCAN(min_cluster_size=2, metric="precomputed", copy=True))
    return found


def scores(faces: FaceSet, labels) -> dict:
    labels = np.asarray(labels)
    predicted = [labels[i] if labels[i] >= 0 else f"noise{i}" for i in faces.labelled]  # noise: alone
    return {**pairwise_scores(predicted, faces.truth), "clusters": len(set(predicted))}


def sets_mixed(faces: FaceSet, labels) -> int:
    """How many clusters hold faces (scored or not) of more than one set."""
    of_set = np.array([photo.split("/", 1)[0] for photo in faces.photos])
    return sum(len(set(of_set[labels == c])) > 1 for c in np.unique(labels))


def who_is_split_or_merged(faces: FaceSet, labels) -> str:
    """The people whose scored faces are in several clusters (with the sizes), and the clusters
    holding several people."""
    labels, truth = np.asarray(labels)[faces.labelled], np.array(faces.truth)
    split = []
    for p in sorted(set(faces.truth)):
        sizes = sorted(np.unique(labels[truth == p], return_counts=True)[1], reverse=True)
        if len(sizes) > 1:
            split.append(f"{p} ({' + '.join(str(n) for n in sizes)})")
    together = [sorted(set(truth[labels == c])) for c in np.unique(labels)]
    merged = [" with ".join(people) for people in together if len(people) > 1]
    return f"people split: {', '.join(split) or 'none'}; people merged: {'; '.join(merged) or 'none'}"


RECALL_LEVELS = (0.95, 0.98, 1.0)


def exact_edges(faces: FaceSet) -> tuple[float, str, dict[float, float]]:
    """The cut at which average linkage makes its first wrong merge (precision is 1.000 below it)
    and whom it joins, and the cut from which recall reaches each of RECALL_LEVELS: the heights of
    the tree's merges."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    d = cosine_distances(faces.vectors, faces.vectors)
    np.fill_diagonal(d, 0.0)
    tree = linkage(squareform(d, checks=False), method="average")
    person = dict(zip(faces.labelled, faces.truth))
    same_pairs = sum(n * (n - 1) // 2 for n in (faces.truth.count(p) for p in set(faces.truth)))
    # the scored faces each cluster holds, per person; a cut keeps every merge up to its height
    people = {i: {person[i]: 1} if i in person else {} for i in range(len(faces.photos))}
    first_wrong, wrongly_joined, joined, reached = float("inf"), "", 0, {}
    for k, (a, b, height, _) in enumerate(tree):
        left, right = people.pop(int(a)), people.pop(int(b))
        joined += sum(n * right.get(p, 0) for p, n in left.items())  # same-person pairs now together
        merged = {p: left.get(p, 0) + right.get(p, 0) for p in {*left, *right}}
        people[len(faces.photos) + k] = merged
        if len(merged) > 1 and height < first_wrong:
            first_wrong = float(height)
            wrongly_joined = f"{' + '.join(sorted(left))} with {' + '.join(sorted(right))}"
        for level in RECALL_LEVELS:
            if level not in reached and joined >= level * same_pairs - 1e-9:
                reached[level] = float(height)
    return first_wrong, wrongly_joined, reached


def report(faces: FaceSet, profile: str, several_sets: bool) -> None:
    chosen = PROFILES[profile].cluster_distance
    print(f"\n## {faces.describe()}")
    print("average linkage (facepipe's algorithm) by cut, cosine distance:")
    for cut in sorted({*CUTS, chosen}):
        labels = cluster_embeddings(faces.vectors, cut)
        s = scores(faces, labels)
        mixed = f"  clusters mixing sets {sets_mixed(faces, labels)}" if several_sets else ""
        mark = "  <- default" if cut == chosen else ""
        print(
            f"  cut {cut:.3f}  P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}  "
            f"clusters {s['clusters']}{mixed}{mark}"
        )
    labels = cluster_embeddings(faces.vectors, chosen)
    print(f"  at the default: {who_is_split_or_merged(faces, labels)}")
    first_wrong, wrongly_joined, reached = exact_edges(faces)
    print(
        f"  exactly: precision 1.000 below a cut of {first_wrong:.4f} (the first wrong merge, {wrongly_joined}); "
        "recall " + ", ".join(f"{level:.2f} from {cut:.4f}" for level, cut in reached.items())
    )
    print("the algorithms compared:")
    for name, run in algorithms(profile).items():
        s = scores(faces, run(faces.vectors))
        print(f"  {name:<48} P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}  clusters {s['clusters']}")


def main() -> None:
    args, sets = labelled_sets(__doc__.split("\n")[0])
    for faces in sets:
        report(faces, args.profile, several_sets=False)
    if len(sets) > 1:
        report(combined(sets), args.profile, several_sets=True)


if __name__ == "__main__":
    main()
