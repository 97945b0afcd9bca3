"""How fast a digest runs, against the seed's way and against the model floor. Prints figures.

    .venv/bin/python benchmarks/digest_speed.py                  # 1,000 photos (~13 min on 2 cores)
    .venv/bin/python benchmarks/digest_speed.py --images 64      # the 64 samples (~3 min)
    .venv/bin/python benchmarks/digest_speed.py --images 10000 --only digest2,redigest   # once, not in CI

For the same photos and the dlib profile, one after another, each in its own child process:

  seed1, seed2   the seed's way, `DeepFace.represent(path, model_name="Dlib", detector_backend="dlib")`
                 per photo, in one thread and in a pool of 2 processes each with its own models (a
                 pool of threads sharing dlib's models segfaults). It runs at ~0.4 photos/s, so it
                 runs on an evenly spread subset (--seed-images) and is compared per photo.
  floor1, floor2 the model floor: the engine's bare loop (read, decode, detect, embed; no Dagster, no
                 Qdrant) in 1 process, and in 2 processes taking small batches (models loaded before
                 the clock starts).
  digest1, digest2  `facepipe digest --json` with 1 and 2 workers, each on a fresh FACEPIPE_HOME.
  redigest       `facepipe digest` again on digest2's home: the folder is unchanged.

The workload includes group photos whose faces are known (one in ten photos; made as
benchmarks/detection_recall.py makes them: 2 to 12 MP, 6 to 40 faces of 32 to 160 px each), and
every stage reports its recall on them: the share of their faces it found (IoU >= 0.3), on all of
them and on those in the seed's subset, so that speeds are compared at stated recall.

Digest times are the Dagster run's duration (run start to end, as `facepipe digest` reports it; the
CLI's own interpreter start-up is printed apart). The workload beyond the 64 samples is made of
copies of them resized (1/1.5 to 1.5 times, as many larger as smaller, so sizes spread like the
samples'), cropped, mirrored and recompressed, written once to --workdir and reused; beyond 1,000
photos, copies of those with a few bytes appended (another hash, the same pixels). With --repeat N
each stage runs N times, back to back, and the fastest counts (the machine is shared: the fastest
run is the one least disturbed); the load average after each stage is printed with it.
"""

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "faces" / "images"
STAGES = ("seed1", "seed2", "floor1", "floor2", "digest1", "digest2", "redigest")
DERIVED_BEFORE_REUSE = 1000
WORKLOAD_VERSION = "v4"  # bump when the way copies are made changes (v4: the samples copied, not linked)
GROUP_EVERY = 10  # one photo in ten is a group photo with known faces
TRUTH = ".truth.json"  # their faces, by file name (a dot file: the listing skips it)
FLOOR_BATCH = 8  # photos per task in the 2-process floor: small, so both processes end together
SEED_DETECTOR, SEED_MODEL = "dlib", "Dlib"


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------- workload


def _derive(args) -> None:
    """Write photo `index` of the workload: a resized, cropped, maybe mirrored, recompressed sample."""
    import cv2
    import numpy as np

    index, source, target = args
    rng = np.random.default_rng(index)
    image = cv2.imdecode(np.fromfile(source, np.uint8), cv2.IMREAD_COLOR)  # EXIF orientation applied
    assert image is not None, f"cannot decode {source}"
    height, width = image.shape[:2]
    top, bottom, left, right = (rng.uniform(0, 0.08, 4) * [height, height, width, width]).astype(int)
    image = image[top : height - bottom, left : width - right]
    scale = 1.5 ** rng.uniform(-1, 1)  # as many copies larger than their sample as smaller
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])
    assert ok
    Path(target).write_bytes(data.tobytes())


