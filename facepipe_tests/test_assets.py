"""The Dagster layer in process: the digest and people assets materialised with `dagster.materialize`
on a temporary instance and store, with real photos and the real models.

The fast tier's check of the wiring (config, partitions, dynamic chunks, resources, metadata); the
end-to-end tests run the same assets through the CLI, the executor's worker processes and the daemon.
"""

import shutil
from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, instance_for_test, materialize
from dagster._core.event_api import PartitionKeyFilter
from dagster_aws.s3 import S3Resource

from facepipe.defs.digest.assets import digest
from facepipe.defs.digest.config import digest_config
from facepipe.defs.digest.jobs import digest_run_config
from facepipe.defs.partitions import GROUPS
from facepipe.defs.people.assets import people, people_run_config
from facepipe.defs.resources import FaceStoreResource
from facepipe.domain.request import digest_request
from facepipe.store import FaceStore
from facepipe_tests.conftest import SAMPLE_IMAGES

PHOTOS = {"img1.jpg": 1, "img2.jpg": 1, "couple.jpg": 2}  # faces a person counts
# The in-process digests look for faces of 128 px and up unless a test says otherwise: these photos have
# the same faces at that size as at the default's 32 px, found in a tenth of the time (the default's
# small faces are test_detection_recall.py's and test_faces.py's subject)
FACE_SIZE = 128


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(GROUPS, ["party"])
        yield instance


def materialize_digest(instance: DagsterInstance, folder, store_path, group="party", **options):
    request = digest_request(str(folder), group, chunk_size=1, **{"min_face_size": FACE_SIZE, **options})
    # the in-process executor: the run config without the multiprocess executor's workers
    run_config = {"ops": digest_run_config(request, workers=1)["ops"]}
    return materialize(
        [digest],
        instance=instance,
        partition_key=group,
        run_config=run_config,
        resources={"face_store": FaceStoreResource(path=str(store_path)), "s3": S3Resource()},
    )


def metadata(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(asset)]
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


def test_the_digest_assets_store_each_face_once_and_a_second_digest_skips_every_photo(instance, tmp_path):
    folder = tmp_path / "party"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"not a photo")

    first = materialize_digest(instance, folder, tmp_path / "store")
    assert first.success
    listing, faces, stored = metadata(first, "image_list"), metadata(first, "faces"), metadata(first, "stored_faces")
    assert (listing["images_listed"], listing["images_to_digest"], listing["chunks"]) == (4, 4, 4)
    assert (faces["images_done"], faces["images_failed"]) == (4, 1)
    assert faces["failed_images"][0]["path"].endswith("broken.jpg")
    assert stored["faces_stored"] == stored["faces_in_group"] == sum(PHOTOS.values())
    with FaceStore.open(path=tmp_path / "store") as store:
        by_photo = Counter(Path(face.payload["image_path"]).name for face in store.scroll_faces("party", "dlib"))
    assert by_photo == PHOTOS

    # each chunk's faces are stored before the next chunk starts, so a canceled digest keeps them
    started = [e.step_key for e in first.all_events if e.event_type_value == "STEP_START"]
    chunks = [key.removeprefix("digest.extract_faces_in_chunk") for key in started if "extract_faces" in key]
    assert len(chunks) == 4
    for this, following in zip(chunks, chunks[1:]):
        assert started.index(f"digest.store_chunk{this}") < started.index(f"digest.extract_faces_in_chunk{following}")
    # the running total, over all chunks, in the last observation of the run's faces
    observations = [
        e.asset_observation_data.asset_observation.metadata for e in first.all_events if e.is_asset_observation
    ]
    last = {key: value.value for key, value in observations[-1].items()}
    total = {"digest_images_done": 4, "digest_images_to_digest": 4, "digest_faces_found": sum(PHOTOS.values())}
    assert {key: last[key] for key in total} == total

    again = materialize_digest(instance, folder, tmp_path / "store")
    # the failed photo is tried again; the three digested ones are skipped unread
    assert metadata(again, "image_list")["images_skipped"] == 3
    assert metadata(again, "stored_faces")["faces_stored"] == 0


def test_the_people_asset_clusters_the_digested_group(instance, tmp_path):
    folder = tmp_path / "party"
    folder.mkdir()
    for name in ("img1.jpg", "img2.jpg", "img8.jpg"):  # person01 twice (img1, img2), person09 once
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    assert materialize_digest(instance, folder, tmp_path / "store").success

    result = materialize(
        [people],
        instance=instance,
        partition_key="party",
        run_config={"ops": people_run_config()["ops"]},
        resources={"face_store": FaceStoreResource(path=str(tmp_path / "store"))},
    )
    counts = metadata(result, "people")
    assert (counts["faces"], counts["people"], counts["faces_assigned"]) == (3, 2, 3)


def step_failures(result) -> list[str]:
    return [
        e.step_failure_data.user_failure_data.description
        for e in result.get_step_failure_events()
        if e.step_failure_data.user_failure_data
    ]


def test_the_checks_pass_on_a_clean_digest(instance, tmp_path):
    folder = tmp_path / "party"
    folder.mkdir()
    shutil.copy(SAMPLE_IMAGES / "couple.jpg", folder / "couple.jpg")
    result = materialize_digest(instance, folder, tmp_path / "store")
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"complete": True, "few_failed_photos": True, "sound_vectors": True, "count_matches_ledger": True}


