"""The face engine on real photos with the bundled dlib models."""

import os

import numpy as np
import pytest

from facepipe.engine.faces import faces_in_chunk, faces_in_image
from facepipe.engine.listing import ImageFile
from facepipe.engine.planning import ImageTask, plan_images, split_into_chunks
from facepipe.engine.profiles import load_profile
from facepipe.engine.weights import MissingWeightsError
from facepipe_tests.conftest import SAMPLE_IMAGES


def chunk(*names, confidence=0.5, **kwargs):
    return faces_in_chunk([ImageTask(str(SAMPLE_IMAGES / n)) for n in names], "dlib", confidence, **kwargs)


def test_one_face_with_box_landmarks_confidence_and_unit_embedding():
    (image,) = chunk("img1.jpg").images
    assert image.error is None and (image.width, image.height) == (1382, 1868)
    (face,) = image.faces
    x, y, w, h = face.box
    assert 0 <= x < x + w <= image.width and 0 <= y < y + h <= image.height and w > 100
    assert len(face.landmarks) == 5
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in face.landmarks)
    assert 0.5 <= face.confidence <= 1
    assert face.embedding.shape == (128,) and np.isclose(np.linalg.norm(face.embedding), 1.0, atol=1e-5)


def test_yunet_boxes_give_the_embeddings_hog_boxes_give():
    """YuNet's boxes, made square as dlib's, give dlib's landmarks and chips the embeddings HOG's
    boxes give: of a face both find, the default keeps either box."""
    import copy

    from facepipe.engine.images import decode_image

    dlib = load_profile("dlib")
    hog, yunet = copy.copy(dlib), copy.copy(dlib)
    hog.detectors, yunet.detectors = dlib.detectors[:1], dlib.detectors[1:]
    for name in ("img1.jpg", "couple.jpg", "img2.jpg"):
        image = decode_image((SAMPLE_IMAGES / name).read_bytes())
        by_hog, by_yunet = (faces_in_image(profile, image, 0.5)[0] for profile in (hog, yunet))
        assert len(by_yunet) == len(by_hog) >= 1, name  # left to right, both
        for a, b in zip(by_hog, by_yunet):
            assert float(a.embedding @ b.embedding) > 0.99, name
            assert len(b.landmarks) == 5


def test_a_photo_decoded_reduced_gives_boxes_and_landmarks_in_full_size_pixels():
    # 3061 x 4600: for faces of 320 px and more, decoded at 1/4 (a face keeps 80 px for its chip)
    (image,) = chunk("img40.jpg", min_face_size=320).images
    assert (image.width, image.height) == (3061, 4600)
    # the man portrayed, and the photographer behind him, half hidden by his camera
    face, photographer = sorted(image.faces, key=lambda f: -f.box[2])
    assert photographer.box[2] > 320 and photographer.box[0] < 100
    x, y, w, h = face.box
    assert w > 800 and x + w <= image.width and y + h <= image.height
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in face.landmarks)


def test_couple_has_two_faces_left_to_right():
    (image,) = chunk("couple.jpg").images
    assert len(image.faces) == 2
    assert image.faces[0].box[0] < image.faces[1].box[0]
    assert [f.face_index for f in image.faces] == [0, 1]


def test_same_person_is_closer_than_another_person():
    # img1, img2: person01; img3: person10 (../shared/faces/identities.csv)
    a, b, c = (im.faces[0].embedding for im in chunk("img1.jpg", "img2.jpg", "img3.jpg").images)
    assert a @ b > 0.93 > a @ c


def test_faces_below_the_confidence_threshold_are_dropped_and_counted():
    loose, strict = chunk("selfie-many-people.jpg", confidence=0.0), chunk("selfie-many-people.jpg", confidence=0.9)
    (loose_image,), (strict_image,) = loose.images, strict.images
    assert len(loose_image.faces) > len(strict_image.faces) >= 1
    assert len(strict_image.faces) + strict_image.faces_dropped == len(loose_image.faces)
    assert all(f.confidence >= 0.9 for f in strict_image.faces)


