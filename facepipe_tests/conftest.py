"""Shared fixtures: the sample photos in ../shared/faces, isolated data folders, real digests.

Digests run through the real `facepipe` command in a subprocess, on a temporary FACEPIPE_HOME
(Dagster instance + embedded Qdrant store), exactly as a user runs them.
"""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# The suite runs two test workers on the 2 cores (pytest -n 2), each digest's YuNet on OpenMP threads
# sized to the cores: two processes' idle threads then spin for work on the core the other needs.
# Asleep instead ("PASSIVE"), the engine's loop on 16 samples took 18.5 s in each of two processes
# side by side, against 26.7 s. A user's one digest at a time is not oversubscribed
# (engine.profiles.share_cores), and benchmarks/digest_speed.py showed no gain there, so facepipe
# itself keeps OpenMP's default. Set before any test loads a model; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "faces"
SAMPLE_IMAGES = SAMPLES / "images"
# The samples' README counts the people each photo was taken of: one, two in couple.jpg, seven in
# selfie-many-people.jpg (the default finds 6: the woman cut by the lower-left corner is missed).
# The default also finds people behind the subject, seen by eye: three in img54, two cut by img62's
# lower edge, a turned head in img59 and an out-of-focus face in img41. The subject's face is the
# photo's largest.
PEOPLE_BEHIND = {"img41.jpg": 1, "img54.jpg": 3, "img59.jpg": 1, "img62.jpg": 2}
SELFIE_FACES = 6
# what a digest of the 64 stores at the defaults: the 62 photos of one person, the couple, the selfie
SAMPLE_FACES = 62 + 2 + SELFIE_FACES + sum(PEOPLE_BEHIND.values())
S3_SECRET = "moto-dummy-secret-key"
REPORTS: list[str] = []  # tables that tests measured (recall per face size...), printed after the run


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller prints what it measured
        workeroutput["reports"] = REPORTS


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, on the controller
def pytest_testnodedown(node, error):
    REPORTS.extend(getattr(node, "workeroutput", {}).get("reports", []))


def pytest_terminal_summary(terminalreporter):
    for report in REPORTS:
        terminalreporter.write_sep("-", report.split("\n", 1)[0])
        terminalreporter.write_line(report.split("\n", 1)[1])


