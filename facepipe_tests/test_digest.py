"""A user's story: digest a folder of photos with `facepipe digest`, as a real Dagster run on a
temporary instance, with faces stored in a temporary embedded Qdrant store."""

import shutil

import numpy as np
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from facepipe.engine.faces import TOO_SMALL_FRACTION
from facepipe.store import FaceStore
from facepipe_tests.conftest import (
    PEOPLE_BEHIND,
    SAMPLE_FACES,
    SAMPLE_IMAGES,
    SELFIE_FACES,
    digest,
    faces_by_photo,
    run_facepipe,
)

PAYLOAD_FIELDS = {
    "group_id",
    "image_path",
    "face_index",
    "detection_confidence",
    "facial_area",
    "landmarks",
    "timestamp",
    "model",
    "content_hash",
    "image_width",
    "image_height",
    "run_id",
}


@pytest.mark.e2e
def test_digest_stores_faces_for_every_single_face_photo(sample_digest):
    home, summary = sample_digest
    assert summary["status"] == "completed"
    assert summary["images_listed"] == summary["images_done"] == 64
    assert summary["images_failed"] == 0
    assert (
        summary["faces_stored"]
        == summary["faces_in_group"]
        == (summary["faces_detected"] - summary["faces_dropped"] - summary["faces_too_small"])
    )
    assert summary["min_face_size"] == 32  # the default preset's

    by_photo = faces_by_photo(home)
    single_face = [p.name for p in SAMPLE_IMAGES.iterdir() if p.name not in ("couple.jpg", "selfie-many-people.jpg")]
    assert {name: len(by_photo.get(name, [])) for name in single_face} == {
        name: 1 + PEOPLE_BEHIND.get(name, 0) for name in single_face
    }
    assert len(by_photo["couple.jpg"]) == 2
    assert len(by_photo["selfie-many-people.jpg"]) == SELFIE_FACES
    assert summary["faces_in_group"] == SAMPLE_FACES

    point = by_photo["img1.jpg"][0]
    assert PAYLOAD_FIELDS <= set(point.payload)
    assert point.payload["group_id"] == "sample" and point.payload["model"] == "Dlib"
    assert point.payload["run_id"] == summary["run_id"]
    assert set(point.payload["facial_area"]) == {"x", "y", "w", "h"}
    assert (point.payload["image_width"], point.payload["image_height"]) == (1382, 1868)
    assert point.payload["timestamp"].endswith("+00:00")
    assert len(point.vector) == 128


@pytest.mark.e2e
def test_the_digest_is_a_dagster_run_in_the_instance_history(sample_digest):
    home, summary = sample_digest
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        run = instance.get_run_by_id(summary["run_id"])
        assert run.status == DagsterRunStatus.SUCCESS and run.job_name == "digest_job"
        assert run.tags["dagster/partition"] == "sample" and run.tags["facepipe/group_id"] == "sample"
        assert instance.get_dynamic_partitions("digest_groups") == ["sample"]


@pytest.mark.e2e
def test_img1_finds_other_person01_photos_before_anyone_else(sample_digest, identities):
    home, summary = sample_digest
    query = faces_by_photo(home)["img1.jpg"][0].vector
    with FaceStore.open(path=home / "qdrant") as store:
        ranked = store.nearest_faces("sample", "dlib", query, limit=summary["faces_in_group"])
    names = [p.payload["image_path"].rsplit("/", 1)[-1] for p in ranked]
    assert names[0] == "img1.jpg"
    # the couple and the selfie each show person01 too (../shared/faces/README.md)
    person01 = {name for name, who in identities.items() if who == "person01"} | {
        "couple.jpg",
        "selfie-many-people.jpg",
    }
    first_other = next(i for i, name in enumerate(names) if identities.get(name, "person01") != "person01")
    assert person01 - {"img1.jpg"} <= set(names[1:first_other]), names[: first_other + 1]


@pytest.mark.e2e
def test_a_second_digest_skips_unchanged_photos_and_adds_nothing(sample_digest, tmp_path):
    # on a copy of the store, so the shared sample digest stays as it was
    home, first = sample_digest
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    second = digest(copy, SAMPLE_IMAGES, "sample", "--workers", "2")
    assert second["status"] == "completed"
    assert second["images_skipped"] == 64 and second["images_done"] == 0
    assert second["faces_stored"] == 0 and second["faces_in_group"] == first["faces_in_group"]


