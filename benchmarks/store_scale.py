"""The face store at 100k to 1M faces: what writing, opening, searching, digesting and clustering
cost as the store grows, each in CPU seconds beside wall time (CPU time is what a busy machine
does not distort; it includes Qdrant Edge's own threads).

    .venv/bin/python benchmarks/store_scale.py --sizes 100000 --layouts one     # writing it: ~110 CPU-s
    .venv/bin/python benchmarks/store_scale.py --sizes 1100000 --layouts mixed  # the issue's 1M store
    .venv/bin/python benchmarks/store_scale.py --sizes 200000 --no-digest       # no detection pass at all

Faces are synthetic but shaped like facepipe's: identity-clustered unit vectors (128-d, same person
~0.04 apart in cosine distance, different people ~0.2, as dlib's are), two faces a photo, written
with FaceStore.write (the digest's own payloads and ledger rows, indexing as it fills) the way
digests write them: 1,000 photos into one group at a time, the groups' digests interleaved. Layouts:
`one` (a single group), `hundred` (100 equal groups), `mixed` (one group of 1/11 of the faces and
100 equal groups sharing the rest: at 1,100,000 faces, one of 100k and 100 of 10k).

For each size and layout it prints the write (faces/s, CPU per face, the costliest single write and
the writer's resident memory, anonymous apart from mapped files); then, each in a new process: open
(open + first count) and resident memory after it; group-filtered search p50 / p99 in CPU and wall
(100 selfie-like queries, top 100 above cosine 0.92, as `facepipe search`) in the largest group and
in a small one, with the store's segments; a full `people cluster --full` of the largest group (when
at most --full-limit faces) and, after 1 % more faces, the incremental one (CPU, peak memory); and
the store steps of a digest of the 64 sample photos into the largest group, beside the same into a
small group, a new group and an empty store, then the first search after that digest.

The digest probes need the 64 samples' faces: one detection pass (~10 min on a busy machine),
cached in --samples (kept between runs); `--no-digest` skips them.
"""

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLES = ROOT.parent / "shared" / "faces" / "images"
SAMPLES_CACHE = Path.home() / ".cache" / "facepipe" / "store_scale_samples.pickle"
DIM = 128
FACES_PER_PHOTO = 2
FACES_PER_PERSON = 20  # on average
DIGEST_PHOTOS = 1000  # photos a synthetic digest writes into one group
QUERIES = 100