@pytest.fixture(scope="session", autouse=True)
def deepface_home(tmp_path_factory):
    """Model weights in a temporary DEEPFACE_HOME, so tests never touch the user's ~/.deepface."""
    home = tmp_path_factory.mktemp("deepface_home")
    os.environ["DEEPFACE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def identities() -> dict[str, str]:
    with open(SAMPLES / "identities.csv") as f:
        return {row["image"]: row["identity"] for row in csv.DictReader(f)}


def run_facepipe(home: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACEPIPE_HOME": str(home), **(env or {})}
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [sys.executable, "-m", "facepipe.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(f"facepipe {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


# a digest of 24 of the samples, 4 photos a step on one worker: slow enough to cancel or kill mid-run
# (canceled once its first chunk is stored, it has five to do at the default's detection, HOG and
# YuNet: a minute or more on a loaded machine, where the `facepipe` commands that see it and cancel
# it take up to half a minute each)
SLOW_DIGEST_PHOTOS = 24
SLOW_DIGEST_FACES = 25  # the faces a digest of those 24 stores
FIRST_16_SAMPLES_FACES = 17  # the faces a digest of the first 16 stores, at the default preset as at `portraits`
SLOW_DIGEST_CHUNK = 4
SLOW_DIGEST = ("--group", "g", "--workers", "1", "--chunk-size", str(SLOW_DIGEST_CHUNK), "--json")


@pytest.fixture(scope="session")
def slow_digest_photos(tmp_path_factory) -> Path:
    """The photos of SLOW_DIGEST: the first SLOW_DIGEST_PHOTOS samples."""

    folder = tmp_path_factory.mktemp("slow_digest_photos")
    copy_samples(folder, SLOW_DIGEST_PHOTOS)
    return folder


def start_facepipe(home: Path, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """`facepipe ARGS` started in the background on `home` (a digest to cancel or kill mid-run)."""
    env = {**os.environ, "FACEPIPE_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    return subprocess.Popen(
        [sys.executable, "-m", "facepipe.cli", *args], env=env, stdout=stdout, stderr=subprocess.DEVNULL, text=True
    )


def digest_at(home: Path, images_done: int, timeout: float = 300) -> str:
    """The run id of the newest digest on `home`, once it has done at least `images_done` photos."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = json.loads(run_facepipe(home, "digests", "list", "--json").stdout)
        if found and found[0]["images_done"] >= images_done:
            return found[0]["run_id"]
        time.sleep(0.5)
    raise AssertionError(f"no digest on {home} did {images_done} photos within {timeout} s")


def digest(home: Path, folder: Path, group: str, *extra: str) -> dict:
    """Run `facepipe digest --json` and return its summary."""
    result = run_facepipe(home, "digest", str(folder), "--group", group, "--json", *extra, check=False)
    assert result.stdout.strip(), f"no summary on stdout:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


def made_once(tmp_path_factory, name: str, make) -> Path:
    """A folder `make(folder)` fills, made once per test session, then copied for this worker.

    Under pytest-xdist every worker asks for it: the first makes it in the session's shared temporary
    folder under a file lock, the others wait and copy it, so each worker has a copy of its own (an
    embedded store is held by one process at a time)."""
    import shutil

    from filelock import FileLock

    if "PYTEST_XDIST_WORKER" not in os.environ:  # no xdist: this process is the whole session
        folder = tmp_path_factory.mktemp(name) / "made"
        make(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent / name  # the session's folder, above the workers'
    with FileLock(f"{shared}.lock"):
        if not (shared / "made.done").exists():
            shutil.rmtree(shared, ignore_errors=True)
            make(shared / "made")
            (shared / "made.done").touch()
    copy = tmp_path_factory.mktemp(name) / "made"
    shutil.copytree(shared / "made", copy)
    return copy


def _sample_digest(folder: Path) -> None:
    summary = digest(folder / "home", SAMPLE_IMAGES, "sample", "--workers", "2")
    (folder / "summary.json").write_text(json.dumps(summary))


def copy_samples(folder: Path, count: int) -> Path:
    """The first `count` sample photos (by name) copied into `folder` (made if missing): a digest of
    a few real photos, for tests whose point needs fewer than the 64."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:count]:
        shutil.copy(path, folder)
    return folder


@pytest.fixture(scope="session")
def sample_digest(tmp_path_factory):
    """One real digest of the 64 sample photos into group 'sample', shared by the read-only tests
    (made once per session, whatever the number of xdist workers)."""
    folder = made_once(tmp_path_factory, "sample_digest", _sample_digest)
    return folder / "home", json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="session")
def sample_people(sample_digest, tmp_path_factory):
    """A copy of the sample digest whose faces `facepipe people cluster` placed into people, shared
    by the read-only search, people and notebook tests."""
    import shutil

    def cluster(folder: Path) -> None:
        shutil.copytree(sample_digest[0], folder / "home")
        result = run_facepipe(folder / "home", "people", "cluster", "--group", "sample", "--json")
        (folder / "counts.json").write_text(result.stdout)

    folder = made_once(tmp_path_factory, "sample_people", cluster)
    return folder / "home", json.loads((folder / "counts.json").read_text())


def faces_by_photo(home: Path, group: str = "sample", profile: str = "dlib") -> dict[str, list]:
    """The group's stored faces (with vectors), by photo file name."""
    from facepipe.store import FaceStore

    with FaceStore.open(path=home / "qdrant", wait=60) as store:  # a service may hold it: it hands it over
        points = list(store.scroll_faces(group, profile, with_vectors=True))
    by_photo: dict[str, list] = {}
    for point in points:
        by_photo.setdefault(point.payload["image_path"].rsplit("/", 1)[-1], []).append(point)
    return by_photo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 HTTP endpoint on loopback (moto's server mode), with moto's dummy credentials in the
    environment the standard way, and the endpoint allowed to digest requests (FACEPIPE_S3_ENDPOINTS:
    a loopback endpoint is refused unless an operator lists it)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "FACEPIPE_S3_ENDPOINTS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY=S3_SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        FACEPIPE_S3_ENDPOINTS=f"http://127.0.0.1:{port}",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def facepipe_server(home: Path, command: str, ready, **env_vars: str):
    """`facepipe COMMAND --port P` (ui, serve) on `home` and a free loopback port, its output in
    `home/COMMAND.log`; yields its URL once `ready(url)` says so, and stops its process group after.
    A port taken between finding it free and the server binding it (another xdist worker, another
    test run on the machine) is tried again on another."""
    tries = 3
    for _ in range(tries):
        server, url, log_path = _start_server(home, command, env_vars)
        try:
            deadline = time.time() + 120
            while not _answers(ready, url):
                if server.poll() is not None and "address already in use" in log_path.read_text().lower():
                    break
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"facepipe {command} did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            else:
                yield url
                return
        finally:
            _stop_server(server)
    raise RuntimeError(f"facepipe {command} found no free port in {tries} tries")


def _start_server(home: Path, command: str, env_vars: dict) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    env = {**os.environ, "FACEPIPE_HOME": str(home), **env_vars}
    env.pop("DAGSTER_HOME", None)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / f"{command}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "facepipe.cli", command, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return server, f"http://127.0.0.1:{port}", log_path


def _stop_server(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def _answers(ready, url: str) -> bool:
    try:
        return ready(url)
    except Exception:  # not listening yet, or not ready to answer (urllib's, httpx's, Dagster's errors)
        return False


@contextmanager
def facepipe_ui(home: Path, daemons=("QUEUED_RUN_COORDINATOR",), **env_vars: str):
    """`facepipe ui` (dagster dev: webserver + daemon) on `home`; yields its URL once the webserver
    answers and the daemons named in `daemons` have sent a heartbeat."""
    from dagster import DagsterInstance

    def ready(url: str) -> bool:
        urllib.request.urlopen(f"{url}/server_info", timeout=2)
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            return set(daemons) <= set(instance.get_daemon_heartbeats())

    with facepipe_server(home, "ui", ready, **env_vars) as url:
        yield url


class WebhookReceiver:
    """An HTTP server on a loopback port that records every JSON POST; paths in `fail_once`
    answer 503 to their first request (a receiver briefly down)."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        self.fail_once = {"/flaky"}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.received.append((self.path, body))
                status = 503 if self.path in receiver.fail_once else 200
                receiver.fail_once.discard(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path):
        return [body for p, body in self.received if p == path]


@pytest.fixture
def receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()
