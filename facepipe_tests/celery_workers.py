"""A real Redis server and real `facepipe worker` processes for the Celery tests and the benchmark.

Redis is Debian's `redis-server` (`.ci/run` installs it), started on a free loopback port without
persistence and stopped after. Each worker is `facepipe worker` in its own process group, with its
own FACEPIPE_HOME (a stand-in for another machine), stopped with SIGTERM (Celery's warm shutdown)
and then killed with its pool processes if it lingers. A worker given `hidden` folders runs in its
own mount namespace (`unshare --mount`) with an empty tmpfs mounted over each: it really cannot see
them, as a worker on another machine cannot see this machine's folders.
"""

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why_no_redis() -> str | None:
    """Why no Redis server can be started here (the reason a test skips with), or None."""
    if shutil.which("redis-server") is None:
        return "Redis's server is not installed (Debian: apt-get install redis-server; .ci/run does it)"
    try:
        import dagster_celery  # noqa: F401
    except ImportError:
        return 'dagster-celery is not installed (pip install -e ".[celery]")'
    return None


def why_no_mount_namespace(folder: Path) -> str | None:
    """Why a worker cannot be started with folders hidden from it here (the reason a test skips
    with), or None: it takes `unshare --mount` and mounting a tmpfs (root, or CAP_SYS_ADMIN)."""
    if shutil.which("unshare") is None:
        return "util-linux's unshare is not installed"
    tried = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs tmpfs {shlex.quote(str(folder))}"],
        capture_output=True,
        text=True,
    )
    if tried.returncode != 0:
        return f"a mount namespace with a tmpfs is not permitted here: {tried.stderr.strip()}"
    return None


def _stop(process: subprocess.Popen, seconds: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            pass
    # the pool's processes are in the worker's process group: none outlives the test
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def redis_server():
    """A Redis server on a free loopback port; yields its URL (database 0)."""
    import redis

    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


@contextmanager
def facepipe_worker(
    home: Path,
    broker: str,
    name: str,
    queues=("dagster",),
    processes: int = 1,
    log: Path | None = None,
    env: dict | None = None,
    hidden: tuple[Path, ...] = (),
):
    """`facepipe worker` with FACEPIPE_HOME=home (and `env`), serving `queues`, until it says it is
    ready; the `hidden` folders (they must exist) are covered by an empty tmpfs in its own mount
    namespace."""
    log = log or home.with_name(f"{home.name}-{name}.log")
    env = {**os.environ, "FACEPIPE_HOME": str(home), "FACEPIPE_CELERY_BROKER": broker, **(env or {})}
    env.pop("DAGSTER_HOME", None)
    args = [sys.executable, "-m", "facepipe.cli", "worker", "--name", name, "--processes", str(processes)]
    for queue in queues:
        args += ["--queue", queue]
    if hidden:
        mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(folder))}" for folder in hidden)
        args = ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh", *args]
    with open(log, "w") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "ready." not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"facepipe worker {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        _stop(process)


@contextmanager
def workers(broker: str, specs: list[tuple[Path, str, tuple]]):
    """Several workers at once: (home, name, queues) each."""
    with ExitStack() as stack:
        yield [stack.enter_context(facepipe_worker(home, broker, name, queues)) for home, name, queues in specs]
