"""The face store at 10k, 100k and 1M faces: Qdrant Edge (the embedded default) beside
qdrant-client's local mode (the embedded store before it), measured in the same run.

    .venv/bin/python benchmarks/store_scale.py                                  # 10k and 100k, ~30 min with local mode
    .venv/bin/python benchmarks/store_scale.py --sizes 1000000 --local-sizes ""  # 1M, once, outside CI

Faces are synthetic but shaped like facepipe's: identity-clustered unit vectors (128-d, same person
~0.04 apart in cosine distance, different people ~0.2, as dlib's are), two faces a photo, written
with FaceStore.write (the digest's own payloads and ledger rows), either all in one group or spread
over 100 groups. For each size, layout and backend it prints: write rate; then, each in a new
process: open time (open + first count), resident memory after the open, group-filtered search p50
and p95 (50 selfie-like queries, top 100 above cosine 0.92, as `facepipe search`), count; a full
`people cluster --full` of the group (time, peak memory); 1 % more faces, then the incremental
`people cluster` (time, peak memory); and the store steps of a digest of the 64 sample photos into
the group (list_images' ledger read + store_faces' write, each opening the store), beside the same
into an empty group of the same store and into an empty store. Local mode writes one fsync'd
SQLite transaction per point (~15 ms on this
machine's disk), so it is only run at `--local-sizes`.
"""

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES = ROOT.parent / "shared" / "faces" / "images"
DIM = 128
FACES_PER_PHOTO = 2
FACES_PER_PERSON = 20  # on average
QUERIES = 50


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def groups_of(layout: str) -> int:
    return 1 if layout == "one" else 100


def target_group(layout: str) -> str:
    return "big" if layout == "one" else "g000"