def test_digesting_the_same_photo_twice_gives_the_same_vectors():
    first, second = chunk("img11.jpg").images[0], chunk("img11.jpg").images[0]
    assert first.content_hash == second.content_hash
    assert np.array_equal(first.faces[0].embedding, second.faces[0].embedding)


def test_a_mirrored_photo_has_another_hash_but_the_same_person():
    original, mirrored = chunk("img11.jpg", "img11_reflection.jpg").images
    assert original.content_hash != mirrored.content_hash
    assert original.faces[0].embedding @ mirrored.faces[0].embedding > 0.93


def test_bad_photos_are_recorded_and_the_chunk_goes_on(tmp_path):
    (tmp_path / "text.jpg").write_text("not a photo")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))
    tasks = [
        ImageTask(str(tmp_path / "text.jpg")),
        ImageTask(str(tmp_path / "corrupt.jpg")),
        ImageTask(str(tmp_path / "missing.jpg")),
        ImageTask(str(SAMPLE_IMAGES / "img2.jpg")),
    ]
    text, corrupt, missing, good = faces_in_chunk(tasks, "dlib", 0.5).images
    assert "not an image" in text.error
    assert "corrupt" in corrupt.error
    assert "cannot read" in missing.error
    assert good.error is None and len(good.faces) == 1


def test_an_unchanged_photo_is_not_decoded_again():
    first = chunk("img5.jpg").images[0]
    again = faces_in_chunk([ImageTask(first.path, previous_hash=first.content_hash)], "dlib", 0.5).images[0]
    assert again.unchanged and again.faces == [] and again.width is None


def test_plan_skips_unchanged_files_and_rereads_touched_ones():
    class Known:
        def __init__(self, size, mtime_ns):
            self.content_hash, self.size, self.mtime_ns = "h", size, mtime_ns

    files = [ImageFile("a", 10, 1), ImageFile("b", 10, 1), ImageFile("c", 10, 1)]
    digested = {"a": Known(10, 1), "b": Known(10, 2)}
    tasks, skipped = plan_images(files, digested)
    assert skipped == 1 and [(t.path, t.previous_hash) for t in tasks] == [("b", "h"), ("c", None)]
    tasks, skipped = plan_images(files, digested, redigest=True)
    assert skipped == 0 and len(tasks) == 3


def test_chunks_cover_every_task_once_with_one_chunk_per_worker_at_least():
    tasks = list(range(10))
    chunks = split_into_chunks(tasks, workers=2, chunk_size=200)
    assert len(chunks) == 2 and sorted(sum(chunks, [])) == tasks
    assert len(split_into_chunks(tasks, workers=2, chunk_size=3)) == 4
    assert split_into_chunks([], workers=2, chunk_size=3) == []


def test_dlib_weights_left_as_broken_links_by_a_removed_environment_are_linked_again(tmp_path, monkeypatch):
    from facepipe.engine.weights import link_bundled_dlib_weights

    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    folder = tmp_path / ".deepface" / "weights"
    folder.mkdir(parents=True)
    (folder / "shape_predictor_5_face_landmarks.dat").symlink_to(tmp_path / "gone-venv" / "model.dat")
    link_bundled_dlib_weights()
    assert all(f.is_file() and f.stat().st_size > 1_000_000 for f in folder.iterdir())
    assert sorted(f.name for f in folder.iterdir()) == [
        "dlib_face_recognition_resnet_model_v1.dat",
        "shape_predictor_5_face_landmarks.dat",
    ]


def test_a_missing_weight_names_the_file_and_the_folder(tmp_path, monkeypatch):
    # The retinaface-arcface weights are not bundled. This machine has no route to the model hubs;
    # the proxy to a closed local port makes the download fail the same way (quickly) anywhere.
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    from facepipe.engine.profiles.retinaface_arcface import RetinaFaceArcFaceProfile

    with pytest.raises(MissingWeightsError) as raised:
        RetinaFaceArcFaceProfile()
    message = str(raised.value)
    assert "retinaface.onnx" in message and str(tmp_path / ".deepface" / "weights") in message


