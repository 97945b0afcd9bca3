"""The identity defaults hold beyond the photos they were first tuned on: a slice of the second
labelled set (lfw10), embedded through the digest's engine as benchmarks/ does, searched and
clustered at the defaults, alone and with the sample digest."""

import numpy as np
import pytest

from benchmarks.labelled_faces import embedded_set
from facepipe.engine.clustering import cluster_embeddings, pairwise_scores
from facepipe.engine.profiles import PROFILES
from facepipe_tests.conftest import faces_by_photo

# 25 photos of 5 people, holding lfw10's closest different-person pair (Donald_Rumsfeld_0006 and
# Tony_Blair_0008, cosine 0.9206: the former threshold, 0.92, matched them) and the photo that
# splits from its person below a cut of 0.088 (Arnold_Schwarzenegger_0008)
PEOPLE = ("Arnold_Schwarzenegger", "Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Tony_Blair")
SLICE = [f"{person}_{n:04d}.jpg" for person in PEOPLE for n in range(4, 9)]


@pytest.fixture(scope="module")
def lfw_slice():
    return embedded_set("lfw10", "dlib", only=SLICE)


def test_every_photo_of_the_slice_has_its_person_scored(lfw_slice):
    assert not lfw_slice.unscored_photos and len(lfw_slice.labelled) == len(SLICE)
    assert len(lfw_slice.photos) >= len(SLICE)  # background faces are kept, not scored


def test_search_at_the_default_threshold_matches_no_different_person_pair(lfw_slice):
    who = np.array(lfw_slice.truth)
    vectors = lfw_slice.vectors[lfw_slice.labelled]
    upper = np.triu_indices(len(who), 1)
    same, similarity = (who[:, None] == who[None, :])[upper], (vectors @ vectors.T)[upper]
    threshold = PROFILES["dlib"].search_threshold
    assert similarity[~same].max() < threshold, f"a different-person pair at {similarity[~same].max():.4f}"
    # measured: 35 of the 50 same-person pairs match at 0.94
    assert (similarity[same] >= threshold).sum() >= 0.6 * same.sum()


def test_clustering_at_the_default_cut_puts_no_two_people_together(lfw_slice):
    labels = cluster_embeddings(lfw_slice.vectors, PROFILES["dlib"].cluster_distance)
    scores = pairwise_scores(labels[lfw_slice.labelled], lfw_slice.truth)
    assert scores["precision"] == 1.0, scores
    assert scores["recall"] >= 0.9, scores  # measured 0.92: Arnold_Schwarzenegger_0008 alone


@pytest.mark.e2e
def test_clustering_with_the_sample_digest_mixes_no_one_across_the_sets(lfw_slice, sample_digest):
    home, _ = sample_digest
    samples = np.array([p.vector for points in faces_by_photo(home).values() for p in points])
    labels = cluster_embeddings(np.concatenate([samples, lfw_slice.vectors]), PROFILES["dlib"].cluster_distance)
    assert not set(labels[: len(samples)]) & set(labels[len(samples) :])
