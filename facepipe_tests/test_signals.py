"""`facepipe ui`, `serve` and `worker` stop on a SIGTERM sent to their own process (`kill PID`, as a
process manager or an operator sends it), within 10 s, and leave none of their children behind.

Each is started as a shell starts a background job (`facepipe ui &`, nohup): with SIGINT ignored,
which `dagster dev` inherited and which made it ignore SIGTERM too. The other tests stop their
servers by signalling the whole process group, which hid that.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from facepipe_tests.celery_workers import free_port, redis_server, why_no_redis

pytestmark = pytest.mark.e2e

STOP_SECONDS = 10


def _background_job(home: Path, args: list[str], log: Path, **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "FACEPIPE_HOME": str(home), **env_vars}
    env.pop("DAGSTER_HOME", None)
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "facepipe.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # SIGINT ignored, as in a shell's background job
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )


def _wait_until(ready, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if ready():
                return
        except Exception:  # not listening yet
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_stops_on_sigterm(process: subprocess.Popen, log: Path, children_expected: bool = True) -> None:
    children = psutil.Process(process.pid).children(recursive=True)
    assert children or not children_expected, "the command started no child process: nothing to check"
    os.kill(process.pid, signal.SIGTERM)  # the command's own process only, as `kill PID` does
    try:
        process.wait(STOP_SECONDS)
        _, alive = psutil.wait_procs(children, timeout=0.5)
        running = [p for p in alive if _running(p)]  # a zombie has ended: nobody has reaped it yet
        assert not running, f"outlived it: {[' '.join(p.cmdline())[:120] for p in running]}"
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {STOP_SECONDS} s after SIGTERM:\n{log.read_text()[-2000:]}") from None
    finally:
        for child in [process, *children]:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()


def test_ui_starts_without_a_warning_and_stops_on_sigterm_with_its_webserver_daemon_and_code_server(tmp_path):
    port = free_port()
    log = tmp_path / "ui.log"
    process = _background_job(tmp_path / "home", ["ui", "--port", str(port)], log)
    _wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2), process, log)
    # a first-time user reads Dagster's INFO lines, not its note that `dg dev` supersedes `dagster dev`
    assert "Warning" not in log.read_text(), log.read_text()
    _assert_stops_on_sigterm(process, log)


def test_serve_stops_on_sigterm(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    process = _background_job(tmp_path / "home", ["serve", "--port", str(port)], log)
    _wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2), process, log)
    _assert_stops_on_sigterm(process, log, children_expected=False)


@pytest.mark.skipif(why_no_redis() is not None, reason=str(why_no_redis()))
def test_worker_stops_on_sigterm_with_its_pool(tmp_path):
    log = tmp_path / "worker.log"
    with redis_server() as broker:
        process = _background_job(
            tmp_path / "home",
            ["worker", "--name", "sigterm", "--processes", "2"],
            log,
            FACEPIPE_CELERY_BROKER=broker,
        )
        _wait_until(lambda: "ready." in log.read_text(), process, log)
        _assert_stops_on_sigterm(process, log)