class Faces:
    """Deterministic identity-clustered faces: photo p is in group p % groups, each face a person of it."""

    def __init__(self, n_faces: int, layout: str, seed: int = 0):
        self.groups = groups_of(layout)
        self.layout = layout
        rng = np.random.default_rng(seed)
        n_people = max(n_faces // FACES_PER_PERSON, self.groups)
        mean = rng.standard_normal(DIM)
        mean /= np.linalg.norm(mean)
        centres = mean + 0.5 * rng.standard_normal((n_people, DIM)) / np.sqrt(DIM)  # people ~0.8 cosine apart
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        self.per_group = n_people // self.groups

    def group(self, photo: int) -> str:
        return "big" if self.groups == 1 else f"g{photo % self.groups:03d}"

    def face_vectors(self, rng, group_index: int, k: int) -> np.ndarray:
        people = group_index + self.groups * rng.integers(0, self.per_group, k)
        v = self.centres[people] + 0.2 * rng.standard_normal((k, DIM)).astype(np.float32) / np.sqrt(DIM)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def results(self, start: int, stop: int, prefix: str = "p"):
        """ImageResults of photos start..stop, by group."""
        from facepipe.engine.faces import Face, ImageResult

        rng = np.random.default_rng(start + 7919 * (prefix != "p"))
        by_group: dict[str, list] = {}
        for p in range(start, stop):
            vectors = self.face_vectors(rng, p % self.groups, FACES_PER_PHOTO)
            name = f"/photos/{prefix}{p:07d}.jpg"
            by_group.setdefault(self.group(p), []).append(
                ImageResult(
                    name,
                    size=200_000 + p,
                    mtime_ns=1_700_000_000_000_000_000 + p,
                    content_hash=f"{prefix}{p:063d}",
                    width=4000,
                    height=3000,
                    faces=[
                        Face(i, (100 * i, 200, 180, 180), [(1.0 * i, 2.0)] * 5, 0.9, vectors[i])
                        for i in range(len(vectors))
                    ],
                )
            )
        return by_group


def open_store(path: str, backend: str):
    from facepipe.store import FaceStore

    return FaceStore.open(path=path, backend=backend, migrate=False)


# ---------------------------------------------------------------- probes, each in its own process


def probe_write(a) -> dict:
    faces = Faces(a["n"], a["layout"])
    photos = a["n"] // FACES_PER_PHOTO
    start, cpu = time.time(), time.process_time()
    with open_store(a["path"], a["backend"]) as store:
        for first in range(0, photos, 2000):
            for group, results in faces.results(first, min(first + 2000, photos)).items():
                store.write(group, "dlib", results, run_id="bench", optimize=False)
        wall = time.time() - start
        indexing = time.time()
        store.optimize("dlib")  # what the end of a digest's store step does: HNSW on what it wrote
        indexing = time.time() - indexing
    return {
        "write_s": wall,
        "write_cpu_s": time.process_time() - cpu,
        "faces_per_s": a["n"] / wall,
        "index_s": indexing,
        "write_peak_mb": peak_mb(),
    }


def probe_open(a) -> dict:
    from facepipe.store import faces_collection, group_filter

    group = target_group(a["layout"])
    before = rss_mb()
    start = time.time()
    with open_store(a["path"], a["backend"]) as store:
        count = store.count_faces(group, "dlib")  # the first use loads what the open deferred
        opened = time.time() - start
        after = rss_mb()
        faces = Faces(a["n"], a["layout"])
        rng = np.random.default_rng(123)
        queries = faces.face_vectors(rng, 0, QUERIES)
        times, found = [], []
        for q in queries:
            t = time.time()
            found.append(len(store.nearest_faces(group, "dlib", q, limit=100, min_score=0.92)))
            times.append(time.time() - t)
        t = time.time()
        store.count(faces_collection("dlib"), group_filter(group))
        count_s = time.time() - t
    return {
        "open_s": opened,
        "rss_after_open_mb": after,
        "open_added_mb": after - before,
        "group_faces": count,
        "search_p50_ms": 1000 * float(np.percentile(times, 50)),
        "search_p95_ms": 1000 * float(np.percentile(times, 95)),
        "matches_per_query": float(np.mean(found)),
        "count_ms": 1000 * count_s,
    }


def probe_cluster(a) -> dict:
    from facepipe.people import update_people

    base = rss_mb()
    start = time.time()
    with open_store(a["path"], a["backend"]) as store:
        counts = update_people(store, target_group(a["layout"]), "dlib", full=a["full"])
    return {"cluster_s": time.time() - start, "cluster_peak_mb": peak_mb(), "cluster_base_mb": base, **counts}


def probe_grow(a) -> dict:
    """1 % more faces in the target group: new photos of its people."""
    faces = Faces(a["n"], a["layout"])
    group = target_group(a["layout"])
    photos = max(a["n"] // faces.groups // FACES_PER_PHOTO // 100, 1)  # of the group
    with open_store(a["path"], a["backend"]) as store:
        results = [
            r for g, rs in faces.results(0, photos * faces.groups, prefix="new").items() if g == group for r in rs
        ]
        store.write(group, "dlib", results, run_id="bench-grow")
    return {"grown_faces": sum(len(r.faces) for r in results)}


def probe_digest(a) -> dict:
    """The store steps of a digest of the 64 samples into a group, each opening the store as its
    step does: list_images' ledger lookup, store_chunk's write (one chunk: 64 < chunk_size), and
    store_faces' index, counts and checks (FaceStore.finish_digest, as the step calls it)."""
    from dataclasses import replace

    results = pickle.loads(Path(a["samples"]).read_bytes())
    group = a.get("group") or target_group(a["layout"])
    steps = {}
    start = time.time()
    with open_store(a["path"], a["backend"]) as store:
        digested = store.digested_images(group, "dlib", paths=[r.path for r in results])
    steps["list_step_s"] = time.time() - start
    start = time.time()
    with open_store(a["path"], a["backend"]) as store:
        store.write(
            group,
            "dlib",
            [replace(r, previously_digested=r.path in digested) for r in results],
            run_id="bench-digest",
            optimize=False,
        )
    steps["chunk_step_s"] = time.time() - start
    start = time.time()
    with open_store(a["path"], a["backend"]) as store:
        store.finish_digest(group, "dlib", run_id="bench-digest")
    steps["store_step_s"] = time.time() - start
    return {**steps, "digest_store_steps_s": sum(steps.values())}


PROBES = {
    "write": probe_write,
    "open": probe_open,
    "cluster": probe_cluster,
    "grow": probe_grow,
    "digest": probe_digest,
}


def run_probe(kind: str, **args) -> dict:
    out = subprocess.run([sys.executable, __file__, "_probe", kind, json.dumps(args)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run


def sample_results(work: Path) -> Path:
    """The 64 sample photos through the engine once; their ImageResults, pickled for the digest probes."""
    path = work / "samples.pickle"
    if not path.exists():
        from facepipe.engine.faces import faces_in_chunk
        from facepipe.engine.listing import list_images
        from facepipe.engine.planning import ImageTask

        result = faces_in_chunk([ImageTask(f.path, f.size, f.mtime_ns) for f in list_images(SAMPLES)], "dlib", 0.5)
        path.write_bytes(pickle.dumps(result.images))
    return path


def measure(work: Path, n: int, layout: str, backend: str, samples: Path, full_limit: int) -> dict:
    path = str(work / f"{backend}-{layout}-{n}")
    row = {"faces": n, "layout": layout, "backend": backend}
    row.update(run_probe("write", path=path, backend=backend, n=n, layout=layout))
    row.update(run_probe("open", path=path, backend=backend, n=n, layout=layout))
    group_size = n // groups_of(layout)
    if group_size <= full_limit:
        full = run_probe("cluster", path=path, backend=backend, n=n, layout=layout, full=True)
        row.update(
            {
                "full_s": full.get("cluster_s"),
                "full_peak_mb": full.get("cluster_peak_mb"),
                "people": full.get("people"),
                "full_error": full.get("error"),
            }
        )
    else:
        row["full_skipped"] = f"group of {group_size:,} faces > --full-limit {full_limit:,}"
    row.update(run_probe("grow", path=path, backend=backend, n=n, layout=layout))
    if "full_s" in row:
        inc = run_probe("cluster", path=path, backend=backend, n=n, layout=layout, full=False)
        row.update(
            {
                "incremental_s": inc.get("cluster_s"),
                "incremental_peak_mb": inc.get("cluster_peak_mb"),
                "incremental_error": inc.get("error"),
            }
        )
    fresh = run_probe("digest", path=path, backend=backend, n=n, layout=layout, samples=str(samples), group="fresh")
    row["empty_group_digest_s"] = fresh.get("digest_store_steps_s")
    row.update(run_probe("digest", path=path, backend=backend, n=n, layout=layout, samples=str(samples)))
    print(json.dumps(row), flush=True)
    return row


def fmt(value, spec=".2f", unit=""):
    return "" if value is None else f"{value:{spec}}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="faces in the store, comma-separated")
    parser.add_argument("--local-sizes", default="10000", help="the sizes also run on qdrant-client's local mode")
    parser.add_argument("--layouts", default="one,hundred", help="one group, and/or 100 groups")
    parser.add_argument("--full-limit", type=int, default=100_000, help="largest group given a full re-cluster")
    parser.add_argument("--work", help="folder for the stores (default: a temporary one, removed at the end)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="store_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"load average before the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} cores", flush=True)
    samples = sample_results(work)
    rows = []
    for backend in ("edge", "local"):
        empty = run_probe(
            "digest",
            path=str(work / f"{backend}-empty"),
            backend=backend,
            layout="one",
            samples=str(samples),
            group="sample",
        )
        print(json.dumps({"backend": backend, "empty_store_digest": empty}), flush=True)
        rows.append({"faces": 0, "layout": "empty store", "backend": backend, **empty})
    sizes = [int(s) for s in args.sizes.split(",") if s]
    local_sizes = {int(s) for s in args.local_sizes.split(",") if s}
    for n in sizes:
        for layout in args.layouts.split(","):
            for backend in ("edge", "local"):
                if backend == "local" and n not in local_sizes:
                    continue
                rows.append(measure(work, n, layout, backend, samples, args.full_limit))
    load = os.getloadavg()
    print(f"\nload average after the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    print(
        "| faces | groups | backend | write faces/s | HNSW index | open | RSS after open | search p50 / p95 | count | "
        "digest store steps (into an empty group) | full re-cluster (peak) | incremental +1 % (peak) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        full = (
            f"{r['full_s']:.1f} s ({r['full_peak_mb']:.0f} MB)"
            if r.get("full_s") is not None
            else r.get("full_error") or r.get("full_skipped", "")
        )
        inc = (
            f"{r['incremental_s']:.1f} s ({r['incremental_peak_mb']:.0f} MB)"
            if r.get("incremental_s") is not None
            else r.get("incremental_error") or ""
        )
        empty = f" ({r['empty_group_digest_s']:.2f} s)" if r.get("empty_group_digest_s") is not None else ""
        groups = "" if not r["faces"] else ("1" if r["layout"] == "one" else "100")
        print(
            f"| {r['faces']:,} | {groups or r['layout']} | {r['backend']} | {fmt(r.get('faces_per_s'), ',.0f')} | "
            f"{fmt(r.get('index_s'), '.1f', ' s')} | "
            f"{fmt(r.get('open_s'), '.2f', ' s')} | {fmt(r.get('rss_after_open_mb'), '.0f', ' MB')} | "
            f"{fmt(r.get('search_p50_ms'), '.1f')} / {fmt(r.get('search_p95_ms'), '.1f', ' ms')} | "
            f"{fmt(r.get('count_ms'), '.1f', ' ms')} | {fmt(r.get('digest_store_steps_s'), '.2f', ' s')}{empty} | "
            f"{full} | {inc} |"
        )
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_probe":
        print(json.dumps(PROBES[sys.argv[2]](json.loads(sys.argv[3]))))
    else:
        main()
