"""Digests straight from S3, against a real S3 HTTP endpoint on loopback: moto's server mode.

boto3 (through dagster-aws's S3Resource) talks to it over HTTP exactly as it would to AWS; nothing
is patched. The credentials are moto's dummies, given the standard way (environment variables).
"""

import json
from pathlib import Path

import boto3
import numpy as np
import pytest
from dagster import DagsterInstance

from facepipe.engine.faces import faces_in_chunk
from facepipe.engine.listing import ImageError
from facepipe.engine.planning import ImageTask
from facepipe.engine.sources import S3Reader, SourceError, list_s3_images
from facepipe_tests.conftest import S3_SECRET as SECRET
from facepipe_tests.conftest import SAMPLE_IMAGES, digest, faces_by_photo, run_facepipe

PHOTOS = ["img1.jpg", "img2.jpg", "img3.jpg", "couple.jpg", "img11.jpg", "img11_reflection.jpg"]


@pytest.fixture
def client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def bucket(client, request):
    name = request.node.name.lower().replace("_", "-")[:50]
    client.create_bucket(Bucket=name)
    return name


def upload_photos(client, bucket, prefix="event/"):
    for name in PHOTOS:
        client.put_object(Bucket=bucket, Key=prefix + name, Body=(SAMPLE_IMAGES / name).read_bytes())
    client.put_object(Bucket=bucket, Key=prefix + "notes.jpg", Body=b"a text file with an image name")
    client.put_object(Bucket=bucket, Key="elsewhere/img5.jpg", Body=(SAMPLE_IMAGES / "img5.jpg").read_bytes())


def s3_digest(home, bucket, endpoint, *extra):
    return digest(home, f"s3://{bucket}/event/", "s3group", "--s3-endpoint-url", endpoint, "--workers", "2", *extra)


def test_listing_pages_through_more_than_1000_keys(client, bucket):
    for i in range(1100):
        client.put_object(Bucket=bucket, Key=f"many/{i:05d}.jpg", Body=b"placeholder")
    client.put_object(Bucket=bucket, Key="many/readme.txt", Body=b"not listed: no image extension")
    files = list_s3_images(client, bucket, "many/")
    assert len(files) == 1100
    assert files[0].path == f"s3://{bucket}/many/00000.jpg" and files[-1].path.endswith("01099.jpg")
    assert all(f.etag and f.size == len(b"placeholder") for f in files)


def test_a_missing_bucket_fails_before_any_work(client):
    with pytest.raises(SourceError, match="does not exist"):
        list_s3_images(client, "no-such-bucket", "")


def test_an_object_that_vanished_since_listing_is_a_recorded_error(client, bucket):
    client.put_object(Bucket=bucket, Key="a/img2.jpg", Body=(SAMPLE_IMAGES / "img2.jpg").read_bytes())
    listed = list_s3_images(client, bucket, "a/")
    client.delete_object(Bucket=bucket, Key="a/img2.jpg")
    with pytest.raises(ImageError, match="not found"):
        S3Reader(client)(listed[0].path)
    (result,) = faces_in_chunk([ImageTask(listed[0].path)], "dlib", 0.5, read=S3Reader(client)).images
    assert "not found" in result.error


def test_an_object_over_the_byte_budget_is_refused_by_its_size_and_a_gif_is_listed(client, bucket, monkeypatch):
    client.put_object(Bucket=bucket, Key="big/img1.jpg", Body=(SAMPLE_IMAGES / "img1.jpg").read_bytes())
    client.put_object(Bucket=bucket, Key="big/anim.gif", Body=b"GIF89a")
    listed = list_s3_images(client, bucket, "big/")
    assert [f.path.rsplit("/", 1)[1] for f in listed] == ["anim.gif", "img1.jpg"] and listed.not_listed == []
    monkeypatch.setenv("FACEPIPE_MAX_IMAGE_BYTES", "100000")  # img1.jpg is 2.2 MB
    with pytest.raises(ImageError, match=r"^refused: the object is .* more than the 97.7 KiB a photo may have"):
        S3Reader(client)(listed[1].path)