def test_tiles_cover_the_photo_and_overlap_as_asked():
    from facepipe.engine.detection import tiles

    regions = tiles(3000, 2000, scale=2.0, tile=1024, overlap=100)
    assert all((x1 - x0) * 2 <= 1024 + 1 and (y1 - y0) * 2 <= 1024 + 1 for x0, y0, x1, y1 in regions)
    covered = np.zeros((2000, 3000), bool)
    for x0, y0, x1, y1 in regions:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    columns = sorted({(x0, x1) for x0, _, x1, _ in regions})
    assert all(a[1] - b[0] >= 50 for a, b in zip(columns, columns[1:]))  # 100 px once scaled by 2


def test_a_tiled_photo_gives_each_face_once_as_the_whole_photo_does():
    # the canvas of group photos from the recall benchmark, seen whole and in tiles of 1,024 px
    # (at min_face_size 32 dlib's HOG scans it at twice its size, 3,000 px; YuNet at 1.25 times)
    import copy

    from benchmarks.detection_recall import make_photos, match, sources
    from facepipe.engine.faces import find_faces
    from facepipe.engine.profiles import load_profile

    dlib = load_profile("dlib")
    name, pixels, truth = next(p for p in make_photos(sources(dlib), small=True) if "mosaic" in p[0])
    tiled = copy.copy(dlib)
    tiled.detectors = tuple(copy.copy(detector) for detector in dlib.detectors)
    for detector in tiled.detectors:
        detector.tile_size = 1024
    whole, in_tiles = find_faces(dlib, pixels, 0.5, 32).faces, find_faces(tiled, pixels, 0.5, 32).faces
    boxes = [[(x, y, x + w, y + h) for x, y, w, h in (f.box for f in faces)] for faces in (whole, in_tiles)]
    (found_whole, extra_whole), (found_tiled, extra_tiled) = (match(truth, b) for b in boxes)
    assert sum(found_tiled) >= sum(found_whole) >= 0.95 * len(truth)
    assert extra_tiled == extra_whole == 0  # no face found twice across tiles


def test_retinaface_follows_the_min_face_size_contract_where_its_weights_are_present(monkeypatch):
    # Its weights are a download that this machine (and CI) cannot make: the test runs where a
    # user has them in ~/.deepface/weights (or FACEPIPE_TEST_DEEPFACE_HOME/.deepface/weights).
    from pathlib import Path

    from benchmarks.detection_recall import make_photos, match, sources
    from facepipe.engine.faces import TOO_SMALL_FRACTION, find_faces
    from facepipe.engine.profiles import PROFILES, load_profile

    home = Path(os.environ.get("FACEPIPE_TEST_DEEPFACE_HOME", Path.home()))
    weights = home / ".deepface" / "weights"
    missing = [w.file for w in PROFILES["retinaface-arcface"].weights if not (weights / w.file).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not in {weights}: RetinaFace's weights cannot be downloaded here")
    monkeypatch.setenv("DEEPFACE_HOME", str(home))
    retinaface = load_profile("retinaface-arcface")
    _, pixels, truth = next(p for p in make_photos(sources(load_profile("dlib")), small=True) if "mosaic" in p[0])
    # at 16 px the 1,500 px mosaic is seen at 1.25 times its size, in tiles of 1,024 px
    found = find_faces(retinaface, pixels, 0.5, 16)
    hits, extra = match(truth, [(x, y, x + w, y + h) for x, y, w, h in (f.box for f in found.faces)])
    assert sum(hits) >= 0.95 * len(truth) and extra <= 2
    assert all(f.box[2] >= TOO_SMALL_FRACTION * 16 for f in found.faces)
