"""A Python client generated from the service's /openapi.json by openapi-python-client, as an app
developer would make one (offline: from the document, no network), used for what an app does:
upload photos, follow their digest to its end, search, verify, delete. The app runs in process
(the generated client takes an httpx client: FastAPI's TestClient is one); its digests are run by
the daemon of a `facepipe ui` on the same FACEPIPE_HOME."""

import importlib
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from facepipe.api.app import create_app
from facepipe_tests.conftest import SAMPLE_IMAGES, facepipe_ui

pytestmark = pytest.mark.e2e  # a `facepipe ui` daemon runs the digest

KEY = "test-key-client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory, monkeypatch_module):
    """The client package generated from this app's OpenAPI document, importable as `facepipe_client`."""
    folder = tmp_path_factory.mktemp("generated")
    document = folder / "openapi.json"
    app = create_app()
    document.write_text(TestClient(app).get("/openapi.json").text)
    generator = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert generator, "openapi-python-client is in the dev extra: pip install -e '.[dev]'"
    result = subprocess.run(
        [
            generator,
            "generate",
            "--path",
            str(document),
            "--meta",
            "none",
            "--output-path",
            str(folder / "facepipe_client"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    monkeypatch_module.syspath_prepend(str(folder))
    return importlib.import_module("facepipe_client")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_generated_client_uploads_digests_searches_verifies_and_deletes(generated, tmp_path, monkeypatch):
    from facepipe_client.api.digests import get_digest
    from facepipe_client.api.forget import delete_one_photo, post_verify
    from facepipe_client.api.photos import get_photos, post_photos
    from facepipe_client.api.search import post_search_face
    from facepipe_client.models import BodyPostPhotos, BodyPostSearchFace, BodyPostVerify, Job
    from facepipe_client.types import File

    def photo(name: str) -> File:
        return File(payload=io.BytesIO((SAMPLE_IMAGES / name).read_bytes()), file_name=name, mime_type="image/jpeg")

    home = tmp_path / "home"
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("FACEPIPE_HOME", str(home))
    monkeypatch.setenv("FACEPIPE_API_KEY", KEY)
    with facepipe_ui(home), TestClient(create_app(), headers={"X-API-Key": KEY}) as http:
        client = generated.AuthenticatedClient(
            base_url=str(http.base_url), token=KEY, prefix="", auth_header_name="X-API-Key"
        ).set_httpx_client(http)

        # upload: her two photos and person09's, one digest of the group's upload folder
        job = post_photos.sync(
            "family",
            client=client,
            body=BodyPostPhotos(files=[photo("img1.jpg"), photo("img2.jpg"), photo("img8.jpg")]),
        )
        # queued, or already processing: the daemon dequeues every second
        assert isinstance(job, Job) and job.status in ("queued", "processing"), job
        deadline = time.time() + 600
        while job.status in ("queued", "processing"):
            assert time.time() < deadline, f"digest {job.job_id} still {job.status}"
            time.sleep(2)
            job = get_digest.sync(job.job_id, client=client)
            assert isinstance(job, Job), job
        assert job.status == "completed" and (job.images_total, job.total_faces) == (3, 3), job
        assert len(job.face_ids) == 3

        photos = get_photos.sync("family", client=client)
        ids = {p.path: p.photo_id for p in photos.photos}
        assert set(ids) == {"img1.jpg", "img2.jpg", "img8.jpg"}

        # search with her selfie: both of her photos, by their names within the uploads
        found = post_search_face.sync(client=client, body=BodyPostSearchFace(group_id="family", file=photo("img1.jpg")))
        assert sorted(p.image_path for p in found.photos) == ["img1.jpg", "img2.jpg"]
        assert {p.photo_id for p in found.photos} == {ids["img1.jpg"], ids["img2.jpg"]}

        # verify: her two photos are one person, she and person09 are not
        same = post_verify.sync(client=client, body=BodyPostVerify(file1=photo("img1.jpg"), file2=photo("img2.jpg")))
        other = post_verify.sync(client=client, body=BodyPostVerify(file1=photo("img1.jpg"), file2=photo("img8.jpg")))
        assert same.verified is True and other.verified is False and same.similarity > other.similarity

        # delete one of her photos: gone from search, from the listing and from the disk
        deleted = delete_one_photo.sync("family", ids["img2.jpg"], client=client)
        assert (deleted.photos, deleted.faces, deleted.files, deleted.photo_paths) == (1, 1, 1, ["img2.jpg"])
        found = post_search_face.sync(client=client, body=BodyPostSearchFace(group_id="family", file=photo("img1.jpg")))
        assert [p.image_path for p in found.photos] == ["img1.jpg"]
        assert {p.path for p in get_photos.sync("family", client=client).photos} == {"img1.jpg", "img8.jpg"}
        assert not (home / "uploads" / "family" / "img2.jpg").exists()