@pytest.mark.e2e
def test_s3_digest_finds_the_same_faces_as_a_local_digest(s3_endpoint, client, bucket, sample_digest, tmp_path):
    upload_photos(client, bucket)
    home = tmp_path / "home"
    summary = s3_digest(home, bucket, s3_endpoint)
    assert summary["status"] == "completed" and summary["source"] == f"s3://{bucket}/event/"
    assert summary["images_listed"] == 7 and summary["images_failed"] == 1
    assert [f["path"] for f in summary["failed_images"]] == [f"s3://{bucket}/event/notes.jpg"]
    assert "not an image" in summary["failed_images"][0]["error"]

    from_s3, local = faces_by_photo(home, "s3group"), faces_by_photo(sample_digest[0], "sample")
    assert set(from_s3) == set(PHOTOS)
    for name in PHOTOS:
        assert len(from_s3[name]) == len(local[name])
        s3_vectors = sorted((p.payload["face_index"], p.vector) for p in from_s3[name])
        local_vectors = sorted((p.payload["face_index"], p.vector) for p in local[name])
        assert all(np.allclose(a[1], b[1], atol=1e-6) for a, b in zip(s3_vectors, local_vectors))
    assert from_s3["img1.jpg"][0].payload["image_path"] == f"s3://{bucket}/event/img1.jpg"

    # the credentials are nowhere in what Dagster keeps of the run
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        run = instance.get_run_by_id(summary["run_id"])
        logs = instance.all_logs(summary["run_id"])
    assert SECRET not in json.dumps(run.run_config) and SECRET not in json.dumps(run.tags)
    assert not any(SECRET in (entry.message or "") or SECRET in str(entry.dagster_event) for entry in logs)


@pytest.mark.e2e
def test_redigest_downloads_nothing_and_a_changed_object_replaces_its_faces(s3_endpoint, client, bucket, tmp_path):
    upload_photos(client, bucket)
    home = tmp_path / "home"
    first = s3_digest(home, bucket, s3_endpoint)
    again = s3_digest(home, bucket, s3_endpoint)
    # unchanged objects (same size and ETag) are skipped from the listing: no step fetches them
    assert again["images_skipped"] == 6 and again["images_to_digest"] == 1  # notes.jpg failed, so it is retried
    assert again["faces_in_group"] == first["faces_in_group"]

    client.put_object(Bucket=bucket, Key="event/img1.jpg", Body=(SAMPLE_IMAGES / "img4.jpg").read_bytes())
    changed = s3_digest(home, bucket, s3_endpoint)
    assert changed["images_to_digest"] == 2 and changed["faces_in_group"] == first["faces_in_group"]
    (face,) = faces_by_photo(home, "s3group")["img1.jpg"]
    import hashlib

    assert face.payload["content_hash"] == hashlib.sha256((SAMPLE_IMAGES / "img4.jpg").read_bytes()).hexdigest()


@pytest.mark.e2e
def test_a_digest_of_a_missing_bucket_fails_with_a_clear_error(s3_endpoint, tmp_path):
    summary = digest(tmp_path / "home", "s3://no-such-bucket/x/", "g", "--s3-endpoint-url", s3_endpoint)
    assert summary["status"] == "failed" and summary["images_done"] == 0
    assert any("does not exist" in error for error in summary["errors"])


@pytest.mark.e2e
def test_people_show_makes_thumbnails_of_s3_photos_through_the_digests_reader(s3_endpoint, client, bucket, tmp_path):
    upload_photos(client, bucket)
    home = tmp_path / "home"
    assert s3_digest(home, bucket, s3_endpoint)["status"] == "completed"
    run_facepipe(home, "people", "cluster", "--group", "s3group")
    people = json.loads(run_facepipe(home, "people", "list", "--group", "s3group", "--json").stdout)
    faces = [
        face
        for person in people
        for face in json.loads(
            run_facepipe(home, "people", "show", str(person["person_id"]), "--group", "s3group", "--json").stdout
        )["faces"]
    ]
    assert len(faces) == 7 and all(f["image_path"].startswith(f"s3://{bucket}/") for f in faces)
    # each made from the object, read with the digest's own endpoint (moto's, not AWS)
    assert all(f["thumbnail"] and Path(f["thumbnail"]).stat().st_size > 1000 for f in faces), faces