def test_each_groups_check_results_are_kept_as_that_groups_own(instance, tmp_path):
    """The checks are partitioned as their assets are, so the UI's check page shows a group's own
    latest result, not whichever group's digest ran (or runs) last."""
    instance.add_dynamic_partitions(GROUPS, ["other"])
    for group, photo in (("party", "couple.jpg"), ("other", "img1.jpg")):
        folder = tmp_path / group
        folder.mkdir()
        shutil.copy(SAMPLE_IMAGES / photo, folder / photo)
    (tmp_path / "other" / "notes.jpg").write_text("not a photo")  # one of two failed: past the warning's 5 %
    materialize_digest(instance, tmp_path / "party", tmp_path / "store")
    result = materialize_digest(instance, tmp_path / "other", tmp_path / "store", group="other")
    assert {e.partition for e in result.get_asset_check_evaluations()} == {"other"}

    key = AssetCheckKey(AssetKey("faces"), "few_failed_photos")
    latest = {
        group: instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [key], partition_filter=PartitionKeyFilter(key=group)
        )[key]
        for group in ("party", "other")
    }
    assert {group: record.partition for group, record in latest.items()} == {"party": "party", "other": "other"}
    assert latest["party"].evaluation.passed and not latest["other"].evaluation.passed


@pytest.mark.parametrize(
    "partition, options, message",
    [
        ("party", {"confidence": 1.5}, "invalid digest request: confidence: Input should be less than or equal to 1"),
        ("a/b", {}, "invalid digest request: group_id: group_id 'a/b' may only hold letters"),
        ("party", {"folder": "nowhere"}, "source: cannot list"),
        (None, {}, "a digest is of one group: launch it with the group as its partition"),
    ],
)
def test_a_request_only_the_step_can_judge_fails_at_once_in_one_line_without_retries(
    instance, tmp_path, partition, options, message
):
    folder = tmp_path / options.pop("folder", "party")
    (tmp_path / "party").mkdir()
    request = digest_request(str(folder), "party").model_copy(update=options)
    if partition:
        instance.add_dynamic_partitions(GROUPS, [partition])
    result = materialize(
        [digest],
        instance=instance,
        partition_key=partition,
        raise_on_error=False,
        run_config={"ops": {"digest": {"ops": {"list_images": {"config": digest_config(request)}}}}},
        resources={"face_store": FaceStoreResource(path=str(tmp_path / "store")), "s3": S3Resource()},
    )
    (failure,) = step_failures(result)
    assert failure.startswith(message) and "\n" not in failure
    starts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert [e.step_key for e in starts] == ["digest.list_images"]  # tried once: no retries


def test_a_folder_outside_the_allowed_roots_fails_the_first_step_at_once(instance, tmp_path, monkeypatch):
    """With FACEPIPE_ALLOWED_ROOTS set, a run of any origin (here in process, with the path as the
    Launchpad or GraphQL would give it, not resolved) reads only folders under the roots: a folder
    outside, a `..` out of a root and a link out of a root fail list_images in one line, without
    retries, before anything is listed; a folder under a root is digested."""
    root, outside = tmp_path / "allowed", tmp_path / "private"
    (root / "party").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(SAMPLE_IMAGES / "img1.jpg", root / "party" / "img1.jpg")
    shutil.copy(SAMPLE_IMAGES / "img2.jpg", outside / "img2.jpg")
    (root / "link_out").symlink_to(outside)
    monkeypatch.setenv("FACEPIPE_ALLOWED_ROOTS", f"{tmp_path / 'elsewhere'}:{root}")

    def launch(path: str):
        request = digest_request(path, "party", on_this_machine=False, chunk_size=1)
        return materialize(
            [digest],
            instance=instance,
            partition_key="party",
            run_config={"ops": digest_run_config(request, workers=1)["ops"]},
            resources={"face_store": FaceStoreResource(path=str(tmp_path / "store")), "s3": S3Resource()},
            raise_on_error=False,
        )

    for path in (str(outside), f"{root}/party/../../private", str(root / "link_out")):
        result = launch(path)
        assert not result.success
        (failure,) = result.get_step_failure_events()
        assert failure.step_key == "digest.list_images"
        message = failure.step_failure_data.user_failure_data.description
        assert message.startswith(f"invalid digest request: source.path: folder {path!r}")
        assert f"is not under an allowed root (FACEPIPE_ALLOWED_ROOTS={tmp_path / 'elsewhere'}:{root})" in message
        assert "\n" not in message
        assert not [e for e in result.all_events if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_OUTPUT")]
    if path != str(outside):
        assert f"(that is {outside})" in message
    with FaceStore.open(path=tmp_path / "store") as store:
        assert store.count_faces("party", "dlib") == 0  # the private photo's face was never stored

    # the link before the '..': <root>/link_out/.. is tmp_path (a textual normpath would say <root>)
    assert not launch(f"{root}/link_out/../party").success
    allowed = launch(f"{root}/./party")
    assert allowed.success
    assert metadata(allowed, "stored_faces")["faces_stored"] == 1
