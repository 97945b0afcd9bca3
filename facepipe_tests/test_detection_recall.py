"""Detection recall by face size: the CI version of benchmarks/detection_recall.py.

Nine photos of 1 to 4 MP made from the one-face samples at known scales (a portrait, a group per
size band, a 3 x 3 mosaic of group photos), detected as a digest detects them, with the real dlib
models. The floors are the contract of `min_face_size`; the table is printed at the end of the run.
"""

import pytest

from benchmarks import detection_recall
from facepipe.engine.presets import DEFAULT_MIN_FACE_SIZE, PRESETS
from facepipe_tests.conftest import REPORTS

pytestmark = pytest.mark.slow  # detects faces in nine photos of 1 to 4 MP, three ways

# recall floors of the default preset, by face width at full size (px); none below min_face_size
FLOORS = {"32-40": 0.95, "40-64": 0.97, "64-96": 0.97, "96-160": 0.97, ">= 160": 1.0}


@pytest.fixture(scope="module")
def small_run():
    run = detection_recall.run("dlib", ["default", "detection-1024", "bare-dlib"], small=True)
    REPORTS.append("detection recall (benchmarks/detection_recall.py --small)\n" + detection_recall.table(run))
    return run


def test_the_default_finds_the_faces_at_or_above_its_min_face_size(small_run):
    default = small_run["results"]["default"]
    assert DEFAULT_MIN_FACE_SIZE == PRESETS["default"] == 32
    assert detection_recall.recall_at_least(default, DEFAULT_MIN_FACE_SIZE) >= 0.97
    for band, floor in FLOORS.items():
        assert default["bands"][band]["recall"] >= floor, (band, default["bands"][band])
    assert default["false_detections"] <= 2


def test_the_default_finds_what_bare_dlib_upsampling_once_finds_on_a_mosaic_of_group_photos(small_run):
    (mosaic,) = [name for name in small_run["results"]["default"]["photos"] if "mosaic" in name]
    default = small_run["results"]["default"]["photos"][mosaic]
    bare = small_run["results"]["bare-dlib"]["photos"][mosaic]
    assert bare["found"] >= 0.9 * bare["faces"]  # the mosaic is one bare dlib does well on
    assert default["found"] >= bare["found"]


def test_the_old_pixel_budget_loses_the_small_faces_the_default_finds(small_run):
    # the reason for min_face_size: shrinking every photo to 1,024 px lost the faces of group photos
    old, default = small_run["results"]["detection-1024"], small_run["results"]["default"]
    assert detection_recall.recall_at_least(old, 32) < 0.5 < detection_recall.recall_at_least(default, 32)