def build_workload(count: int, workdir: Path) -> Path:
    """A folder of `count` photos: the samples themselves, or samples and copies made from them."""
    samples = sorted(p for p in SAMPLES.iterdir() if not p.name.startswith("."))
    if count == len(samples):
        return SAMPLES
    folder = workdir / f"photos-{count}-{WORKLOAD_VERSION}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    # names in a hashed order, so that no chunk gets every copy of the same few samples
    names = [f"{hashlib.sha1(str(i).encode()).hexdigest()[:8]}_{i:05d}" for i in range(count)]
    derived = []
    for i in range(min(count, DERIVED_BEFORE_REUSE)):
        if (i + 1) % GROUP_EVERY == 0:
            continue  # a group photo (_group_photos)
        source = samples[i % len(samples)]
        if i < len(samples):  # a copy: a digest does not follow links
            shutil.copyfile(source, folder / f"{names[i]}_{source.name}")
        else:
            derived.append((i, str(source), str(folder / f"{names[i]}_{source.stem}.jpg")))
    if derived:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
            pool.map(_derive, derived, chunksize=16)
    truth = _group_photos(folder, names[: min(count, DERIVED_BEFORE_REUSE)])
    (folder / TRUTH).write_text(json.dumps(truth))
    for i in range(DERIVED_BEFORE_REUSE, count):
        _, _, made = derived[(i - DERIVED_BEFORE_REUSE) % len(derived)]
        data = Path(made).read_bytes() + f"facepipe-bench copy {i}".encode()  # after the JPEG's end
        Path(folder / f"{names[i]}_copy.jpg").write_bytes(data)
    (folder / ".complete").write_text("")
    print(f"  built {count} photos in {folder} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return folder


def _group_photos(folder: Path, names: list[str]) -> dict[str, list]:
    """Write a group photo with known faces under each name; their boxes by file name."""
    import cv2
    import numpy as np

    from benchmarks.detection_recall import group, sources
    from facepipe.engine.profiles import load_profile

    rng = np.random.default_rng(2026)
    people = sources(load_profile("dlib"))
    truth = {}
    for name in names[GROUP_EVERY - 1 :: GROUP_EVERY]:
        width = int(np.sqrt(rng.uniform(2, 12) * 1e6 * 1.5))
        low = rng.uniform(32, 100)
        pixels, faces = group(people, width, int(width / 1.5), (low, 1.6 * low), rng, most=int(rng.integers(6, 41)))
        ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (folder / f"{name}_group.jpg").write_bytes(data.tobytes())
        truth[f"{name}_group.jpg"] = [list(map(float, box)) for box in faces]
    return truth


def load_truth(folder: Path) -> dict[str, list]:
    path = folder / TRUTH
    return json.loads(path.read_text()) if path.exists() else {}


def recall(truth: dict[str, list], found: dict[str, list], paths: list[str]) -> list[int]:
    """[faces found, faces] over the photos of `truth` among `paths`; `found` has boxes by file name."""
    from benchmarks.detection_recall import match

    hits = total = 0
    for name in {Path(p).name for p in paths} & set(truth):
        hits += sum(match(truth[name], found.get(name, []))[0])
        total += len(truth[name])
    return [hits, total]


def list_photos(folder: Path) -> list[str]:
    from facepipe.engine.listing import list_images

    return [f.path for f in list_images(folder)]


def spread_subset(paths: list[str], count: int) -> list[str]:
    if count >= len(paths):
        return paths
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


# ---------------------------------------------------------------- stages, each in a child process


def _seed_represent(path: str) -> tuple[str, list]:
    """The photo's file name and the boxes (x0, y0, x1, y1) of the faces the seed's way embedded."""
    from deepface import DeepFace

    try:
        faces = DeepFace.represent(path, model_name=SEED_MODEL, detector_backend=SEED_DETECTOR)
    except ValueError:  # "Face could not be detected": the seed's way raises for a photo without one
        faces = []
    areas = [f["facial_area"] for f in faces]
    return Path(path).name, [(a["x"], a["y"], a["x"] + a["w"], a["y"] + a["h"]) for a in areas]


def _seed_warm(barrier) -> None:
    from deepface import DeepFace

    from facepipe.engine.weights import link_bundled_dlib_weights

    link_bundled_dlib_weights()  # the weights deepface would otherwise download
    DeepFace.build_model(SEED_MODEL)
    DeepFace.build_model(SEED_DETECTOR, task="face_detector")
    if barrier is not None:
        barrier.wait()


def _floor_warm(barrier) -> None:
    from facepipe.engine.profiles import load_profile

    load_profile("dlib")
    if barrier is not None:
        barrier.wait()


def _floor_batch(paths: list[str], processes: int = 1) -> tuple[int, dict, dict[str, float], float]:
    """Photos done, face boxes by file name, seconds per stage, peak memory; `processes` run it at once."""
    from facepipe.engine.faces import faces_in_chunk
    from facepipe.engine.planning import ImageTask

    result = faces_in_chunk([ImageTask(p) for p in paths], "dlib", 0.5, processes=processes)
    boxes = {
        Path(r.path).name: [(x, y, x + w, y + h) for x, y, w, h in (f.box for f in r.faces)] for r in result.images
    }
    return len(result.images), boxes, result.seconds, peak_rss_mb()


def _in_pool(warm, work, items, processes: int):
    """Run `work` over `items` in `processes` spawned processes, timed once every one has warmed up."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    with context.Pool(processes, initializer=warm, initargs=(barrier,)) as pool:
        pool.map(_noop, range(processes), chunksize=1)  # returns once the barrier let all through
        started = time.perf_counter()
        results = list(pool.imap_unordered(work, items, chunksize=1))
        return results, time.perf_counter() - started


def _noop(_):
    return None


def run_stage(stage: str, paths: list[str]) -> dict:
    if stage == "seed1":
        _seed_warm(None)
        started = time.perf_counter()
        boxes = dict(_seed_represent(p) for p in paths)
        return {
            "images": len(paths),
            "faces": sum(map(len, boxes.values())),
            "seconds": time.perf_counter() - started,
            "peak_rss_mb": [peak_rss_mb()],
            "boxes": boxes,
        }
    if stage == "seed2":
        results, seconds = _in_pool(_seed_warm, _seed_represent, paths, 2)
        boxes = dict(results)
        return {"images": len(paths), "faces": sum(map(len, boxes.values())), "seconds": seconds, "boxes": boxes}
    if stage == "floor1":
        _floor_warm(None)
        started = time.perf_counter()
        images, boxes, stages, rss = _floor_batch(paths)
        return {
            "images": images,
            "faces": sum(map(len, boxes.values())),
            "seconds": time.perf_counter() - started,
            "stages": stages,
            "peak_rss_mb": [rss],
            "boxes": boxes,
        }
    if stage == "floor2":
        batches = [paths[i : i + FLOOR_BATCH] for i in range(0, len(paths), FLOOR_BATCH)]
        results, seconds = _in_pool(_floor_warm, partial(_floor_batch, processes=2), batches, 2)
        stages = {}
        boxes = {}
        for _, batch_boxes, batch_stages, _ in results:
            boxes.update(batch_boxes)
            for key, value in batch_stages.items():
                stages[key] = stages.get(key, 0.0) + value
        stages.pop("load_models", None)
        return {
            "images": sum(r[0] for r in results),
            "faces": sum(map(len, boxes.values())),
            "seconds": seconds,
            "stages": stages,
            "peak_rss_mb": [max(r[3] for r in results)],
            "boxes": boxes,
        }
    raise ValueError(stage)


def child_stage(stage: str, paths: list[str]) -> dict:
    """Run one measuring stage in a fresh interpreter, so each has its own memory and models."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(paths, f)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--stage", stage, "--paths", f.name], capture_output=True, text=True, cwd=REPO
        )
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- digests through the CLI


