"""The Dagster instance on PostgreSQL vs SQLite: what the server costs to start, and what a digest
and a history read cost on each. Prints figures.

    .venv/bin/python benchmarks/instance_storage.py              # the 64 samples, 2 rounds (~4 min)
    .venv/bin/python benchmarks/instance_storage.py --rounds 3

A throwaway PostgreSQL server (Debian's package, as the tests start it: facepipe_tests/postgres_server.py)
on a loopback port, timed from initdb to accepting connections. Then, alternating so that a busy
moment of the shared machine hits both alike, a `facepipe digest --json --workers 2` of the samples
on a fresh FACEPIPE_HOME on SQLite and on a fresh database on PostgreSQL, and `facepipe digests list`
on each home afterwards. The fastest round counts (the least disturbed); the load average is printed.
Digest times are the run's duration as `facepipe digest` reports it (run start to end) and the
command's wall time (with interpreter start-up and instance opening).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facepipe_tests.postgres_server import postgres_server, why_not_available

SAMPLES = REPO.parent / "shared" / "faces" / "images"


def facepipe(home: Path, env: dict, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "facepipe.cli", *args],
        env={**env, "FACEPIPE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    reason = why_not_available()
    if reason:
        sys.exit(reason)
    base = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "FACEPIPE_POSTGRES_URL")}
    base.setdefault("DEEPFACE_HOME", tempfile.mkdtemp(prefix="deepface-"))
    work = Path(tempfile.mkdtemp(prefix="instance-storage-"))
    with postgres_server() as server:
        print(f"PostgreSQL server (initdb + start, {server.bin.parent.name}): {server.start_seconds:.2f} s")
        results = {"sqlite": [], "postgres": []}
        for round_ in range(args.rounds):
            for storage in ("sqlite", "postgres"):
                env = dict(base)
                if storage == "postgres":
                    env["FACEPIPE_POSTGRES_URL"] = server.create_database("bench_" + uuid.uuid4().hex[:8])
                home = work / f"{storage}{round_}"
                wall, out = facepipe(home, env, "digest", str(SAMPLES), "--group", "bench", "--workers", "2", "--json")
                summary = json.loads(out)
                assert summary["status"] == "completed", summary
                listed, _ = facepipe(home, env, "digests", "list", "--json")
                results[storage].append((summary["duration_seconds"], wall, listed))
                print(
                    f"round {round_ + 1} {storage:>8}: run {summary['duration_seconds']:.1f} s, "
                    f"command {wall:.1f} s, `digests list` {listed:.2f} s, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    print(f"\n{len(list(SAMPLES.iterdir()))} photos, 2 workers, {os.cpu_count()} cores; fastest of {args.rounds}:")
    for storage, rows in results.items():
        run, wall, listed = (min(column) for column in zip(*rows, strict=True))
        print(f"  {storage:>8}: run {run:.1f} s, command {wall:.1f} s, `digests list` {listed:.2f} s")


if __name__ == "__main__":
    main()