@pytest.mark.e2e
def test_redigesting_gives_the_same_point_ids_and_vectors(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("img11.jpg", "couple.jpg"):
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    home = tmp_path / "home"
    digest(home, folder, "twice", "--workers", "1")
    first = {p.id: p.vector for faces in faces_by_photo(home, "twice").values() for p in faces}
    again = digest(home, folder, "twice", "--workers", "1", "--redigest")
    assert again["images_done"] == 2 and again["faces_in_group"] == len(first) == 3
    second = {p.id: p.vector for faces in faces_by_photo(home, "twice").values() for p in faces}
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[i], second[i]) for i in first)


@pytest.mark.e2e
def test_bad_photos_are_recorded_as_failed_and_the_rest_is_stored(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(SAMPLE_IMAGES / "img2.jpg", folder / "img2.jpg")
    shutil.copy(SAMPLE_IMAGES / "img5.jpg", folder / "sub" / "img5.jpg")
    (folder / "corrupt.jpg").write_bytes((SAMPLE_IMAGES / "img5.jpg").read_bytes()[:20] + bytes(3000))
    (folder / "notes.jpg").write_text("this is a text file named .jpg")
    home = tmp_path / "home"

    summary = digest(home, folder, "mixed", "--workers", "2")
    assert summary["status"] == "completed"
    assert summary["images_listed"] == 4 and summary["images_failed"] == 2
    failed = {f["path"].rsplit("/", 1)[-1]: f["error"] for f in summary["failed_images"]}
    assert set(failed) == {"corrupt.jpg", "notes.jpg"}
    assert "not an image" in failed["notes.jpg"]
    assert set(faces_by_photo(home, "mixed")) == {"img2.jpg", "img5.jpg"}


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args, field",
    [
        (["--group", "bad group!"], "group_id"),
        (["--group", "g", "--confidence", "1.5"], "confidence"),
        (["--group", "g", "--workers", "0"], "--workers"),
        (["--group", "g", "--profile", "nope"], "--profile"),
        (["--group", "g", "--preset", "tiny"], "--preset"),
        (["--group", "g", "--min-face-size", "4"], "--min-face-size"),
    ],
)
def test_invalid_requests_are_refused_naming_the_field(tmp_path, args, field):
    result = run_facepipe(tmp_path, "digest", str(SAMPLE_IMAGES), *args, check=False)
    assert result.returncode == 2
    assert field in result.stderr
    assert not (tmp_path / "qdrant").exists()  # refused before any work