def memory_mb() -> dict:
    """This process's resident memory: all of it, and its anonymous part (not mapped files: the
    store's segments are mapped, their pages are the OS's cache, shared and reclaimable)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = {key: int(status.get(key, "0 kB").split()[0]) for key in ("VmRSS", "RssAnon", "VmHWM")}
    return {"rss_mb": kb["VmRSS"] / 1024, "anon_mb": kb["RssAnon"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024}


def groups_of(layout: str, n: int) -> dict[str, int]:
    """Faces per group."""
    if layout == "one":
        return {"big": n}
    if layout == "hundred":
        return {f"g{i:03d}": n // 100 for i in range(100)}
    big = n // 11
    return {"big": big, **{f"g{i:03d}": (n - big) // 100 for i in range(100)}}


def largest_group(layout: str) -> str:
    return "g000" if layout == "hundred" else "big"


def small_group(layout: str) -> str | None:
    return "g001" if layout != "one" else None


class Faces:
    """Deterministic identity-clustered faces: each group has its own people (one per 20 faces)."""

    def __init__(self, layout: str, n: int, seed: int = 0):
        self.sizes = groups_of(layout, n)
        rng = np.random.default_rng(seed)
        self.mean = rng.standard_normal(DIM)
        self.mean /= np.linalg.norm(self.mean)
        self._centres: dict[str, np.ndarray] = {}

    def centres(self, group: str) -> np.ndarray:
        if group not in self._centres:
            rng = np.random.default_rng(list(group.encode()))
            people = max(self.sizes.get(group, 1000) // FACES_PER_PERSON, 1)
            c = self.mean + 0.5 * rng.standard_normal((people, DIM)) / np.sqrt(DIM)  # people ~0.8 cosine apart
            self._centres[group] = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
        return self._centres[group]

    def face_vectors(self, rng, group: str, k: int) -> np.ndarray:
        centres = self.centres(group)
        noise = rng.standard_normal((k, DIM)).astype(np.float32) / np.sqrt(DIM)
        v = centres[rng.integers(0, len(centres), k)] + 0.2 * noise
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def digests(self) -> list[tuple[str, int, int]]:
        """(group, first photo, photos) of each synthetic digest, the groups' digests interleaved
        in proportion (a big group's digests spread over the whole run, as time would)."""
        blocks = []
        for group, faces in self.sizes.items():
            photos = faces // FACES_PER_PHOTO
            starts = range(0, photos, DIGEST_PHOTOS)
            for i, start in enumerate(starts):
                blocks.append(((i + 0.5) / len(starts), group, start, min(DIGEST_PHOTOS, photos - start)))
        return [(g, start, k) for _, g, start, k in sorted(blocks)]

    def results(self, group: str, start: int, photos: int, prefix: str = "p"):
        from facepipe.engine.faces import Face, ImageResult

        rng = np.random.default_rng([start, photos, int(prefix == "p"), *group.encode()])
        vectors = self.face_vectors(rng, group, photos * FACES_PER_PHOTO).reshape(photos, FACES_PER_PHOTO, DIM)
        out = []
        for i, p in enumerate(range(start, start + photos)):
            out.append(
                ImageResult(
                    f"/photos/{group}/{prefix}{p:07d}.jpg",
                    size=200_000 + p,
                    mtime_ns=1_700_000_000_000_000_000 + p,
                    content_hash=f"{group}{prefix}{p:060d}",
                    width=4000,
                    height=3000,
                    faces=[
                        Face(j, (100 * j, 200, 180, 180), [(1.0 * j, 2.0)] * 5, 0.9, vectors[i, j])
                        for j in range(FACES_PER_PHOTO)
                    ],
                )
            )
        return out


def open_store(path: str):
    from facepipe.store import FaceStore

    return FaceStore.open(path=path, migrate=False)


class Clock:
    """CPU seconds (all of the process's threads) and wall seconds since it started."""

    def __init__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def read(self) -> tuple[float, float]:
        return time.process_time() - self.cpu, time.perf_counter() - self.wall


# ---------------------------------------------------------------- probes, each in its own process


def probe_write(a) -> dict:
    faces = Faces(a["layout"], a["n"])
    total, costs, anon = Clock(), [], 0.0
    written = 0
    with open_store(a["path"]) as store:
        for group, start, photos in faces.digests():
            results = faces.results(group, start, photos)
            clock = Clock()
            store.write_images(group, "dlib", results, run_id=f"bench-{group}-{start}")
            costs.append((clock.read()[0], written))
            written += photos * FACES_PER_PHOTO
            anon = max(anon, memory_mb()["anon_mb"])
        segments = store.backend._shard("faces_dlib", largest_group(a["layout"])).info().segments_count
    cpu, wall = total.read()
    worst, at = max(costs)
    return {
        "write_wall_s": wall,
        "write_cpu_s": cpu,
        "faces_per_s": a["n"] / wall,
        "cpu_ms_per_face": 1000 * cpu / a["n"],
        "writes": len(costs),
        "write_p50_cpu_s": float(np.median([c for c, _ in costs])),
        "write_max_cpu_s": worst,
        "write_max_at_faces": at,
        "writer_peak_anon_mb": anon,
        "writer_peak_rss_mb": memory_mb()["peak_rss_mb"],
        "segments": segments,
    }


def _search(store, faces: Faces, group: str, queries: int, seed: int = 123) -> dict:
    rng = np.random.default_rng(seed)
    vectors = faces.face_vectors(rng, group, queries)
    cpu, wall, found = [], [], []
    for q in vectors:
        clock = Clock()
        found.append(len(store.nearest_faces(group, "dlib", q, limit=100, min_score=0.92)))
        c, w = clock.read()
        cpu.append(1000 * c)
        wall.append(1000 * w)
    return {
        "first_cpu_ms": cpu[0],
        "p50_cpu_ms": float(np.percentile(cpu, 50)),
        "p99_cpu_ms": float(np.percentile(cpu, 99)),
        "p50_wall_ms": float(np.percentile(wall, 50)),
        "p99_wall_ms": float(np.percentile(wall, 99)),
        "matches": float(np.mean(found)),
    }


def probe_open(a) -> dict:
    from facepipe.store import faces_collection

    group = largest_group(a["layout"])
    before = memory_mb()
    clock = Clock()
    with open_store(a["path"]) as store:
        count = store.count_faces(group, "dlib")  # the first use loads what the open deferred
        open_cpu, open_wall = clock.read()
        after = memory_mb()
        faces = Faces(a["layout"], a["n"])
        row = {
            "open_cpu_s": open_cpu,
            "open_wall_s": open_wall,
            "rss_after_open_mb": after["rss_mb"],
            "anon_after_open_mb": after["anon_mb"],
            "open_added_mb": after["rss_mb"] - before["rss_mb"],
            "group_faces": count,
        }
        row.update({f"search_{k}": v for k, v in _search(store, faces, group, QUERIES).items()})
        if small := small_group(a["layout"]):
            row["small_group_faces"] = store.count_faces(small, "dlib")
            row.update({f"small_search_{k}": v for k, v in _search(store, faces, small, QUERIES).items()})
        info = store.backend._shard(faces_collection("dlib"), group).info()
        row.update(
            {"segments": info.segments_count, "indexed": info.indexed_vectors_count, "points": info.points_count}
        )
        row["search_rss_mb"] = memory_mb()["rss_mb"]
    return row


def probe_cluster(a) -> dict:
    from facepipe.domain.people import update_people

    clock = Clock()
    with open_store(a["path"]) as store:
        counts = update_people(store, largest_group(a["layout"]), "dlib", full=a["full"])
    cpu, wall = clock.read()
    return {"cluster_cpu_s": cpu, "cluster_wall_s": wall, "cluster_peak_mb": memory_mb()["peak_rss_mb"], **counts}


def probe_grow(a) -> dict:
    """1 % more faces in the largest group: new photos of its people."""
    faces = Faces(a["layout"], a["n"])
    group = largest_group(a["layout"])
    photos = max(faces.sizes[group] // FACES_PER_PHOTO // 100, 1)
    clock = Clock()
    with open_store(a["path"]) as store:
        store.write_images(group, "dlib", faces.results(group, 0, photos, prefix="new"), run_id="bench-grow")
    cpu, wall = clock.read()
    return {"grown_faces": photos * FACES_PER_PHOTO, "grow_cpu_s": cpu, "grow_wall_s": wall}


def probe_digest(a) -> dict:
    """The store steps of a digest of the 64 samples into a group, each opening the store as its
    step does: list_images' ledger lookup, store_chunk's write (one chunk: 64 < chunk_size), and
    store_faces' counts and checks (FaceStore.finish_digest, as the step calls it)."""
    from dataclasses import replace

    results = pickle.loads(Path(a["samples"]).read_bytes())
    group = a["group"]
    clock = Clock()
    with open_store(a["path"]) as store:
        digested = store.digested_images(group, "dlib", paths=[r.path for r in results])
    with open_store(a["path"]) as store:
        store.write_images(
            group,
            "dlib",
            [replace(r, previously_digested=r.path in digested) for r in results],
            run_id="bench-digest",
        )
    with open_store(a["path"]) as store:
        store.finish_digest(group, "dlib", run_id="bench-digest")
    cpu, wall = clock.read()
    return {"digest_cpu_s": cpu, "digest_wall_s": wall, "digest_peak_mb": memory_mb()["peak_rss_mb"]}


def probe_search_after(a) -> dict:
    """The first searches after a digest, in a new process (as `facepipe search` would run)."""
    faces = Faces(a["layout"], a["n"])
    with open_store(a["path"]) as store:
        found = _search(store, faces, largest_group(a["layout"]), 10, seed=7)
    return {"after_digest_first_cpu_ms": found["first_cpu_ms"], "after_digest_p50_cpu_ms": found["p50_cpu_ms"]}


PROBES = {
    "write": probe_write,
    "open": probe_open,
    "cluster": probe_cluster,
    "grow": probe_grow,
    "digest": probe_digest,
    "search_after": probe_search_after,
}


def run_probe(kind: str, **args) -> dict:
    """One probe in a new process; its figures, also printed at once (a long run read as it goes)."""
    out = subprocess.run([sys.executable, __file__, "_probe", kind, json.dumps(args)], capture_output=True, text=True)
    if out.returncode != 0:
        error = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
        found = {f"{kind}_error": error}
    else:
        found = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"probe": kind, "faces": args.get("n"), "layout": args.get("layout"), **found}), flush=True)
    return found


