"""A damaged embedded store: files of a real digest's Qdrant Edge shards truncated to half or to
0 bytes, as a full disk, a crash of the file system or a bad copy leaves them.

What Qdrant Edge (qdrant-edge-py 0.9.0) does with each file of a shard, measured on a 16-photo
store: a short config, segment state, version, payload storage or WAL file fails the open
("Service runtime error: ..."); a short `status.dat` of a flag index or of the vectors panics in
its Rust code (pyo3's PanicException, a BaseException); an emptied payload or vector data file
fails the first read that touches it; a short id tracker (`mutable_id_tracker.*`) fails nothing
and silently drops points; the other files (index pages, bitmaps, a WAL file cut to half) are
rebuilt or not needed. facepipe turns the first three into StoreDamaged, naming the store, the
collection and what to do; the fourth is caught by comparing the ledger with the faces: a digest
reads such photos again instead of skipping them, and a group whose faces are all gone is damage,
never an unknown group.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import instance_for_test, materialize
from dagster_aws.s3 import S3Resource

from facepipe.defs.digest.assets import digest
from facepipe.defs.digest.jobs import digest_run_config
from facepipe.defs.partitions import GROUPS
from facepipe.defs.resources import FaceStoreResource
from facepipe.domain.request import digest_request
from facepipe.domain.search import search_faces
from facepipe.store import RECOVER, FaceStore, StoreDamaged, Where, faces_collection
from facepipe_tests.conftest import SAMPLE_IMAGES
from facepipe_tests.test_assets import FACE_SIZE, PHOTOS, materialize_digest, metadata

SELFIE = SAMPLE_IMAGES / "img4.jpg"  # person01, as img1.jpg and img2.jpg


@pytest.fixture(scope="module")
def digested(tmp_path_factory):
    """A real in-process digest of three photos (4 faces) into group 'party': its folder and store."""
    root = tmp_path_factory.mktemp("damage")
    folder = root / "party"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(GROUPS, ["party"])
        assert materialize_digest(instance, folder, root / "store").success
    return folder, root / "store"


def damaged_copy(digested, tmp_path, collection: str, file: str, size: str) -> Path:
    """A copy of the digested store with `file` (a glob under the collection's shard) cut to `size`."""
    store = tmp_path / "store"
    shutil.copytree(digested[1], store)
    (path,) = (store / "groups" / "party" / collection).glob(file)
    os.truncate(path, 0 if size == "zero" else path.stat().st_size // 2)
    return store


def digest_again(folder, store):
    """The same digest again, in process, into the (damaged) store; its result, failed or not."""
    request = digest_request(str(folder), "party", chunk_size=1, min_face_size=FACE_SIZE)  # as `digested`
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(GROUPS, ["party"])
        result = materialize(
            [digest],
            instance=instance,
            partition_key="party",
            run_config={"ops": digest_run_config(request, workers=1)["ops"]},
            resources={"face_store": FaceStoreResource(path=str(store)), "s3": S3Resource()},
            raise_on_error=False,
        )
        return result, list(result.all_events)


SEGMENT = "segments/*/"
UNREADABLE = [
    ("faces_dlib", SEGMENT + "payload_storage/config.json", "half"),  # fails the open
    ("faces_dlib", SEGMENT + "vector_storage/vectors/status.dat", "zero"),  # a panic in Rust
    ("faces_dlib", SEGMENT + "payload_storage/page_0.dat", "zero"),  # fails the first read of payloads
    ("images_dlib", SEGMENT + "segment.json", "half"),
    ("images_dlib", "wal/open-1", "zero"),
]


@pytest.mark.parametrize(("collection", "file", "size"), UNREADABLE)
def test_an_unreadable_store_file_fails_the_digest_and_search_naming_the_store(
    digested, tmp_path, collection, file, size
):
    folder, _ = digested
    store = damaged_copy(digested, tmp_path, collection, file, size)
    shard = store / "groups" / "party" / collection
    expected = f"the face store at {store} is damaged: its collection {collection} ({shard})"

    result, events = digest_again(folder, store)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "digest.list_images"  # before any photo is skipped or read
    error = failure.step_failure_data.error
    message = (error.cause or error).message  # the user's exception is the cause of Dagster's wrapper
    assert expected in message and RECOVER in message, message
    assert not [e for e in events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # not retried as a busy store

    if collection == "faces_dlib":  # search reads the faces: the same error, never an empty answer
        with FaceStore.open(path=store) as opened, pytest.raises(StoreDamaged) as raised:
            search_faces(opened, str(SELFIE), "party")
        assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)


def test_faces_dropped_by_a_truncated_id_tracker_are_digested_again_not_skipped(digested, tmp_path):
    folder, _ = digested
    store = damaged_copy(digested, tmp_path, "faces_dlib", SEGMENT + "mutable_id_tracker.mappings", "zero")
    with FaceStore.open(path=store) as opened:  # Qdrant Edge opens it and says nothing
        before = opened.count_faces("party", "dlib")
        assert before < opened.count_faces_in_ledger("party", "dlib") == 4

    result, _ = digest_again(folder, store)
    assert result.success
    listing = metadata(result, "image_list")
    assert listing["images_with_faces_lost"] >= 1
    assert listing["images_skipped"] == len(PHOTOS) - listing["images_with_faces_lost"]
    with FaceStore.open(path=store) as opened:
        assert opened.count_faces("party", "dlib") == opened.count_faces_in_ledger("party", "dlib") == 4
        found = search_faces(opened, str(SELFIE), "party")
    assert {Path(p.image_path).name for p in found.photos} >= {"img1.jpg", "img2.jpg"}


def test_a_group_whose_faces_are_all_gone_is_damage_not_an_unknown_group(digested, tmp_path):
    """Every face record of the group gone while its ledger remains (what a faces file emptied
    under local mode did: 'unknown group', then every photo skipped as unchanged)."""
    folder, _ = digested
    store = tmp_path / "home" / "qdrant"
    shutil.copytree(digested[1], store)
    with FaceStore.open(path=store) as opened:
        opened.backend.drop_group(faces_collection("dlib"), "party")
    env = {**os.environ, "FACEPIPE_HOME": str(tmp_path / "home")}
    env.pop("DAGSTER_HOME", None)
    search = subprocess.run(
        [sys.executable, "-m", "facepipe.cli", "search", str(SELFIE), "--group", "party"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert search.returncode == 1 and search.stdout == ""
    (line,) = search.stderr.strip().splitlines()
    assert line == (
        f"Error: the face store at {store} has lost the faces of group 'party': its ledger "
        f"(images_dlib) records photos digested with faces, its faces_dlib none; {RECOVER}"
    )

    result, _ = digest_again(folder, store)  # and a digest reads every photo again
    assert result.success
    assert metadata(result, "image_list")["images_with_faces_lost"] == len(PHOTOS)
    assert metadata(result, "stored_faces")["faces_in_group"] == 4


def test_the_same_photo_under_two_names_has_faces_of_its_own_under_each(tmp_path):
    """Byte-identical copies in one group: both paths found by search; editing one copy leaves the
    other's face, and a store written when face ids had no path (one face shared by both names,
    carried by the last path written) is mended by the next digest, with no face twice."""
    import uuid

    from facepipe.store import ID_NAMESPACE, image_point_id, images_collection

    folder = tmp_path / "party"
    folder.mkdir()
    shutil.copy(SAMPLE_IMAGES / "img1.jpg", folder / "a.jpg")
    shutil.copy(SAMPLE_IMAGES / "img1.jpg", folder / "copy of a.jpg")
    store = tmp_path / "store"

    result, _ = digest_again(folder, store)
    assert result.success and metadata(result, "stored_faces")["faces_in_group"] == 2
    with FaceStore.open(path=store) as opened:
        found = search_faces(opened, str(SELFIE), "party")
    assert sorted(Path(p.image_path).name for p in found.photos) == ["a.jpg", "copy of a.jpg"]

    shutil.copy(SAMPLE_IMAGES / "img2.jpg", folder / "a.jpg")  # one copy edited: another photo of her
    result, _ = digest_again(folder, store)
    assert result.success and metadata(result, "image_list")["images_skipped"] == 1
    with FaceStore.open(path=store) as opened:
        assert opened.count_faces("party", "dlib") == opened.count_faces_in_ledger("party", "dlib") == 2
        found = search_faces(opened, str(SELFIE), "party")
    assert sorted(Path(p.image_path).name for p in found.photos) == ["a.jpg", "copy of a.jpg"]

    # the former ids: one face for both names, under the path written last; the other name's
    # ledger row says done with one face
    shutil.copy(SAMPLE_IMAGES / "img1.jpg", folder / "a.jpg")
    with FaceStore.open(path=store) as opened:
        (kept,) = opened.scroll_faces(
            "party", "dlib", Where({"image_path": str(folder / "copy of a.jpg")}), with_vectors=True
        )
        ledger = opened.digested_images("party", "dlib")
        old_id = str(uuid.uuid5(ID_NAMESPACE, f"face:party:{kept.payload['content_hash']}:0:dlib"))
        opened.backend.drop_group(faces_collection("dlib"), "party")
        opened.backend.upsert(faces_collection("dlib"), "party", [type(kept)(old_id, kept.payload, kept.vector)])
        # a.jpg's ledger row: the same bytes as its copy, as they are on disk now (so: unchanged)
        stat = (folder / "a.jpg").stat()
        opened.backend.set_payload(
            images_collection("dlib"),
            "party",
            {
                "content_hash": ledger[str(folder / "copy of a.jpg")].content_hash,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "faces": 1,
            },
            [image_point_id("party", str(folder / "a.jpg"), "dlib")],
        )
        assert opened.count_faces("party", "dlib") == 1  # as the former code left it
    result, _ = digest_again(folder, store)
    assert result.success
    listing = metadata(result, "image_list")
    assert (listing["images_with_faces_lost"], listing["images_skipped"]) == (1, 1)
    with FaceStore.open(path=store) as opened:
        faces = list(opened.scroll_faces("party", "dlib"))
        assert sorted(Path(f.payload["image_path"]).name for f in faces) == ["a.jpg", "copy of a.jpg"]
        assert opened.count_faces_in_ledger("party", "dlib") == 2