def digest(home: Path, folder: Path, workers: int) -> dict:
    env = {**os.environ, "FACEPIPE_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "facepipe.cli",
            "digest",
            str(folder),
            "--group",
            "bench",
            "--workers",
            str(workers),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - started
    if not out.stdout.strip():
        raise RuntimeError(f"facepipe digest printed no summary:\n{out.stderr[-3000:]}")
    summary = json.loads(out.stdout)
    if summary["status"] != "completed":
        raise RuntimeError(f"digest {summary['status']}: {summary['errors']}")
    return {
        **run_details(home, summary["run_id"]),
        "summary": summary,
        "wall": wall,
        "seconds": summary["duration_seconds"],
        "images": summary["images_done"],
        "faces": summary["faces_stored"],
        "boxes": stored_boxes(home),
    }


def stored_boxes(home: Path) -> dict[str, list]:
    """The boxes of the faces the digest stored, by file name."""
    from facepipe.store import FaceStore

    boxes: dict[str, list] = {}
    with FaceStore.open(path=home / "qdrant") as store:
        for point in store.scroll_faces("bench", "dlib"):
            area = point.payload["facial_area"]
            boxes.setdefault(Path(point.payload["image_path"]).name, []).append(
                (area["x"], area["y"], area["x"] + area["w"], area["y"] + area["h"])
            )
    return boxes


def run_details(home: Path, run_id: str) -> dict:
    """Per-step timings, per-stage seconds and per-worker peak memory, from the run's event log."""
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.from_config(str(home / "dagster"))
    steps: dict[str, dict] = {}
    chunks: list[dict[str, Any]] = []
    stages: dict[str, float] = {}
    store_rss, run_start = None, None
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind == DagsterEventType.RUN_START:
            run_start = entry.timestamp
        if entry.step_key and kind in (
            DagsterEventType.STEP_WORKER_STARTING,
            DagsterEventType.STEP_START,
            DagsterEventType.STEP_SUCCESS,
        ):
            steps.setdefault(entry.step_key, {})[kind.value] = entry.timestamp
        if kind == DagsterEventType.ASSET_OBSERVATION:
            metadata: dict[str, Any] = {
                k: v.value for k, v in event.asset_observation_data.asset_observation.metadata.items()
            }
            if "worker_pid" in metadata:
                chunks.append(metadata)
        if kind == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.step_materialization_data.materialization
            metadata = {k: v.value for k, v in materialization.metadata.items()}
            if materialization.asset_key.to_user_string() == "faces":
                stages = metadata.get("seconds_per_stage", {})
            if "store_peak_rss_mb" in metadata:
                store_rss = metadata["store_peak_rss_mb"]
    instance.dispose()
    startups = [
        s["STEP_START"] - s["STEP_WORKER_STARTING"]
        for s in steps.values()
        if "STEP_START" in s and "STEP_WORKER_STARTING" in s
    ]
    first = min((s.get("STEP_WORKER_STARTING", 1e18) for s in steps.values()), default=None)
    chunk_steps = [s for key, s in steps.items() if key.startswith("digest.extract_faces_in_chunk")]
    return {
        "stages": stages,
        "chunks": len(chunks),
        "peak_rss_mb": sorted(c["worker_peak_rss_mb"] for c in chunks),
        "store_peak_rss_mb": store_rss,
        "step_startup_seconds": sum(startups) / len(startups) if startups else None,
        "chunk_step_seconds": sorted(s["STEP_SUCCESS"] - s["STEP_START"] for s in chunk_steps if "STEP_SUCCESS" in s),
        "run_start_to_first_step": (first - run_start) if first and run_start else None,
        "first_step_startup": next(
            (
                s["STEP_START"] - s["STEP_WORKER_STARTING"]
                for k, s in steps.items()
                if k == "digest.list_images" and "STEP_START" in s
            ),
            None,
        ),
    }


# ---------------------------------------------------------------- report


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()}, Python {platform.python_version()}"


