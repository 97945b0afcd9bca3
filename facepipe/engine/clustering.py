"""Faces into people: cluster unit-length embeddings, assign new faces, keep person ids stable.

The algorithm is average-linkage agglomerative clustering on cosine distance, cut at a
per-profile distance (benchmarks/clustering.py measures it against Chinese whispers, DBSCAN,
HDBSCAN, single and complete linkage on the labelled sets of benchmarks/labelled_faces.py).
Average linkage joins two groups of faces when they are close *on average*, so one look-alike
pair does not chain two people together (single linkage, DBSCAN), and one odd photo does not
split a person (complete linkage).
"""

import heapq
from collections import Counter

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# The cut, a cosine distance at which average linkage stops merging, is each profile's
# `cluster_distance` (engine/profiles), where dlib's is measured on three labelled sets
# (benchmarks/clustering.py; docs/measurements/clustering.md): a wrong merge is worse than a missed one.

# Average linkage needs every pairwise distance of what it clusters (n² / 2 float64, and scipy
# copies them: 8 n² bytes). Up to DIRECT faces it runs on them all at once; beyond, on blocks that
# provably hold whole clusters (see cluster_embeddings), each at most MAX_EXACT_BLOCK faces (~0.5 GB).
DIRECT = 2000
MAX_EXACT_BLOCK = 8000
ROWS_PER_BLOCK = 256  # rows of the blockwise neighbour search: 256 x n float32 at a time (100 MB at 100k)
SPARSE_NEIGHBOURS = 64  # in an oversized block: each face's nearest faces within the cut


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.asarray(a, np.float64) @ np.asarray(b, np.float64).T, 0.0, 2.0)


def cluster_embeddings(vectors: np.ndarray, max_distance: float) -> np.ndarray:
    """A cluster label (0, 1, ...) per row of unit vectors, by average linkage on cosine distance.

    At scale it splits the faces into blocks first, without changing the answer: average linkage
    only joins two groups whose mean distance is within the cut, so at least one pair across them
    is within it, and every cluster lies inside one connected component of the graph "distance <=
    cut". The components come from a blockwise neighbour search (ROWS_PER_BLOCK rows at a time,
    memory ~ 2 KB x n), and average linkage runs exactly inside each. A component larger than
    MAX_EXACT_BLOCK (a chain of look-alikes) is clustered by sparse_average_linkage: the same means,
    from cluster sums, compared along each face's SPARSE_NEIGHBOURS nearest neighbours within the cut.
    """
    vectors = np.asarray(vectors, np.float32)
    n = len(vectors)
    if n < 2:
        return np.zeros(n, dtype=int)
    if n <= DIRECT:
        return _exact_average_linkage(vectors, max_distance)
    rows, cols, _ = neighbour_pairs(vectors, max_distance)
    n_blocks, block_of = connected_components(
        coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n)), directed=False
    )
    labels = np.empty(n, dtype=int)
    next_label = 0
    order = np.argsort(block_of, kind="stable")
    bounds = np.flatnonzero(np.diff(block_of[order])) + 1
    for idx in np.split(order, bounds):
        if len(idx) == 1:
            sub = np.zeros(1, dtype=int)
        elif len(idx) <= MAX_EXACT_BLOCK:
            sub = _exact_average_linkage(vectors[idx], max_distance)
        else:
            r, c, _ = neighbour_pairs(vectors[idx], max_distance, SPARSE_NEIGHBOURS)
            sub = sparse_average_linkage(vectors[idx], r, c, max_distance)
        labels[idx] = sub + next_label
        next_label += int(sub.max()) + 1
    # number clusters by first face, as fcluster's labels would not be comparable anyway
    _, first = np.unique(labels, return_index=True)
    renumber = np.empty(labels.max() + 1, dtype=int)
    renumber[labels[np.sort(first)]] = np.arange(len(first))
    return renumber[labels]


