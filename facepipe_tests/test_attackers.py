"""What an attacker (or a careless client) may ask of facepipe: every request field bounded and the S3
endpoint allowlisted before a run exists, whichever way the digest is asked for (the request model
the CLI, the HTTP API, the watches and the Launchpad share), and request bodies capped as they
arrive, not after. A refused request leaves nothing behind in the instance.
"""

import json
import os
import socket
import time
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from facepipe.domain.request import (
    MAX_GROUP_ID_LENGTH,
    MAX_PATH_LENGTH,
    allowed_s3_endpoint,
    digest_request,
    one_line,
    valid_workers,
)
from facepipe_tests.conftest import SAMPLE_IMAGES, SAMPLES, facepipe_server, run_facepipe

# what an attacker points a digest's signed S3 requests at: the cloud's metadata service, this
# machine, its network, a file, a look-alike of AWS's domain, credentials in the URL
HOSTILE_ENDPOINTS = [
    "http://169.254.169.254",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]",
    "http://127.0.0.1:9000",
    "http://[::1]:9000",
    "http://localhost:9000",
    "http://10.0.0.5",
    "file:///etc/passwd",
    "https://s3.amazonaws.com.evil.example",
    "https://evilamazonaws.com",
    "http://s3.amazonaws.com",  # AWS's, but not over TLS
    "https://user:pw@s3.amazonaws.com",
    "https://s3.amazonaws.com:99999",
]


@pytest.fixture
def only_aws(monkeypatch):
    monkeypatch.delenv("FACEPIPE_S3_ENDPOINTS", raising=False)


@pytest.mark.parametrize("endpoint", HOSTILE_ENDPOINTS)
def test_an_s3_endpoint_outside_the_allowlist_is_refused(only_aws, endpoint):
    with pytest.raises(ValidationError, match="not an allowed S3 endpoint") as refused:
        digest_request("s3://photos/event/", "g", s3_endpoint_url=endpoint)
    assert "FACEPIPE_S3_ENDPOINTS" in one_line(refused.value)


def test_aws_endpoints_are_allowed_by_default_and_an_operators_list_replaces_them(only_aws, monkeypatch):
    for endpoint in ("https://s3.eu-west-1.amazonaws.com", "https://bucket.s3.amazonaws.com/", None):
        assert allowed_s3_endpoint(endpoint) == endpoint
    monkeypatch.setenv("FACEPIPE_S3_ENDPOINTS", "http://127.0.0.1:9000, https://*.r2.cloudflarestorage.com")
    assert allowed_s3_endpoint("http://127.0.0.1:9000/") == "http://127.0.0.1:9000/"  # listed exactly
    assert allowed_s3_endpoint("https://acct.r2.cloudflarestorage.com")
    for endpoint in ("http://127.0.0.1:9001", "https://s3.eu-west-1.amazonaws.com", "http://169.254.169.254"):
        with pytest.raises(ValueError, match="not an allowed S3 endpoint"):
            allowed_s3_endpoint(endpoint)


@pytest.mark.parametrize(
    "path, group, options, words",
    [
        (str(SAMPLE_IMAGES), "g" * (MAX_GROUP_ID_LENGTH + 1), {}, "at most 128"),
        (str(SAMPLE_IMAGES), "../etc", {}, "may only hold"),
        ("/" + "a" * MAX_PATH_LENGTH, "g", {}, "at most 4096"),
        ("s3://" + "b" * 300 + "/p", "g", {}, "not an S3 bucket name"),
        ("s3://bucket/" + "k" * 1025, "g", {}, "at most 1024"),
        ("s3://bucket/p", "g", {"s3_region": "us-east-1.evil.example#"}, "not a region name"),
        (str(SAMPLE_IMAGES), "g", {"chunk_size": 10**9}, "less than or equal to"),
        (str(SAMPLE_IMAGES), "g", {"min_face_size": 10**9}, "less than or equal to"),
        (str(SAMPLE_IMAGES), "g", {"confidence": 2}, "less than or equal to 1"),
    ],
)
def test_each_field_is_bounded(path, group, options, words):
    with pytest.raises(ValidationError, match=words):
        digest_request(path, group, **options)


