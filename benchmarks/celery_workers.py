"""A digest on Celery workers (dagster-celery, a Redis broker): 1 worker vs 2 workers of 1 process
each, against this machine's multiprocess executor. Prints figures.

    .venv/bin/python benchmarks/celery_workers.py                  # 300 photos (~10 min on 2 cores)
    .venv/bin/python benchmarks/celery_workers.py --images 1000    # ~30 min: docs/measurements/speed.md's figures

The workload is benchmarks/digest_speed.py's (the samples and copies made from them, built once in
--workdir). Each stage is `facepipe digest --json` on a fresh FACEPIPE_HOME, one after another:

  multiprocess2  today's executor, `--workers 2` (no broker): the reference
  celery1        one `facepipe worker --processes 1` serving both queues, `--workers 1`
  celery2        two workers of 1 process each, `--workers 2`: the launching machine's serves both
                 queues, the other (its own FACEPIPE_HOME, standing in for another machine) only
                 the chunks' queue

Redis (Debian's redis-server) and the workers are started here on loopback, as the tests start
them (facepipe_tests/celery_workers.py), and stopped after each stage. On one machine of 2 cores,
2 workers can at best be 2x one: the gain is bounded by the cores, not by Celery; on many machines
each worker brings its own. Times are the Dagster run's duration (start to end), as digest_speed.py's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.digest_speed import build_workload, machine
from facepipe.settings import DEFAULT_QUEUE, STORE_QUEUE
from facepipe_tests.celery_workers import redis_server, why_no_redis, workers

STAGES = ("multiprocess2", "celery1", "celery2")


def run_facepipe(home: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    """`facepipe ARGS` on FACEPIPE_HOME=home, without a time limit (1,000 photos on 1 worker take ~14 min)."""
    full_env = {**os.environ, "FACEPIPE_HOME": str(home), **env}
    full_env.pop("DAGSTER_HOME", None)
    out = subprocess.run([sys.executable, "-m", "facepipe.cli", *args], env=full_env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"facepipe {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


def run_stage(stage: str, folder: Path, homes: Path, broker: str) -> dict:
    here, there = homes / f"{stage}-here", homes / f"{stage}-there"
    count = int(stage[-1])
    args = ("digest", str(folder), "--group", "bench", "--workers", str(count), "--json")
    if stage.startswith("multiprocess"):
        out = run_facepipe(here, *args, env={"FACEPIPE_CELERY_BROKER": ""})
    else:
        specs = [(here, "here", (DEFAULT_QUEUE, STORE_QUEUE)), (there, "there", (DEFAULT_QUEUE,))][:count]
        with workers(broker, specs):
            out = run_facepipe(here, *args, env={"FACEPIPE_CELERY_BROKER": broker})
    summary = json.loads(out.stdout)
    if summary["status"] != "completed":
        raise RuntimeError(f"{stage}: digest {summary['status']}: {summary['errors']}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300, help="photos in the workload (64: the samples)")
    parser.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of {','.join(STAGES)}")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "facepipe-bench")
    args = parser.parse_args()
    reason = why_no_redis()
    if reason:
        sys.exit(reason)
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = build_workload(args.images, args.workdir)
    homes = Path(tempfile.mkdtemp(prefix="celery-", dir=args.workdir))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = {}
    with redis_server() as broker:
        for stage in args.only.split(","):
            print(f"- {stage} ...", file=sys.stderr, end=" ", flush=True)
            started = time.perf_counter()
            summary = run_stage(stage, folder, homes, broker)
            results[stage] = {**summary, "wall": time.perf_counter() - started, "load": os.getloadavg()[0]}
            print(f"{summary['duration_seconds']:.1f} s", file=sys.stderr, flush=True)

    print(f"{time.strftime('%Y-%m-%d')}, {args.images} photos, {machine()}, load average before: {load}")
    print("| run | photos | faces stored | time (run) | photos/s | wall (workers' start included) | load after |")
    print("|---|---|---|---|---|---|---|")
    for stage, r in results.items():
        print(
            f"| {stage} | {r['images_done']} | {r['faces_stored']} | {r['duration_seconds']:.1f} s "
            f"| {r['images_done'] / r['duration_seconds']:.2f} | {r['wall']:.1f} s | {r['load']:.1f} |"
        )
    if "celery1" in results and "celery2" in results:
        ratio = results["celery1"]["duration_seconds"] / results["celery2"]["duration_seconds"]
        print(f"2 workers vs 1 worker: {ratio:.2f}x (at most 2x on 2 cores)")
    if "multiprocess2" in results and "celery2" in results:
        ratio = results["celery2"]["duration_seconds"] / results["multiprocess2"]["duration_seconds"]
        print(f"Celery, 2 workers / multiprocess executor, 2 processes: {ratio:.2f}x the time")


if __name__ == "__main__":
    main()
