"""A user's story: a group digested and clustered, then photos, faces, people and the whole group
deleted, a person forgotten with a selfie, and two photos verified; each delete gone from search,
from people and from thumbnails, and kept out by the next digest of the same folder.

The digest runs in process (the digest assets, `dagster.materialize`) on real photos and models, once
for the module; each test works on its own copy of that store.
"""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from dagster import AssetKey, instance_for_test, materialize
from dagster_aws.s3 import S3Resource

from facepipe.cli.main import main
from facepipe.defs.digest.assets import digest
from facepipe.defs.digest.jobs import digest_run_config
from facepipe.defs.partitions import GROUPS
from facepipe.defs.resources import FaceStoreResource
from facepipe.domain.forget import (
    NothingToDelete,
    VerifyError,
    delete_face,
    delete_group,
    delete_person,
    delete_photo,
    faces_to_forget,
    forget,
    verify,
    verify_face,
)
from facepipe.domain.people import list_people, update_people
from facepipe.domain.request import digest_request
from facepipe.domain.search import group_profiles, matching_photos, selfie_faces
from facepipe.domain.thumbnails import face_thumbnails, thumbnail_path
from facepipe.engine.faces import Face, ImageResult
from facepipe.engine.listing import DELETED_FROM_GROUP
from facepipe.engine.profiles import PROFILES
from facepipe.store import FaceStore, image_point_id
from facepipe_tests.conftest import SAMPLE_IMAGES, run_facepipe

# person01 in img1, img2, img4 and the couple (with a stranger); person09; person05 twice; person07 twice
PHOTOS = ["img1.jpg", "img2.jpg", "img4.jpg", "couple.jpg", "img8.jpg", "img29.jpg", "img31.jpg", "img38.jpg"]
FACES = len(PHOTOS) + 1
# The digests look for faces of 128 px and up: these photos have the same nine faces at that size as
# at the default's 32 px, found in a tenth of the time (small faces are test_detection_recall.py's subject)
MIN_FACE_SIZE = 128
HERS = {"img1.jpg", "img2.jpg", "img4.jpg", "couple.jpg"}


@pytest.fixture(scope="module")
def dagster():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(GROUPS, ["party"])
        yield instance


def digest_folder(instance, folder: Path, store_path: Path, **options) -> dict:
    """Digest `folder` into group 'party' in process; the image_list step's metadata and the stored_faces'."""
    request = digest_request(str(folder), "party", min_face_size=MIN_FACE_SIZE, **options)
    result = materialize(
        [digest],
        instance=instance,
        partition_key="party",
        run_config={"ops": digest_run_config(request, workers=1)["ops"]},
        resources={"face_store": FaceStoreResource(path=str(store_path)), "s3": S3Resource()},
    )
    assert result.success
    found = {}
    for event in result.get_asset_materialization_events():
        metadata = event.step_materialization_data.materialization.metadata
        found[event.asset_key] = {key: value.value for key, value in metadata.items()}
    return {**found[AssetKey("image_list")], **found[AssetKey("stored_faces")]}


@pytest.fixture(scope="module")
def digested(dagster, tmp_path_factory):
    """The photos digested into group 'party' and clustered into people: (folder, home)."""
    base = tmp_path_factory.mktemp("forget")
    folder, home = base / "photos", base / "home"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    summary = digest_folder(dagster, folder, home / "qdrant")
    assert summary["faces_in_group"] == FACES
    with FaceStore.open(path=home / "qdrant") as store:
        update_people(store, "party")
    return folder, home


@pytest.fixture
def home(digested, tmp_path, monkeypatch):
    """A copy of the digested home, as FACEPIPE_HOME (where thumbnails are made)."""
    copy = tmp_path / "home"
    shutil.copytree(digested[1], copy)
    monkeypatch.setenv("FACEPIPE_HOME", str(copy))
    return copy


@pytest.fixture(scope="module")
def her_selfie():
    return selfie_faces(str(SAMPLE_IMAGES / "img1.jpg"), "dlib")


def found_by(store: FaceStore, selfie) -> set[str]:
    """The photos (file names) a search with the selfie's faces finds in the group."""
    return {Path(p.image_path).name for p in matching_photos(store, "party", "dlib", selfie).photos}


def faces_of(store: FaceStore, name: str) -> list:
    return [f for f in store.scroll_faces("party", "dlib") if Path(f.payload["image_path"]).name == name]


