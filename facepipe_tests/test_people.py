"""A user's story: digest photos, cluster the group into people, name, merge and split them,
digest more photos and re-cluster, and find every decision still there."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from facepipe.engine.clustering import pairwise_scores
from facepipe.store import FaceStore
from facepipe_tests.conftest import REPO, SAMPLE_FACES, SAMPLE_IMAGES, digest, run_facepipe


def people_of(home, group="sample") -> dict[str, list[int | None]]:
    """Photo name -> the person id of each of its faces, largest first: the photo's subject, then
    the people behind (conftest.PEOPLE_BEHIND)."""
    with FaceStore.open(path=home / "qdrant") as store:
        faces = list(store.scroll_faces(group, "dlib"))
    found: dict[str, list[int | None]] = {}
    for face in sorted(faces, key=lambda f: -f.payload["facial_area"]["w"]):
        found.setdefault(Path(face.payload["image_path"]).name, []).append(face.payload.get("person_id"))
    return found


def people_cli(home, *args, group="sample"):
    return run_facepipe(home, "people", *args, "--group", group)


def people_json(home, *args, group="sample"):
    return json.loads(run_facepipe(home, "people", *args, "--group", group, "--json").stdout)


@pytest.mark.e2e
def test_clustering_the_labelled_sample_photos_reaches_pairwise_f1_098(sample_people, identities):
    home, counts = sample_people
    assert counts["faces"] == counts["faces_assigned"] == SAMPLE_FACES
    people = people_of(home)
    assert all(None not in ids for ids in people.values())
    labelled = [name for name in identities if name in people]
    scores = pairwise_scores([people[name][0] for name in labelled], [identities[name] for name in labelled])
    print(f"pairwise on {len(labelled)} labelled photos: {scores}")
    assert scores["f1"] >= 0.98
    # her face in the couple and in the selfie joins her photos
    her = people["img1.jpg"][0]
    assert her in people["couple.jpg"] and her in people["selfie-many-people.jpg"]


@pytest.mark.e2e
def test_the_people_table_and_the_dagster_run(sample_people, identities):
    home, counts = sample_people
    people = people_json(home, "list")
    assert len(people) == counts["people"]
    her = next(p for p in people if p["person_id"] == people_of(home)["img1.jpg"][0])
    person01 = [name for name, who in identities.items() if who == "person01"]
    assert her["face_count"] == len(person01) + 2  # and her face in the couple and the selfie
    assert Path(her["representative_image_path"]).name in person01 + ["couple.jpg", "selfie-many-people.jpg"]
    assert sum(p["face_count"] for p in people) == counts["faces"]

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        run = instance.get_run_by_id(counts["run_id"])
        assert run.job_name == "people_job" and run.status == DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == "sample"
        assert instance.get_latest_materialization_event(AssetKey("people")).dagster_event.partition == "sample"


@pytest.mark.e2e
def test_the_benchmark_prints_the_pairwise_figures(sample_people):
    home, _ = sample_people
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "clustering.py"), "--store", str(home / "qdrant")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if "(facepipe)" in line)
    f1 = float(re.search(r"F1 ([0-9.]+)", line).group(1))
    assert f1 >= 0.98, result.stdout
    assert "Chinese whispers" in result.stdout and "HDBSCAN" in result.stdout


@pytest.mark.e2e
def test_a_second_digest_into_the_group_keeps_person_ids(tmp_path):
    folder, home = tmp_path / "photos", tmp_path / "home"
    folder.mkdir()
    first = ["img1.jpg", "img2.jpg", "img29.jpg", "img30.jpg", "img34.jpg", "img35.jpg"]
    second = ["img4.jpg", "img31.jpg", "img36.jpg", "img38.jpg", "img39.jpg"]  # person07 (img38, 39) is new
    for name in first:
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    digest(home, folder, "party", "--workers", "1")
    people_cli(home, "cluster", group="party")
    before = people_of(home, "party")
    assert len({ids[0] for ids in before.values()}) == 3

    for name in second:
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    assert digest(home, folder, "party", "--workers", "1")["faces_stored"] == len(second)
    counts = people_json(home, "cluster", group="party")
    after = people_of(home, "party")
    assert {name: after[name] for name in first} == before  # no one renumbered
    assert after["img4.jpg"] == before["img1.jpg"]
    assert after["img31.jpg"] == before["img29.jpg"] and after["img36.jpg"] == before["img34.jpg"]
    assert after["img38.jpg"] == after["img39.jpg"] and after["img38.jpg"][0] not in {i[0] for i in before.values()}
    assert counts["new_people"] == 1 and counts["faces_assigned"] == len(second)


@pytest.mark.e2e
def test_names_merges_and_splits_survive_a_full_recluster(sample_people, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(sample_people[0], home)
    before = people_of(home)
    ids = {name: faces[0] for name, faces in before.items()}  # each photo's subject
    her, person05, person06 = ids["img1.jpg"], ids["img29.jpg"], ids["img34.jpg"]

    people_cli(home, "name", str(her), "Alice")
    people_cli(home, "merge", str(person05), str(person06))
    shown = people_json(home, "show", str(her))
    reflection = next(f for f in shown["faces"] if f["image_path"].endswith("img11_reflection.jpg"))
    people_cli(home, "split", str(her), reflection["face_id"])
    split_off = people_of(home)["img11_reflection.jpg"][0]
    assert split_off not in ids.values()

    recluster = people_json(home, "cluster", "--full")
    assert recluster["full"] is True
    after = people_of(home)
    by_id = {p["person_id"]: p for p in people_json(home, "list")}
    assert by_id[her]["name"] == "Alice" and after["img2.jpg"] == [her]
    assert after["img34.jpg"] == after["img35.jpg"] == after["img29.jpg"] == [person05]  # still merged
    assert person06 not in by_id
    assert after["img11_reflection.jpg"] == [split_off] and after["img11.jpg"] == [her]  # still split
    # every other face kept its person
    assert all(
        after[name] == before[name]
        for name in ids
        if name not in ("img11_reflection.jpg", "couple.jpg", "selfie-many-people.jpg") and ids[name] != person06
    )


@pytest.mark.e2e
def test_people_show_makes_thumbnails_named_by_face_id(sample_people, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(sample_people[0], home)
    her = people_of(home)["img1.jpg"][0]
    shown = people_json(home, "show", str(her))
    assert len(shown["faces"]) == shown["face_count"] == 11
    for face in shown["faces"]:
        thumbnail = Path(face["thumbnail"])
        assert thumbnail.is_file() and thumbnail.name == f"{face['face_id']}.jpg"
        assert thumbnail.is_relative_to(home / "thumbnails")


@pytest.mark.e2e
def test_unknown_groups_and_people_are_clear_errors(sample_people):
    home, _ = sample_people
    for args, message in [
        (("people", "cluster", "--group", "nobody"), "unknown group 'nobody'"),
        (("people", "list", "--group", "nobody"), "unknown group 'nobody'"),
        (("people", "show", "999", "--group", "sample"), "no person 999"),
        (("people", "name", "999", "Bob", "--group", "sample"), "no person 999"),
    ]:
        result = run_facepipe(home, *args, check=False)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.e2e
def test_a_group_whose_faces_are_in_the_store_is_clustered_though_this_instance_never_saw_it(sample_digest, tmp_path):
    """The face store restored onto a new machine (or the Dagster instance reset): `people cluster`
    finds the group's faces in the store and clusters them, rather than ask for a digest first."""
    home = tmp_path / "home"
    shutil.copytree(sample_digest[0] / "qdrant", home / "qdrant")
    counts = people_json(home, "cluster")
    assert counts["faces"] == counts["faces_assigned"] == SAMPLE_FACES
    assert all(None not in ids for ids in people_of(home).values())
    # still no other group: one with no faces is unknown
    result = run_facepipe(home, "people", "cluster", "--group", "nobody", check=False)
    assert result.returncode == 1 and "unknown group 'nobody'" in result.stderr


def test_the_people_asset_follows_the_digest_per_group_in_the_store_pool():
    from facepipe.definitions import get_people_job, loaded
    from facepipe.settings import STORE_POOL

    graph = loaded().resolve_asset_graph()
    assert graph.get(AssetKey("people")).parent_keys == {AssetKey("stored_faces")}
    job = get_people_job()
    assert job.partitions_def.name == "digest_groups"
    assert {node.definition.pool for node in job.graph.node_dict.values()} == {STORE_POOL}