@pytest.mark.e2e
def test_two_digests_at_once_share_the_embedded_store_one_writer_at_a_time(tmp_path):
    # The embedded store takes a file lock; without the facepipe_store pool, the second run's
    # store steps would fail to open it while the first holds it.
    import json
    import os
    import subprocess
    import sys

    from dagster import DagsterEventType

    home = tmp_path / "home"
    run_facepipe(home, "digests", "list")  # create the instance once, before the two runs
    env = {**os.environ, "FACEPIPE_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    runs = []
    for group, names in (("ga", ["img1.jpg", "img2.jpg", "img3.jpg"]), ("gb", ["img4.jpg", "img5.jpg", "img6.jpg"])):
        folder = tmp_path / group
        folder.mkdir()
        for name in names:
            shutil.copy(SAMPLE_IMAGES / name, folder / name)
        runs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "facepipe.cli",
                    "digest",
                    str(folder),
                    "--group",
                    group,
                    "--workers",
                    "1",
                    "--json",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    summaries = [json.loads(run.communicate(timeout=600)[0]) for run in runs]
    assert [(s["status"], s["faces_stored"]) for s in summaries] == [("completed", 3), ("completed", 3)]
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.event_log_storage.get_concurrency_info("facepipe_store").slot_count == 1
        pooled = [
            e.step_key.split("[")[0]
            for s in summaries
            for e in instance.all_logs(s["run_id"], of_type=DagsterEventType.STEP_START)
            if e.step_key.startswith(("digest.list_images", "digest.store_chunk", "digest.store_faces"))
        ]
        # per run: the listing, one chunk's write (3 photos, 1 worker: one chunk), the totals
        assert sorted(pooled) == ["digest.list_images"] * 2 + ["digest.store_chunk"] * 2 + ["digest.store_faces"] * 2


@pytest.mark.e2e
def test_a_digest_waits_for_a_store_held_by_another_command(tmp_path):
    # `facepipe search` and `people` open the embedded store outside Dagster's pool; a digest's
    # store step that meets the lock waits for it (FACEPIPE_STORE_STEP_WAIT_SECONDS), no retry spent
    import json
    import os
    import subprocess
    import sys
    import time

    from dagster import DagsterEventType

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE_IMAGES / "img2.jpg", folder / "img2.jpg")
    home = tmp_path / "home"
    run_facepipe(home, "digests", "list")  # create the instance before polling it
    env = {**os.environ, "FACEPIPE_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    with FaceStore.open(path=home / "qdrant"):  # held, as a search would hold it
        running = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "facepipe.cli",
                "digest",
                str(folder),
                "--group",
                "held",
                "--workers",
                "1",
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline, started = time.time() + 120, []
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            while not started and time.time() < deadline and running.poll() is None:
                time.sleep(0.5)
                started = [
                    e
                    for r in instance.get_run_records()
                    for e in instance.all_logs(r.dagster_run.run_id, of_type=DagsterEventType.STEP_START)
                ]
        assert started and started[0].step_key == "digest.list_images"
        time.sleep(5)  # the step waits for the store all this while
        assert running.poll() is None
    summary = json.loads(running.communicate(timeout=300)[0])
    assert summary["status"] == "completed" and summary["faces_stored"] == 1
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        (run,) = instance.get_run_records()
        assert not instance.all_logs(run.dagster_run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)


@pytest.mark.e2e
def test_a_digest_in_a_terminal_prints_its_summary_not_dagsters_debug_lines(tmp_path):
    """What a first-time user's `make demo` shows: the summary, not a DEBUG line for each step
    process Dagster starts (its console logger's level is the instance's python_logs level)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE_IMAGES / "img1.jpg", folder / "img1.jpg")
    result = run_facepipe(tmp_path / "home", "digest", str(folder), "--group", "g", "--preset", "portraits")
    assert result.stdout.startswith("digest completed: 1 images listed"), result.stdout
    assert " - DEBUG - " not in result.stderr, result.stderr
    # the events Dagster logs at DEBUG are kept in the run's history all the same
    with DagsterInstance.from_config(str(tmp_path / "home" / "dagster")) as instance:
        (run,) = instance.get_runs()
        assert instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_WORKER_STARTED)


@pytest.mark.e2e
def test_a_preset_for_large_faces_finds_only_those_and_says_so(tmp_path):
    # selfie-many-people.jpg (604 x 600) shows faces of 75 to 180 px: portraits (160 px) keeps the largest
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("img1.jpg", "selfie-many-people.jpg"):
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    large = digest(tmp_path / "large", folder, "p", "--preset", "portraits", "--workers", "1")
    assert large["status"] == "completed" and large["min_face_size"] == 160
    faces = faces_by_photo(tmp_path / "large", "p")
    # the man in the middle (183 px) and the one cut by the right edge, whose box the frame clips
    assert len(faces["img1.jpg"]) == 1 and len(faces["selfie-many-people.jpg"]) == 2
    for face in sum(faces.values(), []):
        box = face.payload["facial_area"]
        assert box["w"] >= TOO_SMALL_FRACTION * 160 or box["x"] + box["w"] == face.payload["image_width"]

    smaller = digest(tmp_path / "smaller", folder, "p", "--min-face-size", "48", "--workers", "1")
    assert smaller["min_face_size"] == 48
    assert len(faces_by_photo(tmp_path / "smaller", "p")["selfie-many-people.jpg"]) >= 4


@pytest.mark.e2e
def test_a_store_error_other_than_busy_fails_the_digest_at_once_without_retries(tmp_path):
    # only a store held by another process is worth waiting for; here the store's folder is a file
    from dagster import DagsterEventType

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE_IMAGES / "img2.jpg", folder / "img2.jpg")
    home = tmp_path / "home"
    home.mkdir()
    (home / "qdrant").write_text("not a folder")
    summary = digest(home, folder, "broken", "--workers", "1")
    assert summary["status"] == "failed"
    assert any("digest.list_images" in error for error in summary["errors"])
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert not instance.all_logs(summary["run_id"], of_type=DagsterEventType.STEP_UP_FOR_RETRY)
