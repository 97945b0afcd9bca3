"""Faces into people: cluster unit-length embeddings, assign new faces, keep person ids stable.

The algorithm is average-linkage agglomerative clustering on cosine distance, cut at a
per-profile distance (benchmarks/clustering.py measures it against Chinese whispers, DBSCAN,
HDBSCAN, single and complete linkage on the two labelled sets of ../shared/faces). Average linkage joins two groups of
faces when they are close *on average*, so one look-alike pair does not chain two people
together (single linkage, DBSCAN), and one odd photo does not split a person (complete linkage).
"""

from collections import Counter

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

# Cosine distance at which average linkage stops merging. dlib, measured on both labelled sets of
# ../shared/faces (benchmarks/clustering.py): precision is 1.000 on each, and on the two clustered
# together, below 0.0924 (the first wrong merge, two look-alikes of images/); recall is 1.000 on
# images/ from 0.0577, and on lfw10/ 0.980 from 0.0724 (one photo apart) and 1.000 from 0.0894.
# 0.08 is near the middle of 0.0724-0.0924, on its lower side: a wrong merge is worse than a
# missed one. ArcFace: deepface's same-person cosine distance (0.68), not calibrated here (its
# weights cannot be downloaded where this was measured).
CLUSTER_DISTANCE = {"dlib": 0.08, "retinaface-arcface": 0.68}


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.asarray(a, np.float64) @ np.asarray(b, np.float64).T, 0.0, 2.0)


def cluster_embeddings(vectors: np.ndarray, max_distance: float) -> np.ndarray:
    """A cluster label (0, 1, ...) per row of unit vectors, by average linkage on cosine distance."""
    n = len(vectors)
    if n < 2:
        return np.zeros(n, dtype=int)
    distances = cosine_distances(vectors, vectors)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="average")
    labels = fcluster(tree, t=max_distance, criterion="distance")
    return labels - 1


def nearest_person(vector: np.ndarray, people: dict[int, np.ndarray], max_distance: float) -> int | None:
    """The person whose faces are closest on average (as average linkage would join them), if close enough."""
    best, best_distance = None, max_distance
    for person_id, faces in people.items():
        distance = float(cosine_distances(vector[None, :], faces).mean())
        if distance <= best_distance:
            best, best_distance = person_id, distance
    return best


def carry_over_ids(labels, previous: list[int | None], pinned: list[bool], next_id: int) -> list[int]:
    """Give each cluster a person id, keeping the ids of people whose faces mostly stay together.

    - A cluster at least half made of faces pinned to one person (by a merge or a split) is that person.
    - Otherwise a cluster takes the id of a previous person if it holds more than half of that
      person's faces (largest overlap first, one cluster per id).
    - Every other cluster is a new person.
    """
    labels = np.asarray(labels)
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    person_sizes = Counter(p for p in previous if p is not None)
    ids: dict[int, int] = {}

    for c, idx in members.items():
        pins = Counter(previous[i] for i in idx if pinned[i] and previous[i] is not None)
        if pins:
            person, count = pins.most_common(1)[0]
            if 2 * count >= len(idx):
                ids[c] = person

    candidates = []
    for c, idx in members.items():
        if c in ids:
            continue
        for person, overlap in Counter(previous[i] for i in idx if previous[i] is not None).items():
            if 2 * overlap > person_sizes[person]:
                candidates.append((overlap, -len(idx), int(c), person))
    taken = set(ids.values())
    for _, _, c, person in sorted(candidates, reverse=True):
        if c not in ids and person not in taken:
            ids[c] = person
            taken.add(person)

    for c in sorted((c for c in members if c not in ids), key=lambda c: (-len(members[c]), c)):
        ids[c] = next_id
        next_id += 1
    return [ids[c] for c in labels]


def medoid(vectors: np.ndarray) -> int:
    """The row closest on average to all the others: a person's most typical face."""
    return int(np.argmin(cosine_distances(vectors, vectors).sum(axis=1)))


def pairwise_scores(predicted, truth) -> dict[str, float]:
    """Pairwise precision, recall and F1: over all pairs of faces, is 'same cluster' = 'same person'?"""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    upper = np.triu_indices(len(truth), 1)
    same_pred = (predicted[:, None] == predicted[None, :])[upper]
    same_true = (truth[:, None] == truth[None, :])[upper]
    true_positives = int((same_pred & same_true).sum())
    precision = true_positives / max(int(same_pred.sum()), 1)
    recall = true_positives / max(int(same_true.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
