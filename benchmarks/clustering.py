"""Pairwise precision, recall and F1 of face clustering on the labelled sample photos.

    .venv/bin/python benchmarks/clustering.py                       # embed ../shared/faces/images now
    .venv/bin/python benchmarks/clustering.py --store HOME/qdrant --group sample   # a digested group

Every face found is clustered (the couple and the selfie too); the scores count the pairs of faces
of the labelled one-face photos (identities.csv): same cluster vs same person. The first line is
the algorithm facepipe uses (facepipe.engine.clustering), the others are what it was chosen against.
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facepipe.engine.clustering import CLUSTER_DISTANCE, cluster_embeddings, cosine_distances, pairwise_scores  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "faces"


def embed_folder(folder: Path, profile: str) -> tuple[list[str], np.ndarray]:
    from facepipe.engine.faces import ImageTask, faces_in_chunk
    from facepipe.engine.images import list_images

    result = faces_in_chunk([ImageTask(f.path) for f in list_images(folder)], profile, confidence=0.5)
    faces = [(Path(r.path).name, face.embedding) for r in result.images for face in r.faces]
    return [name for name, _ in faces], np.array([vector for _, vector in faces])


def stored_faces(store_path: str, group: str, profile: str) -> tuple[list[str], np.ndarray]:
    from facepipe.store import FaceStore

    with FaceStore.open(path=store_path) as store:
        faces = store.faces(group, profile, with_vectors=True)
    return [Path(f.payload["image_path"]).name for f in faces], np.array([f.vector for f in faces])


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

    def chinese_whispers(euclidean):  # on unit vectors: cosine distance = euclidean² / 2
        return lambda x: np.array(dlib.chinese_whispers_clustering([dlib.vector(v) for v in x.astype(float)],
                                                                   euclidean))

    def precomputed(model):
        return lambda x: model.fit_predict(np.clip(cosine_distances(x, x), 0, 2))

    chosen = CLUSTER_DISTANCE[profile]
    found = {f"average linkage, cosine distance {chosen} (facepipe)": lambda x: cluster_embeddings(x, chosen)}
    for t in (0.06, 0.09, 0.10):
        found[f"average linkage, cosine distance {t}"] = linkage_cut("average", t)
    for t in (0.07, 0.09):
        found[f"complete linkage, cosine distance {t}"] = linkage_cut("complete", t)
    for t in (0.06, 0.07):
        found[f"single linkage, cosine distance {t}"] = linkage_cut("single", t)
    for e in (0.30, 0.35, 0.40):
        found[f"Chinese whispers, euclidean {e} (cosine {e * e / 2:.3f})"] = chinese_whispers(e)
    for eps in (0.06, 0.07):
        found[f"DBSCAN eps {eps}, min_samples 2"] = precomputed(DBSCAN(eps=eps, min_samples=2, metric="precomputed"))
    found["HDBSCAN min_cluster_size 2"] = precomputed(HDBSCAN(min_cluster_size=2, metric="precomputed", copy=True))
    return found


def sample_faces(description: str):
    """The command line shared by the sample-photo benchmarks, and the faces it names: their photo
    names, embeddings, the labelled photos' identities, and the indexes of the labelled one-face photos."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--store", help="an embedded Qdrant store folder holding a digest of the samples")
    parser.add_argument("--group", default="sample")
    parser.add_argument("--profile", default="dlib")
    args = parser.parse_args()

    with open(SAMPLES / "identities.csv") as f:
        identities = {row["image"]: row["identity"] for row in csv.DictReader(f)}
    if args.store:
        names, vectors = stored_faces(args.store, args.group, args.profile)
    else:
        names, vectors = embed_folder(SAMPLES / "images", args.profile)
    labelled = [i for i, name in enumerate(names) if name in identities and names.count(name) == 1]
    return args, identities, names, vectors, labelled


def main() -> None:
    args, identities, names, vectors, labelled = sample_faces(__doc__.split("\n")[0])
    truth = [identities[names[i]] for i in labelled]
    print(f"{len(names)} faces clustered, {len(labelled)} labelled, {len(set(truth))} people")

    for name, run in algorithms(args.profile).items():
        labels = np.asarray(run(vectors))
        predicted = [labels[i] if labels[i] >= 0 else f"noise{i}" for i in labelled]  # noise: alone
        s = pairwise_scores(predicted, truth)
        print(f"{name:<48} P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}  "
              f"clusters {len(set(predicted))}")


if __name__ == "__main__":
    main()