def per_image(r: dict) -> float:
    return r["seconds"] / r["images"]


def report(results: dict, count: int, seed_count: int, load: str) -> str:
    lines = []

    def share(found: list[int] | None) -> str:
        return f"{found[0] / found[1]:.3f} ({found[0]}/{found[1]})" if found and found[1] else "-"

    def rate(name, label):
        r = results.get(name)
        if r:
            runs = ", ".join(f"{x:.1f}" for x in r.get("runs", []))
            lines.append(
                f"| {label} | {r['images']} | {r['seconds']:.1f} s | {r['images'] / r['seconds']:.2f} "
                f"| {r['faces'] / r['seconds']:.2f} | {share(r.get('recall'))} | {runs} | {r.get('load', 0):.1f} |"
            )

    def ratio(label, slow, fast, target, higher_is_better=True):
        a, b = results.get(slow), results.get(fast)
        if not (a and b):
            return
        value = per_image(a) / per_image(b)
        ok = value >= target if higher_is_better else value <= target
        sign = "≥" if higher_is_better else "≤"
        lines.append(f"| {label} | **{value:.2f}×** | {sign} {target}× | {'yes' if ok else 'NO'} |")

    def against_seed(label, seed, ours):
        a, b = results.get(seed), results.get(ours)
        if not (a and b):
            return
        value = per_image(a) / per_image(b)
        # recall on the same photos: the group photos of the seed's subset
        mine, theirs = b["recall_seed_subset"], a["recall_seed_subset"]
        at_least = not theirs[1] or mine[0] / mine[1] >= theirs[0] / theirs[1]
        lines.append(
            f"| {label} | **{value:.2f}×** at recall {share(mine)} vs {share(theirs)} | faster, recall "
            f"at least as good | {'yes' if value > 1 and at_least else 'NO'} |"
        )

    lines += [
        f"### Digest speed: {count} photos, dlib profile ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine()}; load average before the run: {load}.",
        "",
        "| ratio (per photo, same run) | measured | target | holds |",
        "|---|---|---|---|",
    ]
    against_seed("full digest (2 workers) vs the seed's way, 1 thread", "seed1", "digest2")
    against_seed("full digest (2 workers) vs the seed's way, 2 processes", "seed2", "digest2")
    against_seed("engine loop, 1 process vs the seed's way, 1 thread", "seed1", "floor1")
    ratio("Dagster digest / bare engine loop, 1 process", "digest1", "floor1", 1.2, False)
    ratio("Dagster digest / bare engine loop, 2 processes", "digest2", "floor2", 1.2, False)
    ratio("2 workers vs 1 worker", "digest1", "digest2", 1.8)
    if results.get("redigest") and results.get("digest2"):
        value = results["redigest"]["seconds"] / results["digest2"]["seconds"]
        lines.append(
            f"| re-digest of the unchanged folder / first digest | **{value:.1%}** | ≤ 5% | "
            f"{'yes' if value <= 0.05 else 'NO'} |"
        )
    lines += [
        "",
        "| run | photos | time | photos/s | faces/s | recall on group photos | every run (s) | load after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rate("seed1", f"seed's way, 1 thread ({seed_count}-photo subset)")
    rate("seed2", f"seed's way, 2 processes ({seed_count}-photo subset)")
    rate("floor1", "engine loop, 1 process")
    rate("floor2", "engine loop, 2 processes")
    rate("digest1", "`facepipe digest --workers 1` (run)")
    rate("digest2", "`facepipe digest --workers 2` (run)")
    if results.get("redigest"):
        r = results["redigest"]
        runs = ", ".join(f"{x:.1f}" for x in r.get("runs", []))
        lines.append(
            f"| re-digest, unchanged (run) | {r['summary']['images_skipped']} skipped | "
            f"{r['seconds']:.1f} s | | | | {runs} | {r.get('load', 0):.1f} |"
        )
    lines += ["", "| run | time per stage, summed over processes (s) | peak memory per worker (MB) |", "|---|---|---|"]
    for name in ("floor1", "floor2", "digest1", "digest2", "redigest"):
        r = results.get(name)
        if not r:
            continue
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.get("stages", {}).items())
        rss = r.get("peak_rss_mb") or []
        memory = f"{min(rss):.0f} to {max(rss):.0f}" if rss else "-"
        if r.get("store_peak_rss_mb"):
            memory += f" (store step {r['store_peak_rss_mb']:.0f})"
        lines.append(f"| {name} | {stages or '-'} | {memory} |")
    details = []
    for name in ("digest1", "digest2", "redigest"):
        r = results.get(name)
        if r and r.get("step_startup_seconds") is not None:
            chunk_seconds = r["chunk_step_seconds"]
            spread = f", chunk steps {min(chunk_seconds):.1f} to {max(chunk_seconds):.1f} s" if chunk_seconds else ""
            details.append(
                f"- {name}: {r['chunks']} chunks{spread}; step start-up {r['step_startup_seconds']:.2f} s "
                f"on average (the first, which starts the forkserver and preloads the models, "
                f"{r['first_step_startup']:.2f} s); CLI wall time {r['wall']:.1f} s for a "
                f"{r['seconds']:.1f} s run"
            )
    if details:
        lines += ["", *details]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="photos in the workload (64: the samples)")
    parser.add_argument("--seed-images", type=int, default=30, help="photos the seed's way runs on")
    parser.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages of {','.join(STAGES)}")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "facepipe-bench",
        help="where the workload is built once and the digests keep their data",
    )
    parser.add_argument("--repeat", type=int, default=1, help="run each stage this many times, keep the fastest")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    if args.stage:  # a child process measuring one stage
        print(json.dumps(run_stage(args.stage, json.loads(Path(args.paths).read_text()))))
        return

    stages = [s for s in args.only.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = build_workload(args.images, args.workdir)
    paths = list_photos(folder)
    truth = load_truth(folder)
    # the seed's subset: evenly spread, with group photos in the same share as the workload
    groups = [p for p in paths if Path(p).name in truth]
    others = [p for p in paths if Path(p).name not in truth]
    seed_groups = round(args.seed_images * len(groups) / len(paths))
    seed_paths = sorted(spread_subset(groups, seed_groups) + spread_subset(others, args.seed_images - seed_groups))
    results: dict[str, dict] = {}
    homes = Path(tempfile.mkdtemp(prefix="homes-", dir=args.workdir))
    try:
        for stage in stages:
            for attempt in range(args.repeat):
                print(f"- {stage} ...", file=sys.stderr, end=" ", flush=True)
                if stage.startswith(("seed", "floor")):
                    result = child_stage(stage, seed_paths if stage.startswith("seed") else paths)
                elif stage in ("digest1", "digest2"):
                    home = homes / f"{stage}-{attempt}"
                    result = {**digest(home, folder, int(stage[-1])), "home": home}
                else:  # redigest: on the home of the fastest first digest with 2 workers
                    if "digest2" not in results:
                        results["digest2"] = {**digest(homes / "digest2", folder, 2), "home": homes / "digest2"}
                    result = digest(results["digest2"]["home"], folder, 2)
                result["load"] = os.getloadavg()[0]
                if stage != "redigest":
                    found = result.pop("boxes")
                    result["recall"] = recall(truth, found, seed_paths if stage.startswith("seed") else paths)
                    result["recall_seed_subset"] = recall(truth, found, seed_paths)
                runs = [*results.get(stage, {}).get("runs", []), round(result["seconds"], 1)]
                print(f"{result['seconds']:.1f} s (load {result['load']:.1f})", file=sys.stderr, flush=True)
                if stage not in results or result["seconds"] <= results[stage]["seconds"]:
                    results[stage] = result
                results[stage]["runs"] = runs
    finally:
        shutil.rmtree(homes, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(report(results, len(paths), len(seed_paths), load))


if __name__ == "__main__":
    main()
