"""Detection on real photos boxed by eye: the CI subset of benchmarks/detection_real.py.

The default preset, through a digest's own decode, detection and alignment, on the photos of
benchmarks/real_photos marked `ci` (group, street and meeting photos with turned, tilted and
masked faces), with the real dlib models. The table is printed at the end of the run.
"""

import pytest

from benchmarks import detection_real
from facepipe.engine.presets import DEFAULT_PRESET
from facepipe_tests.conftest import REPORTS

# Floors at today's default (dlib HOG, the photo doubled) as measured on the CI subset, less a small
# margin: 0.46 of the 63 faces of 32 px or more, 0.65 of the 17 frontal, 0.39 of the 46 others, no
# false detection. They catch a detector that breaks; they are not yet the targets of issue 21
# (>= 0.90, non-frontal >= 0.80, frontal >= 0.98, at most 1 false detection per 10 photos): raise
# them when a better default lands.
FLOORS = {"all": 0.40, "frontal": 0.55, "non-frontal": 0.30}
MOST_FALSE_PER_10_PHOTOS = 2.0


def test_a_detection_finds_a_face_by_overlap_or_by_its_centre_and_ignored_regions_are_no_errors():
    truth = [(100, 100, 150, 150), (300, 100, 340, 140)]
    detected = [
        (105, 95, 155, 150),  # the first face, overlapping
        (290, 80, 370, 160),  # the second: twice as wide around its centre (IoU 0.25, found by the centre rule)
        (110, 110, 160, 160),  # the first face again, overlapping less: a duplicate is a false detection
        (500, 500, 540, 540),  # on an ignore region
        (700, 100, 740, 140),  # nothing there
    ]
    found, false = detection_real.match(truth, detected, ignore=[[480, 480, 560, 560]])
    assert found == [True, True] and false == [2, 4]
    assert detection_real.match(truth, [], ignore=[]) == ([False, False], [])


# The yunet profile (YuNet, then dlib's alignment and embedding) at the default preset, measured on
# the CI subset: 0.794 overall, 0.706 frontal, 0.826 others, 19 detections the labels do not have
# (many are real faces behind others, which the labels, proposed by HOG, CNN and Haar, miss).
YUNET = f"yunet:{DEFAULT_PRESET}"
YUNET_FLOORS = {"all": 0.74, "frontal": 0.65, "non-frontal": 0.78}
YUNET_MOST_FALSE_PER_10_PHOTOS = 40.0


# detects the faces of six real photos (3.3 MP in all), with both profiles
@pytest.fixture(scope="module")
def ci_run():
    run = detection_real.run([DEFAULT_PRESET, YUNET], ci=True)
    REPORTS.append("detection on real photos (benchmarks/detection_real.py --ci)\n" + detection_real.recall_table(run))
    return run


@pytest.mark.slow
def test_the_ci_subset_has_turned_faces_to_find(ci_run):
    faces = ci_run["results"][DEFAULT_PRESET]["faces"]
    assert ci_run["photos"] >= 5 and faces["all"] >= 50
    assert faces["non-frontal"] >= 30 and faces["frontal"] >= 15


@pytest.mark.slow
def test_the_default_finds_the_faces_of_real_photos(ci_run):
    result = ci_run["results"][DEFAULT_PRESET]
    for group, floor in FLOORS.items():
        assert result["recall"][group] >= floor, (group, result["recall"], result["photos"])
    assert result["false_per_10_photos"] <= MOST_FALSE_PER_10_PHOTOS, result["photos"]


@pytest.mark.slow
def test_the_yunet_profile_finds_the_turned_faces_hog_misses(ci_run):
    result, hog = ci_run["results"][YUNET], ci_run["results"][DEFAULT_PRESET]
    for group, floor in YUNET_FLOORS.items():
        assert result["recall"][group] >= floor, (group, result["recall"], result["photos"])
    assert result["recall"]["non-frontal"] >= 2 * hog["recall"]["non-frontal"]
    assert result["false_per_10_photos"] <= YUNET_MOST_FALSE_PER_10_PHOTOS, result["photos"]
