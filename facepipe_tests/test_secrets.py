"""No secret in anything the instance keeps (#14, security): after digests of S3 photos with
distinct dummy keys, launched by a watch's sensor under `facepipe ui` and from the command line,
with webhooks whose paths are secrets (one answering, one refusing connections) and a Qdrant API
key set, not one byte of any file under FACEPIPE_HOME holds a secret: the instance's databases
(runs, their config and tags, the event log, sensor ticks), the compute logs, the step outputs,
the face store, the ui's own log.

A positive control proves the search reads those files: the bucket's name, which is no secret,
is found in the run database.
"""

import json
import time
from pathlib import Path

import boto3
import pytest

from facepipe_tests.conftest import S3_SECRET, SAMPLE_IMAGES, digest, facepipe_ui, free_port

pytestmark = pytest.mark.e2e

ACCESS_KEY = "AKIAFACEPIPEDUMMYKEY"  # moto takes any key id; this one is findable
QDRANT_KEY = "qdrant-dummy-api-key-7f3e"  # set, though the embedded store never sends it
HOOK_SECRET = "T0FACEPIPE/B0SECRET/xoxsecrethookpath"  # a Slack-style webhook's path is its secret
BUCKET = "secret-test-bucket"


def files_holding(root: Path, needle: str) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and needle.encode() in path.read_bytes()]


def wait_for_webhook(receiver, event: str, timeout: float = 300) -> dict:
    """The summaries posted to the secret path so far, by event, once `event` is among them."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = {body["event"]: body for body in receiver.bodies(f"/{HOOK_SECRET}")}
        if event in events:
            return events
        time.sleep(2)
    raise AssertionError(f"no {event} webhook within {timeout} s: {receiver.received}")


def test_no_secret_in_any_file_the_instance_stored(s3_endpoint, receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("QDRANT_API_KEY", QDRANT_KEY)
    monkeypatch.setenv("HOOK_SECRET", HOOK_SECRET)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    for name in ("img1.jpg", "couple.jpg"):
        client.put_object(Bucket=BUCKET, Key=f"event/{name}", Body=(SAMPLE_IMAGES / name).read_bytes())

    home, watches = tmp_path / "home", tmp_path / "watches.yaml"
    # the webhook URLs come from the environment (`${...}`), as the README advises for secrets
    watches.write_text(
        f"watches:\n  - name: bucket\n    source: s3://{BUCKET}/event/\n    group_id: watched\n"
        f"    s3_endpoint_url: {s3_endpoint}\n    minimum_interval_seconds: 5\n    workers: 1\n"
        f"webhooks:\n  - {receiver.url}/${{HOOK_SECRET}}\n  - http://127.0.0.1:{free_port()}/${{HOOK_SECRET}}\n"
    )
    receiver.fail_once = {f"/{HOOK_SECRET}"}  # a first 503, retried: logged as the flaky receiver it is
    with facepipe_ui(home, daemons=("SENSOR", "QUEUED_RUN_COORDINATOR"), FACEPIPE_WATCHES=str(watches)):
        # the watch's sensor digests the prefix; then (the webhooks' sensors are ticking: they only
        # hear of runs that end after their first tick) a digest of a missing bucket fails
        wait_for_webhook(receiver, "digest_completed")
        assert digest(home, "s3://no-such-bucket/x/", "missing", "--s3-endpoint-url", s3_endpoint)["status"] == "failed"
        events = wait_for_webhook(receiver, "digest_failed")
        assert events["digest_completed"]["group_id"] == "watched" and events["digest_completed"]["faces_stored"] == 3
        time.sleep(5)  # the refused webhook's warning is written after its retries
    # the controls: the search reads the databases (the bucket is in the runs' config) and the logs
    # of the webhooks' failures (with the URL's scheme and host only)
    assert any(path.endswith("runs.db") for path in files_holding(home, BUCKET))
    assert files_holding(home, "webhook http://127.0.0.1:"), "the webhooks' failures were logged nowhere"
    for secret in (S3_SECRET, ACCESS_KEY, QDRANT_KEY, HOOK_SECRET, HOOK_SECRET.split("/")[-1]):
        assert files_holding(home, secret) == [], f"{secret!r} is stored in these files"
    assert HOOK_SECRET not in json.dumps([body for _, body in receiver.received])  # nor posted in a summary