# ---------------------------------------------------------------- the run


def sample_results(path: Path) -> Path:
    """The 64 sample photos through the engine once; their ImageResults, pickled (kept in `path`)."""
    if not path.exists():
        from facepipe.engine.faces import faces_in_chunk
        from facepipe.engine.listing import list_images
        from facepipe.engine.planning import ImageTask

        path.parent.mkdir(parents=True, exist_ok=True)
        result = faces_in_chunk([ImageTask(f.path, f.size, f.mtime_ns) for f in list_images(SAMPLES)], "dlib", 0.5)
        path.write_bytes(pickle.dumps(result.images))
    return path


def measure(work: Path, n: int, layout: str, samples: Path | None, full_limit: int, reuse: bool = False) -> dict:
    path = str(work / f"{layout}-{n}")
    args = {"path": path, "n": n, "layout": layout}
    row: dict = {"faces": n, "layout": layout, "load_before": os.getloadavg()[0]}
    if reuse and Path(path).is_dir():
        print(f"reusing the store at {path} (written before: no write probe)", flush=True)
    else:
        row.update(run_probe("write", **args))
    row.update(run_probe("open", **args))
    if samples:
        fresh = run_probe("digest", **args, samples=str(samples), group="fresh")
        row.update({f"new_group_{k}": v for k, v in fresh.items()})
        if small := small_group(layout):
            into_small = run_probe("digest", **args, samples=str(samples), group=small)
            row.update({f"small_group_{k}": v for k, v in into_small.items()})
        row.update(run_probe("digest", **args, samples=str(samples), group=largest_group(layout)))
        row.update(run_probe("search_after", **args))
    big = groups_of(layout, n)[largest_group(layout)]
    if big <= full_limit:  # last: the longest, and it rewrites the group's faces
        full = run_probe("cluster", **args, full=True)
        row.update({f"full_{k}": v for k, v in full.items()})
        row.update(run_probe("grow", **args))
        inc = run_probe("cluster", **args, full=False)
        row.update({f"incremental_{k}": v for k, v in inc.items()})
    row["load_after"] = os.getloadavg()[0]
    print(json.dumps(row), flush=True)
    return row


