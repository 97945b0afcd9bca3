"""The clustering engine on small made-up embeddings: clusters, stable ids, pins, scores."""

import numpy as np

from facepipe.engine.clustering import carry_over_ids, cluster_embeddings, medoid, nearest_person, pairwise_scores
from facepipe.engine.profiles import unit_rows


def three_people(seed=0, per_person=4):
    """Tight bunches of unit vectors around three orthogonal directions."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 16)
    return unit_rows(np.repeat(centres, per_person, axis=0) + rng.normal(0, 0.05, (3 * per_person, 16)))


def test_average_linkage_finds_the_three_people():
    labels = cluster_embeddings(three_people(), max_distance=0.3)
    assert pairwise_scores(labels, np.repeat([0, 1, 2], 4)) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert len(cluster_embeddings(three_people()[:1], 0.3)) == 1


def test_a_recluster_keeps_the_ids_of_people_who_stay_together():
    labels = [0, 0, 0, 1, 1, 2, 2]  # cluster 0 still holds most of person 7, cluster 1 most of person 3
    previous = [7, 7, 3, 3, 3, None, None]
    assert carry_over_ids(labels, previous, [False] * 7, next_id=10) == [7, 7, 7, 3, 3, 10, 10]


def test_a_split_person_keeps_its_id_on_the_larger_part_only():
    labels = [0, 0, 0, 1, 1]
    previous = [5, 5, 5, 5, 5]
    assert carry_over_ids(labels, previous, [False] * 5, next_id=6) == [5, 5, 5, 6, 6]


def test_a_cluster_mostly_pinned_to_a_person_is_that_person():
    labels = [0, 0, 1, 1]  # a merge pinned all four faces to person 2; the clustering disagrees
    assert carry_over_ids(labels, [2, 2, 2, 2], [True] * 4, next_id=3) == [2, 2, 2, 2]


def test_a_new_face_joins_the_nearest_person_only_if_close_enough():
    vectors = three_people()
    people = {1: vectors[0:3], 2: vectors[4:7]}
    assert nearest_person(vectors[3], people, 0.3) == 1
    assert nearest_person(vectors[8], people, 0.3) is None
    assert medoid(vectors[:4]) in range(4)


def test_pairwise_scores_count_pairs():
    # truth: {a a b}; predicted puts all three together: 1 of 3 predicted pairs is right
    scores = pairwise_scores([0, 0, 0], ["a", "a", "b"])
    assert scores["precision"] == 1 / 3 and scores["recall"] == 1.0 and round(scores["f1"], 3) == 0.5


def people_like_dlib(seed=1, people=40, faces=12):
    """Unit vectors shaped like dlib's: people ~0.2 apart in cosine distance, their faces ~0.04-0.07
    apart, one look-alike pair of people closer than the rest."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(1 / 8 + rng.standard_normal((people, 64)) / 16)
    centres[1] = unit_rows((centres[0] + 0.35 * centres[1])[None])[0]  # a look-alike of person 0
    spread = rng.uniform(0.15, 0.3, (people * faces, 1)) / 8
    return unit_rows(np.repeat(centres, faces, axis=0) + spread * rng.standard_normal((people * faces, 64)))


def test_clustering_by_blocks_gives_exactly_the_clusters_of_the_whole(monkeypatch):
    from facepipe.engine import clustering

    vectors = people_like_dlib()
    whole = clustering._exact_average_linkage(vectors, 0.075)
    monkeypatch.setattr(clustering, "DIRECT", 10)  # force the blocked path on 480 faces
    monkeypatch.setattr(clustering, "ROWS_PER_BLOCK", 37)
    blocked = cluster_embeddings(vectors, 0.075)
    assert pairwise_scores(blocked, whole)["f1"] == 1.0 and len(set(blocked)) == len(set(whole)) > 1
    # a component too big for exact linkage: linkage over the neighbour graph, means from cluster sums
    monkeypatch.setattr(clustering, "MAX_EXACT_BLOCK", 5)
    sparse = cluster_embeddings(vectors, 0.075)
    assert pairwise_scores(sparse, whole)["f1"] == 1.0


def test_the_nearest_person_is_the_one_whose_mean_face_is_nearest():
    # what facepipe.domain.people asks the store: the largest dot product with a person's mean unit face
    vectors = people_like_dlib(seed=2)
    people = {p: vectors[12 * p : 12 * p + 11] for p in range(40)}
    means = {p: faces.mean(axis=0) for p, faces in people.items()}
    for p in range(40):
        face = vectors[12 * p + 11]
        by_mean = max(means, key=lambda q: float(face @ means[q]))
        by_mean = by_mean if 1 - float(face @ means[by_mean]) <= 0.075 else None
        assert nearest_person(face, people, 0.075) == by_mean