def people_are_counted(store: FaceStore) -> None:
    """Every person's count is their faces' count in the store, and every face has its person."""
    people = list_people(store, "party")
    held: dict[int, int] = {}
    for face in store.scroll_faces("party", "dlib"):
        held[face.payload["person_id"]] = held.get(face.payload["person_id"], 0) + 1
    assert {p["person_id"]: p["face_count"] for p in people} == held
    faces = {str(f.id) for f in store.scroll_faces("party", "dlib")}
    assert all(p["representative_face_id"] in faces for p in people)


def ledger_rows(store: FaceStore, group_id: str, paths: list[str]) -> list:
    return store.get_images(group_id, "dlib", [image_point_id(group_id, path, "dlib") for path in paths])


def ledger(store: FaceStore, folder: Path, name: str) -> dict:
    (row,) = ledger_rows(store, "party", [str(folder / name)])
    return row.payload


def test_a_deleted_photo_is_gone_from_search_people_and_thumbnails_and_digests_leave_it_out(
    digested, home, dagster, her_selfie
):
    folder = digested[0]
    couple = str(folder / "couple.jpg")
    with FaceStore.open(path=home / "qdrant") as store:
        assert "couple.jpg" in found_by(store, her_selfie)
        faces = faces_of(store, "couple.jpg")
        thumbnails = face_thumbnails(faces)
        assert len(faces) == 2 and all(path and path.exists() for path in thumbnails.values())
        people_before = len(list_people(store, "party"))

        deleted = delete_photo(store, "party", couple)
        assert (deleted.faces, deleted.photos, deleted.files) == (2, 1, 0)
        assert set(deleted.face_ids) == {str(f.id) for f in faces}
        assert found_by(store, her_selfie) == HERS - {"couple.jpg"}
        assert faces_of(store, "couple.jpg") == [] and store.count_faces("party", "dlib") == FACES - 2
        assert not any(thumbnail_path(face_id).exists() for face_id in thumbnails)
        # the stranger of the couple was a person of their own: gone with their only face
        assert deleted.people == 1 and len(list_people(store, "party")) == people_before - 1
        people_are_counted(store)
        assert ledger(store, folder, "couple.jpg")["status"] == "deleted"
        with pytest.raises(NothingToDelete, match="has no photo"):
            delete_photo(store, "party", couple)

    # a later digest of the same folder leaves it out, even one that reads every photo again
    again = digest_folder(dagster, folder, home / "qdrant", redigest=True)
    assert again["not_listed"] == [{"path": couple, "reason": DELETED_FROM_GROUP}]
    assert again["images_listed"] == again["images_to_digest"] == len(PHOTOS) - 1
    assert again["faces_in_group"] == FACES - 2


