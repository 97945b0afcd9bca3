"""FACEPIPE_STEP_OUTPUTS: the runs' step outputs in S3 (dagster-aws's S3PickleIOManager), against moto's
S3 server on loopback, here on this machine's multiprocess executor (test_celery.py has it on Celery
workers). The endpoint is the AWS configuration's (AWS_ENDPOINT_URL), as a deployment sets it.
"""

import json

import boto3
import pytest

from facepipe import settings
from facepipe_tests.conftest import SAMPLE_IMAGES, copy_samples, run_facepipe

# moto's server keeps its buckets in this process, shared by every test module's server: names of our own
BUCKET = "multiprocess-step-outputs"


@pytest.mark.e2e
def test_a_digest_keeps_its_step_outputs_in_s3_and_none_in_the_instance(s3_endpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    photos = tmp_path / "photos"
    copy_samples(photos, 4)
    home = tmp_path / "home"
    env = {"FACEPIPE_STEP_OUTPUTS": f"s3://{BUCKET}", "AWS_ENDPOINT_URL": s3_endpoint, "FACEPIPE_CELERY_BROKER": ""}

    result = run_facepipe(
        home, "digest", str(photos), "--group", "g", "--workers", "2", "--chunk-size", "2", "--json", env=env
    )
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["images_done"] == 4, summary

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    # no prefix in the setting: the library's default, "dagster"
    assert keys and all(key.startswith("dagster/") for key in keys), keys
    assert any(summary["run_id"] in key and "extract_faces_in_chunk" in key for key in keys), keys
    storage = home / "dagster" / "storage"
    pickled = [p for p in storage.rglob("*") if p.is_file() and "compute_logs" not in p.parts]
    assert pickled == [], pickled


@pytest.mark.parametrize("value", ["steps", "s3://", "/mnt/steps", "https://bucket.s3.amazonaws.com/p"])
def test_a_step_output_setting_that_is_not_an_s3_url_says_what_to_write(monkeypatch, value):
    monkeypatch.setenv("FACEPIPE_STEP_OUTPUTS", value)
    with pytest.raises(ValueError, match=r"^FACEPIPE_STEP_OUTPUTS must be s3://bucket/prefix, got "):
        settings.step_outputs()


def test_the_facepipe_command_says_so_in_one_line(tmp_path):
    # read as the definitions load, inside Dagster's loader, which wraps it: still one line
    result = run_facepipe(
        tmp_path / "home", "digest", str(SAMPLE_IMAGES), "--group", "g", check=False, env={"FACEPIPE_STEP_OUTPUTS": "x"}
    )
    assert result.returncode == 1
    assert result.stderr == "Error: FACEPIPE_STEP_OUTPUTS must be s3://bucket/prefix, got 'x'\n"
