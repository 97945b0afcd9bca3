"""What an app developer reads of the HTTP API before calling it: the OpenAPI document (a snapshot
of it, so that a change to it is a decision), its examples, and the docs pages, which render from
the app's own files on a machine without internet. In process, no store, no instance.

After an intended change: `FACEPIPE_UPDATE_SNAPSHOTS=1 pytest facepipe_tests/test_api_schema.py`,
then review the diff of facepipe_tests/snapshots/openapi.json."""

import json
import os
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from facepipe.api.app import create_app
from facepipe.api.schemas import DIGEST_EXAMPLE, DigestBody
from facepipe_tests.conftest import SAMPLE_IMAGES

SNAPSHOT = Path(__file__).parent / "snapshots" / "openapi.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app().openapi()


def test_the_openapi_document_is_the_snapshot(schema):
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    if os.environ.get("FACEPIPE_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), (
        "the OpenAPI document changed: if that is meant, run "
        "`FACEPIPE_UPDATE_SNAPSHOTS=1 pytest facepipe_tests/test_api_schema.py` and commit the snapshot"
    )


def test_every_operation_answers_a_model_and_documents_its_errors_in_one_shape(schema):
    operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert len(operations) == 26 and all(path.startswith("/v1/") for path, _, _ in operations)
    for path, method, op in operations:
        success = [code for code in op["responses"] if code.startswith("2")]
        for code in success:
            if path.endswith("/crop"):  # a JPEG
                assert op["responses"][code]["content"] == {
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}
                }
                continue
            content = op["responses"][code]["content"]["application/json"]["schema"]
            assert "$ref" in content, (method, path, code)  # a named model, not {additionalProperties: true}
        errors = {code: r for code, r in op["responses"].items() if not code.startswith("2")}
        if path != "/v1/health":
            assert {"401", "422"} <= set(errors), (method, path)
        for code, response in errors.items():
            model = response["content"]["application/json"]["schema"]["$ref"]
            assert model.endswith("/ErrorBody") or (path, code) == ("/v1/health", "503"), (method, path, code)
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's other 422 shape
    # the 404s, 409s and 503s each operation may answer
    assert {"404", "409"} <= set(schema["paths"]["/v1/digest/{job_id}/cancel"]["post"]["responses"])
    assert {"400", "404", "413", "503"} <= set(schema["paths"]["/v1/search-face"]["post"]["responses"])


def test_operations_are_named_by_their_function_and_uploads_are_files(schema):
    ids = [op["operationId"] for item in schema["paths"].values() for op in item.values()]
    assert len(set(ids)) == len(ids) and {"post_digest", "get_digest", "post_search_face", "get_people"} <= set(ids)
    uploads = [
        (name, field)
        for name, model in schema["components"]["schemas"].items()
        for field, spec in model.get("properties", {}).items()
        if spec.get("contentMediaType") == "application/octet-stream"
    ]
    # the selfies of search and forget, the three one-photo endpoints' photo, verify's two
    assert len(uploads) == 7
    for name, field in uploads:  # a client generator reads `format: binary` as a file to upload
        spec = schema["components"]["schemas"][name]["properties"][field]
        assert spec["format"] == "binary" and spec["type"] == "string", name  # optional, yet a file, not anyOf
        in_base64 = "image_base64" + field.removeprefix("file").replace("1", "_1").replace("2", "_2")
        assert in_base64 in schema["components"]["schemas"][name]["properties"], (name, in_base64)  # or in base64
    many = schema["components"]["schemas"]["Body_post_photos"]["properties"]["files"]
    assert many["type"] == "array" and many["items"] == {"type": "string", "format": "binary"}


def test_the_digest_example_fills_one_source_and_is_accepted(schema, monkeypatch):
    body = schema["components"]["schemas"]["DigestBody"]
    [example] = body["examples"]
    assert example == DIGEST_EXAMPLE
    assert [key for key in ("local_dir_path", "s3_bucket") if example.get(key)] == ["local_dir_path"]
    # accepted as it is, once its folder is one the server may read
    monkeypatch.setenv("FACEPIPE_ALLOWED_ROOTS", str(SAMPLE_IMAGES))
    accepted = DigestBody.model_validate({**example, "local_dir_path": str(SAMPLE_IMAGES)})
    assert accepted.group_id == example["group_id"] and accepted.threads == example["threads"]


def test_the_docs_render_from_the_apps_own_files(monkeypatch):
    with TestClient(create_app()) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200
            urls = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
            assert urls and not [u for u in urls if "//" in u], urls  # nothing from another host (no CDN)
            for url in urls:
                asset = client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
        assert "swagger-ui-bundle.js" in client.get("/docs").text
        assert "redoc.standalone.js" in client.get("/redoc").text


def test_cors_answers_only_the_origins_of_the_setting(monkeypatch):
    monkeypatch.setenv("FACEPIPE_CORS_ORIGINS", "https://app.example.com, http://localhost:5173/")
    with TestClient(create_app()) as client:
        asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
        allowed = client.options("/v1/digest", headers={"Origin": "https://app.example.com", **asked})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        assert client.options("/v1/digest", headers={"Origin": "http://localhost:5173", **asked}).status_code == 200
        refused = client.options("/v1/digest", headers={"Origin": "https://evil.example", **asked})
        assert "access-control-allow-origin" not in refused.headers
    monkeypatch.delenv("FACEPIPE_CORS_ORIGINS")
    with TestClient(create_app()) as client:  # unset: no origin is answered
        answer = client.options("/v1/digest", headers={"Origin": "https://app.example.com", **asked})
        assert "access-control-allow-origin" not in answer.headers