def test_an_uploaded_photo_is_deleted_from_the_disk_and_leaves_no_tombstone(dagster, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FACEPIPE_HOME", str(home))
    uploads = home / "uploads" / "party"
    uploads.mkdir(parents=True)
    shutil.copy(SAMPLE_IMAGES / "img8.jpg", uploads / "img8.jpg")
    assert digest_folder(dagster, uploads, home / "qdrant")["faces_in_group"] == 1
    photo_id = image_point_id("party", str(uploads / "img8.jpg"), "dlib")
    with FaceStore.open(path=home / "qdrant") as store:
        deleted = delete_photo(store, "party", photo_id)  # by its id, as the HTTP API names photos
        assert (deleted.faces, deleted.photos, deleted.files) == (1, 1, 1)
        assert not (uploads / "img8.jpg").exists() and ledger_rows(store, "party", [str(uploads / "img8.jpg")]) == []
        assert store.count_faces("party", "dlib") == 0
        with pytest.raises(NothingToDelete, match="has no photo"):
            delete_photo(store, "party", photo_id)


def test_a_deleted_face_is_gone_and_a_redigest_of_its_photo_does_not_bring_it_back(digested, home, dagster, her_selfie):
    folder = digested[0]
    with FaceStore.open(path=home / "qdrant") as store:
        hers = {m.face_id for p in matching_photos(store, "party", "dlib", her_selfie).photos for m in p.faces}
        (her_face,) = [f for f in faces_of(store, "couple.jpg") if str(f.id) in hers]
        (stranger,) = [f for f in faces_of(store, "couple.jpg") if str(f.id) not in hers]
        face_thumbnails([stranger])
        deleted = delete_face(store, "party", str(stranger.id))
        assert (deleted.faces, deleted.photos, deleted.people) == (1, 0, 1)
        assert not thumbnail_path(str(stranger.id)).exists()
        assert [f.id for f in faces_of(store, "couple.jpg")] == [her_face.id]
        assert "couple.jpg" in found_by(store, her_selfie)  # the photo stays, with her face
        row = ledger(store, folder, "couple.jpg")
        assert (
            row["status"] == "done" and row["faces"] == 1 and row["deleted_faces"] == [stranger.payload["facial_area"]]
        )
        people_are_counted(store)
        with pytest.raises(NothingToDelete, match="has no face"):
            delete_face(store, "party", str(stranger.id))
        with pytest.raises(NothingToDelete, match="not a face id"):
            delete_face(store, "party", "couple.jpg")

    skipped = digest_folder(dagster, folder, home / "qdrant")
    assert skipped["images_skipped"] == len(PHOTOS) and skipped["faces_in_group"] == FACES - 1
    redone = digest_folder(dagster, folder, home / "qdrant", redigest=True)
    assert redone["images_to_digest"] == len(PHOTOS) and redone["faces_in_group"] == FACES - 1
    with FaceStore.open(path=home / "qdrant") as store:
        assert [f.id for f in faces_of(store, "couple.jpg")] == [her_face.id]  # the same bytes: the same id
        assert ledger(store, folder, "couple.jpg")["faces"] == 1


def test_a_deleted_person_loses_their_faces_and_with_photos_their_photos(digested, home, dagster):
    folder = digested[0]
    with FaceStore.open(path=home / "qdrant") as store:
        (person05,) = {f.payload["person_id"] for name in ("img29.jpg", "img31.jpg") for f in faces_of(store, name)}
        (person07,) = {f.payload["person_id"] for f in faces_of(store, "img38.jpg")}
        deleted = delete_person(store, "party", person05)
        assert (deleted.faces, deleted.photos, deleted.people) == (2, 0, 1)
        assert person05 not in {p["person_id"] for p in list_people(store, "party")}
        assert faces_of(store, "img29.jpg") == faces_of(store, "img31.jpg") == []
        assert (
            ledger(store, folder, "img29.jpg")["status"] == "done" and ledger(store, folder, "img29.jpg")["faces"] == 0
        )

        deleted = delete_person(store, "party", person07, with_photos=True)
        assert (deleted.faces, deleted.photos, deleted.people) == (1, 1, 1)
        assert ledger(store, folder, "img38.jpg")["status"] == "deleted"
        people_are_counted(store)
        with pytest.raises(NothingToDelete, match="has no person"):
            delete_person(store, "party", person05)
        # a re-clustering places no one in their stead
        assert update_people(store, "party", full=True)["faces"] == FACES - 3

    again = digest_folder(dagster, folder, home / "qdrant", redigest=True)
    assert again["faces_in_group"] == FACES - 3 and [n["path"] for n in again["not_listed"]] == [
        str(folder / "img38.jpg")
    ]


def test_forget_me_deletes_every_face_search_finds_for_the_selfie_and_only_those(digested, home, dagster, her_selfie):
    folder = digested[0]
    with FaceStore.open(path=home / "qdrant") as store:
        matches = faces_to_forget(store, "party", "dlib", her_selfie)
        assert matches.threshold == PROFILES["dlib"].search_threshold
        assert {Path(p.image_path).name for p in matches.photos} == HERS
        hers = {m.face_id for p in matches.photos for m in p.faces}
        (person01,) = {f.payload["person_id"] for f in store.get_faces("party", "dlib", sorted(hers))}
        face_thumbnails(store.get_faces("party", "dlib", sorted(hers)))
        others = {str(f.id) for f in store.scroll_faces("party", "dlib")} - hers

        deleted = forget(store, "party", "dlib", her_selfie)
        assert set(deleted.face_ids) == hers and deleted.faces == len(HERS) and deleted.photos == 0
        assert found_by(store, her_selfie) == set()
        assert {str(f.id) for f in store.scroll_faces("party", "dlib")} == others
        assert person01 not in {p["person_id"] for p in list_people(store, "party")}
        assert not any(thumbnail_path(face_id).exists() for face_id in hers)
        people_are_counted(store)

    # she does not come back: not with the next digest, nor with one that reads every photo again
    for options in ({}, {"redigest": True}):
        again = digest_folder(dagster, folder, home / "qdrant", **options)
        assert again["faces_in_group"] == FACES - len(HERS)
        with FaceStore.open(path=home / "qdrant") as store:
            assert found_by(store, her_selfie) == set()


def test_a_deleted_group_leaves_nothing_behind(digested, home):
    folder = digested[0]
    with FaceStore.open(path=home / "qdrant") as store:
        face_ids = [str(f.id) for f in store.scroll_faces("party", "dlib")]
        face_thumbnails(list(store.scroll_faces("party", "dlib"))[:3])
        people = len(list_people(store, "party"))
        deleted = delete_group(store, "party")
        assert (deleted.faces, deleted.photos, deleted.people) == (FACES, len(PHOTOS), people)
        assert store.count_faces("party", "dlib") == 0 and list_people(store, "party") == []
        assert store.count_images("party", "dlib") == 0
        assert ledger_rows(store, "party", [str(folder / name) for name in PHOTOS]) == []
        assert not any(thumbnail_path(face_id).exists() for face_id in face_ids)
        assert group_profiles(store, "party") == []
        with pytest.raises(NothingToDelete, match="unknown group"):
            delete_group(store, "party")


def test_verify_says_whether_two_photos_show_the_same_person_at_the_search_threshold(home, tmp_path):
    same = verify(str(SAMPLE_IMAGES / "img1.jpg"), str(SAMPLE_IMAGES / "img2.jpg"))
    assert same.verified and same.similarity >= same.threshold == PROFILES["dlib"].search_threshold
    other = verify(str(SAMPLE_IMAGES / "img1.jpg"), (SAMPLE_IMAGES / "img8.jpg").read_bytes())
    assert not other.verified and other.similarity < other.threshold and other.face2.photo == "photo 2"
    # a photo with several faces: its largest is compared, and the answer says so
    couple = verify(str(SAMPLE_IMAGES / "couple.jpg"), str(SAMPLE_IMAGES / "img1.jpg"))
    assert couple.face1.faces_in_photo == 2 and couple.face2.faces_in_photo == 1
    assert couple.to_dict()["face1"]["facial_area"].keys() == {"x", "y", "w", "h"}

    wall, notes = tmp_path / "wall.jpg", tmp_path / "notes.jpg"
    cv2.imwrite(str(wall), np.full((400, 300, 3), 200, np.uint8))
    notes.write_text("not a photo")
    with pytest.raises(VerifyError, match=f"no face found in {wall}"):
        verify(str(SAMPLE_IMAGES / "img1.jpg"), str(wall))
    with pytest.raises(VerifyError, match=f"cannot read {notes}"):
        verify(str(notes), str(SAMPLE_IMAGES / "img1.jpg"))

    with FaceStore.open(path=home / "qdrant") as store:
        (img2,) = faces_of(store, "img2.jpg")
        by_face = verify_face(store, "party", str(img2.id), str(SAMPLE_IMAGES / "img1.jpg"))
        assert by_face.verified and by_face.face1.face_id == str(img2.id)
        assert abs(by_face.similarity - same.similarity) < 1e-3  # the stored face is the one verify finds
        with pytest.raises(VerifyError, match="has no face"):
            verify_face(store, "other", str(img2.id), str(SAMPLE_IMAGES / "img1.jpg"))


@pytest.mark.e2e
def test_the_cli_forgets_a_selfie_deletes_and_verifies(digested, home):
    folder = digested[0]

    def cli(*args: str, check: bool = True):
        return run_facepipe(home, *args, check=check)

    def as_json(*args: str) -> dict:
        return json.loads(cli(*args, "--json").stdout)

    selfie = str(SAMPLE_IMAGES / "img1.jpg")
    would = as_json("forget", selfie, "--group", "party", "--dry-run")
    assert {Path(p["image_path"]).name for p in would["photos"]} == HERS
    forgotten = as_json("forget", selfie, "--group", "party")
    assert forgotten["faces"] == len(HERS) and forgotten["photos"] == 0
    assert as_json("search", selfie, "--group", "party")["photos"] == []

    # a photo by its path (relative, as a user types it), a face by its id, a person by theirs
    relative = os.path.relpath(folder / "img8.jpg")
    assert as_json("delete", "photo", relative, "--group", "party")["photos"] == 1
    with FaceStore.open(path=home / "qdrant") as store:
        (stranger,) = faces_of(store, "couple.jpg")
        (person,) = {f.payload["person_id"] for f in faces_of(store, "img29.jpg")}
    assert as_json("delete", "face", str(stranger.id), "--group", "party")["face_ids"] == [str(stranger.id)]
    assert as_json("delete", "person", str(person), "--group", "party", "--with-photos")["photos"] == 2
    missing = cli("delete", "face", str(stranger.id), "--group", "party", check=False)
    assert missing.returncode == 1 and f"group 'party' has no face {stranger.id}" in missing.stderr
    assert "Traceback" not in missing.stderr

    # a whole group only with --yes
    refused = CliRunner().invoke(main, ["delete", "group", "party"], input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    left = as_json("delete", "group", "party", "--yes")
    assert left["faces"] == 1 and left["photos"] == len(PHOTOS) - 3  # the 3 deleted photos were tombstones
    shown = cli("delete", "group", "party", "--yes", check=False)
    assert shown.returncode == 1 and "unknown group 'party'" in shown.stderr


@pytest.mark.e2e
def test_the_cli_verifies_two_photos_or_a_stored_face_and_a_photo(digested, home, tmp_path):
    same = json.loads(
        run_facepipe(home, "verify", str(SAMPLE_IMAGES / "img1.jpg"), str(SAMPLE_IMAGES / "img2.jpg"), "--json").stdout
    )
    assert same["verified"] and same["threshold"] == 0.93 and same["similarity"] >= 0.93
    text = run_facepipe(home, "verify", str(SAMPLE_IMAGES / "couple.jpg"), str(SAMPLE_IMAGES / "img8.jpg")).stdout
    assert text.startswith("not the same person") and "the largest of its 2 faces" in text
    with FaceStore.open(path=home / "qdrant") as store:
        (img2,) = faces_of(store, "img2.jpg")
    by_face = run_facepipe(
        home, "verify", "--face", str(img2.id), "--group", "party", str(SAMPLE_IMAGES / "img4.jpg"), "--json"
    )
    assert json.loads(by_face.stdout)["verified"]
    wall = tmp_path / "wall.jpg"
    cv2.imwrite(str(wall), np.full((400, 300, 3), 200, np.uint8))
    no_face = run_facepipe(home, "verify", str(wall), str(SAMPLE_IMAGES / "img1.jpg"), check=False)
    assert no_face.returncode == 1 and f"no face found in {wall}" in no_face.stderr


def photo(
    path: str, content_hash: str, boxes: list[tuple[int, int, int, int]], previously: bool = False
) -> ImageResult:
    """A digested photo as a chunk returns it, with a face (an arbitrary unit vector) at each box."""
    vectors = np.eye(128, dtype=np.float32)
    faces = [Face(i, box, [(1.0, 2.0)] * 5, 0.9, vectors[i]) for i, box in enumerate(boxes)]
    return ImageResult(path, 10, 1, None, content_hash, 200, 100, faces, previously_digested=previously)


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_a_deleted_face_stays_out_through_a_failed_read_and_changed_bytes(backend, tmp_path, monkeypatch):
    """The ledger's boxes of deleted faces, on both backends (local mode stands in for a server)."""
    monkeypatch.setenv("FACEPIPE_HOME", str(tmp_path))
    with FaceStore.open(path=tmp_path / "store", backend=backend) as store:
        store.write_images("g", "dlib", [photo("/a.jpg", "h1", [(0, 0, 40, 40), (60, 0, 40, 40)])], run_id="r1")
        (gone,) = [f for f in store.scroll_faces("g", "dlib") if f.payload["face_index"] == 0]
        delete_face(store, "g", str(gone.id), "dlib")
        # the photo cannot be read once, then is read again with other bytes and boxes a few pixels off
        store.write_images("g", "dlib", [ImageResult("/a.jpg", 10, 2, error="cannot read file")], run_id="r2")
        assert ledger_rows(store, "g", ["/a.jpg"])[0].payload["deleted_faces"] == [gone.payload["facial_area"]]
        store.write_images("g", "dlib", [photo("/a.jpg", "h2", [(3, 2, 40, 38), (62, 0, 40, 40)])], run_id="r3")
        new = [f for f in store.scroll_faces("g", "dlib") if f.payload["content_hash"] == "h2"]
        assert [f.payload["facial_area"]["x"] for f in new] == [62]
        assert store.digested_images("g", "dlib")["/a.jpg"].content_hash == "h2"
        assert ledger_rows(store, "g", ["/a.jpg"])[0].payload["faces"] == 1