def _exact_average_linkage(vectors: np.ndarray, max_distance: float) -> np.ndarray:
    n = len(vectors)
    if n < 2:
        return np.zeros(n, dtype=int)
    x = np.asarray(vectors, np.float64)
    condensed = np.empty(n * (n - 1) // 2)  # the upper triangle, row by row, without the n x n matrix
    at = 0
    for start in range(0, n, ROWS_PER_BLOCK):
        block = np.clip(1.0 - x[start : start + ROWS_PER_BLOCK] @ x.T, 0.0, 2.0)
        for k, row in enumerate(block):
            i = start + k
            condensed[at : at + n - i - 1] = row[i + 1 :]
            at += n - i - 1
    tree = linkage(condensed, method="average")
    del condensed
    return fcluster(tree, t=max_distance, criterion="distance") - 1


def neighbour_pairs(vectors: np.ndarray, radius: float, max_neighbours: int | None = None):
    """Pairs (i < j) of unit vectors within cosine distance `radius`, with their distance, found
    ROWS_PER_BLOCK rows at a time (exact, no index); at most `max_neighbours` nearest per row."""
    x = np.asarray(vectors, np.float32)
    n = len(x)
    rows, cols, dists = [], [], []
    least = 1.0 - radius - 1e-5  # float32 products: keep pairs at the edge, linkage decides in float64
    for start in range(0, n, ROWS_PER_BLOCK):
        similar = x[start : start + ROWS_PER_BLOCK] @ x.T  # the one block-sized array: ROWS_PER_BLOCK x n float32
        if max_neighbours is not None and max_neighbours + 1 < n:
            keep = np.argpartition(-similar, max_neighbours, axis=1)[:, : max_neighbours + 1]
            r = np.repeat(np.arange(len(similar)), keep.shape[1])
            c = keep.ravel()
            near = similar[r, c] >= least
            r, c = r[near], c[near]
        else:
            r, c = np.nonzero(similar >= least)
        upper = r + start < c
        r, c = r[upper], c[upper]
        rows.append(r + start)
        cols.append(c)
        dists.append(np.clip(1.0 - similar[r, c].astype(np.float64), 0.0, 2.0))
        del similar
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)


def sparse_average_linkage(vectors: np.ndarray, rows, cols, max_distance: float) -> np.ndarray:
    """Average linkage cut at `max_distance`, without a distance matrix.

    For unit vectors the mean cosine distance between two clusters is 1 - (sum of A) . (sum of B) /
    (|A| |B|), so each cluster keeps the sum of its vectors and the mean is exact. Which clusters
    to compare comes from the neighbour graph (rows, cols): two clusters are only compared once
    some face of one is a neighbour of a face of the other, which every pair that average linkage
    joins is, if the graph holds every pair within the cut.
    """
    n = len(vectors)
    sums = np.asarray(vectors, np.float64).copy()
    size = np.ones(n)
    parent = np.arange(n)
    links: list[set] = [set() for _ in range(n)]
    for i, j in zip(rows.tolist(), cols.tolist()):
        if i != j:
            links[i].add(j)
            links[j].add(i)

    def push(a, others):
        if not others:
            return
        others = np.fromiter(others, int, len(others))
        means = 1.0 - (sums[others] @ sums[a]) / (size[others] * size[a])
        for other, mean in zip(others[means <= max_distance].tolist(), means[means <= max_distance].tolist()):
            x, y = (a, other) if a < other else (other, a)
            heapq.heappush(heap, (mean, x, y, size[x], size[y]))

    heap: list = []
    for a in range(n):
        push(a, {b for b in links[a] if b > a})
    while heap:
        _, a, b, size_a, size_b = heapq.heappop(heap)
        if parent[a] != a or parent[b] != b or size[a] != size_a or size[b] != size_b:
            continue  # stale: one side has merged since
        if len(links[a]) < len(links[b]):
            a, b = b, a
        parent[b] = a  # b joins a
        sums[a] += sums[b]
        size[a] += size[b]
        for other in links[b]:
            links[other].discard(b)
            if other != a:
                links[other].add(a)
                links[a].add(other)
        links[a].discard(b)
        links[b] = set()
        push(a, links[a])

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    _, labels = np.unique([root(i) for i in range(n)], return_inverse=True)
    return labels


def nearest_person(vector: np.ndarray, people: dict[int, np.ndarray], max_distance: float) -> int | None:
    """The person whose faces are closest on average (as average linkage would join them), if close enough.

    The definition; facepipe.domain.people finds the same person with one query, since for unit vectors the
    mean cosine distance to a person's faces is 1 - vector . (the mean of their faces).
    """
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
    order = np.argsort(labels, kind="stable")  # members of each cluster in O(n log n), not O(n x clusters)
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    members = {int(labels[idx[0]]): idx for idx in np.split(order, bounds)} if len(labels) else {}
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
    return [ids[c] for c in labels.tolist()]


def medoid(vectors: np.ndarray) -> int:
    """The row closest on average to all the others: a person's most typical face.

    For unit rows the summed cosine distance of row i is n - v_i . (sum of rows): O(n), no n x n matrix.
    """
    vectors = np.asarray(vectors, np.float64)
    return int(np.argmax(vectors @ vectors.sum(axis=0)))


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