def test_workers_are_at_most_the_setting_default_the_cores(monkeypatch):
    monkeypatch.delenv("FACEPIPE_MAX_WORKERS", raising=False)
    assert valid_workers(os.cpu_count() or 1)
    with pytest.raises(ValueError, match="FACEPIPE_MAX_WORKERS"):
        valid_workers(10_000)
    monkeypatch.setenv("FACEPIPE_MAX_WORKERS", "64")
    assert valid_workers(64) == 64


def test_a_watch_is_bounded_by_the_same_rules(only_aws):
    from facepipe.domain.watching import Watch

    for bad in (
        {"s3_endpoint_url": "http://169.254.169.254", "source": "s3://b1/p"},
        {"workers": 10_000},
        {"group_id": "g" * 5000},
    ):
        with pytest.raises(ValidationError):
            Watch(**{"name": "w", "source": str(SAMPLE_IMAGES), "group_id": "g", **bad})


@pytest.mark.e2e
def test_a_launch_the_request_checks_missed_fails_before_sending_anything(tmp_path, receiver, monkeypatch):
    """A Launchpad or GraphQL launch is not built by facepipe: its run's first step checks the same
    rules before it lists anything, so the endpoint never hears from it."""
    from dagster import DagsterInstance, execute_job, reconstructable

    from facepipe.definitions import get_digest_job
    from facepipe.defs.partitions import GROUPS
    from facepipe.domain.request import PARTITION_TAG
    from facepipe.platform.instance import prepare_dagster_home

    monkeypatch.setenv("FACEPIPE_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("FACEPIPE_S3_ENDPOINTS", raising=False)
    prepare_dagster_home()
    list_images = {"source": {"s3": {"bucket": "photos", "prefix": "", "endpoint_url": receiver.url}}}
    run_config = {
        "ops": {"digest": {"ops": {"list_images": {"config": list_images}}}},
        "execution": {"config": {"workers": 1}},
    }
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(GROUPS, ["g"])
        with execute_job(
            reconstructable(get_digest_job), instance, run_config=run_config, tags={PARTITION_TAG: "g"}
        ) as result:
            assert not result.success
            [failure] = result.get_step_failure_events()
            assert "not an allowed S3 endpoint" in failure.step_failure_data.error.message
    assert receiver.received == []


def _partitions(home) -> Sequence[str]:
    from dagster import DagsterInstance

    from facepipe.defs.partitions import GROUPS

    if not (home / "dagster" / "dagster.yaml").exists():
        return []
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        return instance.get_dynamic_partitions(GROUPS)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--group", "g" * 5000], "at most 128"),
        (["--group", "g", "--workers", "10000"], "FACEPIPE_MAX_WORKERS"),
        (["--group", "g", "--s3-endpoint-url", "http://169.254.169.254"], "not an allowed S3 endpoint"),
    ],
)
def test_the_cli_refuses_before_a_run_exists(tmp_path, monkeypatch, only_aws, args, words):
    from click.testing import CliRunner

    from facepipe.cli import main

    monkeypatch.setenv("FACEPIPE_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    path = "s3://photos/event/" if "--s3-endpoint-url" in args else str(SAMPLE_IMAGES)
    result = CliRunner().invoke(main, ["digest", path, *args])
    assert result.exit_code == 2 and words in result.output, result.output
    assert list(tmp_path.iterdir()) == []  # no instance, no store: refused before either


@pytest.mark.e2e
def test_a_detached_digest_whose_launch_times_out_says_so_in_one_line(tmp_path):
    """Under load the code server may not answer `dagster job launch` in time: one line saying so,
    no traceback, and the group it would have created is not left behind."""
    result = run_facepipe(
        tmp_path,
        *("digest", str(SAMPLE_IMAGES), "--group", "g", "--detach"),
        check=False,
        env={"DAGSTER_GRPC_TIMEOUT_SECONDS": "0"},  # every call to the code server times out
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "could not be queued" in result.stderr and "DAGSTER_GRPC_TIMEOUT_SECONDS" in result.stderr
    assert _partitions(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# The HTTP API, as an attacker reaches it: `facepipe serve` on loopback, raw HTTP
# ------------------------------------------------------------------------------------------------

MAX_BYTES = 2_000_000  # this server's photo budget: an upload may be ~3 MB with its form


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx

    home = tmp_path_factory.mktemp("attacked_home")
    env = {
        "FACEPIPE_ALLOWED_ROOTS": str(SAMPLES),
        "FACEPIPE_MAX_IMAGE_BYTES": str(MAX_BYTES),
        "FACEPIPE_S3_ENDPOINTS": "",  # AWS's own
    }
    with facepipe_server(
        home, "serve", lambda url: httpx.get(f"{url}/docs", timeout=5).status_code == 200, **env
    ) as url:
        yield home, url


def _raw(url: str, head: str, chunks, read_after_each: bool = True) -> tuple[bytes, int]:
    """Send `head` then `chunks` on one connection as a client that does not stop when told; the
    server's answer and how many body bytes were sent when it came (or when the server hung up)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(head.encode())
        conn.setblocking(False)
        for chunk in chunks:
            try:
                answer = conn.recv(65536)
                if answer:
                    return _whole(conn, answer), sent
            except BlockingIOError:
                pass
            try:
                conn.settimeout(10)
                conn.sendall(chunk)
                conn.setblocking(False)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        conn.settimeout(60)
        try:
            return _whole(conn, conn.recv(65536)), sent
        except ConnectionResetError:
            return b"", sent


def _whole(conn: socket.socket, answer: bytes) -> bytes:
    """The answer whose first bytes came, read up to the end of its body: a loaded server may send
    the head and the body apart."""
    conn.settimeout(10)
    while answer:
        head, ended, body = answer.partition(b"\r\n\r\n")
        lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if ended and len(body) >= int(lengths[0] if lengths else 0):
            return answer
        try:
            more = conn.recv(65536)
        except OSError:  # reset, or nothing more within the timeout
            return answer
        if not more:
            return answer
        answer += more
    return answer


def _chunked(total: int, size: int = 1 << 16, first: bytes = b""):
    """`total` bytes in chunks of the chunked encoding, the first starting with `first`."""
    if first:
        yield f"{len(first):x}\r\n".encode() + first + b"\r\n"
    block = b"x" * size
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + block + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.mark.e2e
def test_a_chunked_upload_without_a_length_is_refused_at_the_cap_not_after_it(server):
    """The photo budget plus its form is ~3 MB; 256 MiB are offered, chunked with no Content-Length:
    the server answers 413 once it has read past the cap, and reads no further."""
    _, url = server
    head = (
        "POST /get-faces HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    answer, sent = _raw(url, head, _chunked(256 << 20, first=part))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"refused: the request is more than the" in answer
    assert sent < 64 << 20, f"{sent:,} bytes were sent before the answer"  # socket buffers hold a few MB


@pytest.mark.e2e
def test_a_json_body_is_capped_by_its_length_and_as_it_streams(server):
    import httpx

    _, url = server
    big = json.dumps({"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g" * (50 << 20)})
    answer = httpx.post(f"{url}/digest", content=big, headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413 and "refused" in answer.json()["detail"]
    head = "POST /digest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    answer, _ = _raw(url, head, _chunked(8 << 20))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"group_id": "g" * 5000}, "group_id", "at most 128"),
        ({"local_dir_path": "/" + "a" * 5000}, "local_dir_path", "at most 4096"),
        ({"threads": 10_000}, "threads", "FACEPIPE_MAX_WORKERS"),
        ({"chunk_size": 10**9}, "chunk_size", "less than or equal to"),
        *(
            (
                {"local_dir_path": None, "s3_bucket": "photos", "s3_prefix": "", "s3_endpoint_url": endpoint},
                "s3_endpoint_url",
                "not an allowed S3 endpoint",
            )
            for endpoint in HOSTILE_ENDPOINTS
        ),
    ],
)
def test_a_hostile_digest_request_is_a_422_naming_the_field_and_leaves_nothing(server, body, field, words):
    import httpx

    home, url = server
    posted = {"local_dir_path": str(SAMPLE_IMAGES), "group_id": "g", **body}
    answer = httpx.post(f"{url}/digest", json=posted, timeout=60)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"][-1] == field and words in error["msg"] and "\n" not in error["msg"]
    assert _partitions(home) == []


@pytest.mark.e2e
def test_the_server_still_answers_after_the_attacks(server):
    import httpx

    _, url = server
    deadline = time.time() + 30
    while time.time() < deadline:
        if httpx.get(f"{url}/docs", timeout=5).status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError("the server stopped answering")