def fmt(value, spec=".2f", unit=""):
    return "" if value is None else f"{value:{spec}}{unit}"


def table(rows: list[dict], empty: dict | None) -> None:
    print(
        "\n| faces | groups | write: faces/s, CPU ms a face, costliest write (CPU s), writer peak anon | "
        "open CPU (wall) | RSS after open (anon) | search CPU p50 / p99 (wall p50), largest group | "
        "same, a small group | first search after a digest | digest store steps CPU, largest group (a small group; "
        "a new group; an empty store) | "
        "full re-cluster CPU (peak) | +1 % incremental CPU (peak) | segments | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sizes = groups_of(r["layout"], r["faces"])
        big = sizes[largest_group(r["layout"])]
        groups = f"{len(sizes)} (largest {big:,})"
        write = (
            f"{fmt(r.get('faces_per_s'), ',.0f')}, {fmt(r.get('cpu_ms_per_face'), '.2f')}, "
            f"{fmt(r.get('write_max_cpu_s'), '.1f')} at {fmt(r.get('write_max_at_faces'), ',')}, "
            f"{fmt(r.get('writer_peak_anon_mb'), '.0f', ' MB')}"
        )
        search = (
            f"{fmt(r.get('search_p50_cpu_ms'), '.1f')} / {fmt(r.get('search_p99_cpu_ms'), '.1f')} "
            f"({fmt(r.get('search_p50_wall_ms'), '.1f')}) ms"
        )
        small = (
            f"{fmt(r.get('small_search_p50_cpu_ms'), '.1f')} / {fmt(r.get('small_search_p99_cpu_ms'), '.1f')} ms "
            f"({fmt(r.get('small_group_faces'), ',')})"
            if r.get("small_group_faces")
            else ""
        )
        digest = (
            f"{fmt(r.get('digest_cpu_s'), '.2f')} s ({fmt(r.get('small_group_digest_cpu_s'), '.2f')} s; "
            f"{fmt(r.get('new_group_digest_cpu_s'), '.2f')} s; "
            f"{fmt((empty or {}).get('digest_cpu_s'), '.2f')} s)"
            if r.get("digest_cpu_s") is not None
            else ""
        )
        full = (
            f"{r['full_cluster_cpu_s']:.1f} s ({r['full_cluster_peak_mb']:.0f} MB)" if "full_cluster_cpu_s" in r else ""
        )
        inc = (
            f"{r['incremental_cluster_cpu_s']:.1f} s ({r['incremental_cluster_peak_mb']:.0f} MB)"
            if "incremental_cluster_cpu_s" in r
            else ""
        )
        print(
            f"| {r['faces']:,} | {groups} | {write} | {fmt(r.get('open_cpu_s'), '.2f')} "
            f"({fmt(r.get('open_wall_s'), '.2f')}) s | {fmt(r.get('rss_after_open_mb'), '.0f')} "
            f"({fmt(r.get('anon_after_open_mb'), '.0f')}) MB | {search} | {small} | "
            f"{fmt(r.get('after_digest_first_cpu_ms'), '.1f', ' ms')} | {digest} | {full} | {inc} | "
            f"{r.get('segments', '')} | {r['load_before']:.1f}-{r['load_after']:.1f} |"
        )
    errors = {k: v for r in rows for k, v in r.items() if k.endswith("error")}
    if errors:
        print("errors:", json.dumps(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000", help="faces in the store, comma-separated, each its own store")
    parser.add_argument("--layouts", default="mixed", help="one, hundred, mixed (comma-separated)")
    parser.add_argument("--full-limit", type=int, default=100_000, help="largest group given a full re-cluster")
    parser.add_argument("--no-digest", action="store_true", help="skip the digest probes (and their detection pass)")
    parser.add_argument("--samples", type=Path, default=SAMPLES_CACHE, help="the 64 samples' faces, made once, kept")
    parser.add_argument("--work", help="folder for the stores (default: a temporary one, removed at the end)")
    parser.add_argument(
        "--reuse", action="store_true", help="with --work: probe a store written by an earlier run, not write it again"
    )
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="store_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"load average before the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} cores", flush=True)
    samples = None if args.no_digest else sample_results(args.samples)
    empty = None
    if samples:
        empty = run_probe("digest", path=str(work / "empty"), n=0, layout="one", samples=str(samples), group="sample")
    rows = [
        measure(work, int(n), layout, samples, args.full_limit, args.reuse)
        for n in args.sizes.split(",")
        if n
        for layout in args.layouts.split(",")
    ]
    table(rows, empty)
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_probe":
        print(json.dumps(PROBES[sys.argv[2]](json.loads(sys.argv[3]))))
    else:
        main()
