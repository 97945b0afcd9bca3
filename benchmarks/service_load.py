"""Many clients against one `facepipe serve`: concurrent searches, with and without a digest running,
and listing a page of a 1,000-run history. Prints figures (docs/measurements/service.md).

    .venv/bin/python benchmarks/service_load.py                  # ~10-15 min on 2 busy cores
    .venv/bin/python benchmarks/service_load.py --skip-postgres --open-sizes 1000

Everything on loopback, in a temporary FACEPIPE_HOME, bounded in count and time:
1. What opening the embedded store costs at a few sizes (random unit vectors, indexed): the reason
   the service keeps the store open between requests (store.StoreLease) instead of per request.
2. `facepipe ui` (webserver + daemon) and `facepipe serve`; the 64 samples of ../shared/faces are
   digested over HTTP into group "sample", which the clients search with img1.jpg.
3. Searches by 1 and 20 clients at once with nothing else running (the scaling target: 20 clients'
   throughput over one's), then by 1, 20 and 50 clients while a digest into a group of its own runs,
   which must complete with every face. Each client sends a fixed number of
   searches; a phase stops sending after --phase-seconds. Each digest meanwhile is of 16 of the
   samples (4 a chunk: 4 store_chunk steps), queued over HTTP. Per phase: latencies p50/p95/p99, answers
   other than 200, searches per second, the server's CPU seconds (its process and its search
   workers) per search, and its peak RSS (the same processes, sampled every 0.2 s).
4. A page of 20 of `GET /get-digests`'s listing (facepipe.platform.history.digest_runs, in process) with 1,000
   runs in the history, on SQLite and on PostgreSQL (a throwaway server, as the tests start it): CPU
   seconds of the first listing (which reads the page's event logs and keeps each summary in its
   run's tags) and of the next ones (the run storage only). The runs are records without events.

Wall times are the shared machine's; read the CPU seconds and the ratios within one run.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facepipe_tests.conftest import facepipe_server, facepipe_ui  # noqa: E402
from facepipe_tests.postgres_server import postgres_server, why_not_available  # noqa: E402

SAMPLES = REPO.parent / "shared" / "faces"
IMAGES = SAMPLES / "images"
SELFIE = IMAGES / "img1.jpg"


def open_cost(sizes: list[int], work: Path) -> None:
    from facepipe.store import FaceStore, StoredPoint, faces_collection

    print("\n## Opening the embedded store (open + one count; CPU seconds, best of 3)")
    rng = np.random.default_rng(0)
    for n in sizes:
        root = work / f"store-{n}"
        with FaceStore.open(path=root) as store:
            store.ensure_collections("dlib")
            for start in range(0, n, 5000):
                vectors = rng.normal(size=(min(5000, n - start), 128))
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                points = [
                    StoredPoint(str(uuid.uuid4()), {"group_id": "g", "image_path": f"p{start + i}"}, v.tolist())
                    for i, v in enumerate(vectors)
                ]
                store.backend.upsert(faces_collection("dlib"), "g", points)
                store.optimize("g", "dlib")  # as a digest's writes index as they fill
            store.optimize("g", "dlib")
        opens, queries = [], []
        for _ in range(3):
            started = time.process_time()
            with FaceStore.open(path=root) as store:
                store.count_faces("g", "dlib")
                opened = time.process_time()
                store.nearest_faces("g", "dlib", vectors[0], limit=100)
                queries.append(time.process_time() - opened)
            opens.append(time.process_time() - started - queries[-1])
        print(f"{n:>8,} faces: open+close {min(opens):.3f} CPU-s, a search query on the open store {min(queries):.4f}")


class Server:
    """The CPU seconds and RSS of `facepipe serve` and its search workers."""

    def __init__(self, port_marker: str):
        me = psutil.Process()
        found = [p for p in me.children(recursive=True) if port_marker in " ".join(p.cmdline())]
        self.process = found[0]
        self.peak_rss = 0
        self._stop = threading.Event()

    def tree(self) -> list[psutil.Process]:
        return [self.process, *self.process.children(recursive=True)]

    def cpu(self) -> float:
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> int:
        total = 0
        for p in self.tree():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def sample(self):
        self.peak_rss, self._stop = self.rss(), threading.Event()

        def loop():
            while not self._stop.wait(0.2):
                self.peak_rss = max(self.peak_rss, self.rss())

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return self._stop


def search_phase(url: str, key: str, clients: int, per_client: int, budget: float, server: Server) -> dict:
    selfie = SELFIE.read_bytes()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + budget

    def client():
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600) as http:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                answer = http.post("/search-face", files={"file": ("me.jpg", selfie)}, data={"group_id": "sample"})
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200 or not answer.json()["photos"]:
                    errors.append(f"{answer.status_code} {answer.text[:120]}")

    cpu0, stop = server.cpu(), server.sample()
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    stop.set()
    cpu = server.cpu() - cpu0
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {
        "clients": clients,
        "searches": len(latencies),
        "errors": errors,
        "per_second": len(latencies) / wall,
        "p50": q[0],
        "p95": q[1],
        "p99": q[2],
        "cpu_per_search": cpu / max(1, len(latencies)),
        "peak_rss_mb": server.peak_rss / 2**20,
    }


def show(label: str, r: dict) -> None:
    print(
        f"{label:<28} {r['clients']:>3} clients: {r['searches']:>4} searches, {len(r['errors'])} errors, "
        f"{r['per_second']:.2f}/s, p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, p99 {r['p99']:.2f} s, "
        f"server {r['cpu_per_search']:.3f} CPU-s/search, peak RSS {r['peak_rss_mb']:.0f} MB"
    )
    for e in sorted(set(r["errors"]))[:3]:
        print(f"    {e}")


def faces_per_photo(home: Path) -> dict[str, int]:
    """The faces of group 'sample' by photo name (the store is waited for: the service hands it over)."""
    from facepipe.store import FaceStore

    counts: dict[str, int] = {}
    with FaceStore.open(path=home / "qdrant", wait=60) as store:
        for face in store.scroll_faces("sample", "dlib"):
            name = face.payload["image_path"].rsplit("/", 1)[-1]
            counts[name] = counts.get(name, 0) + 1
    return counts


def wait_digest(http: httpx.Client, job_id: str, timeout: float = 1800) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = http.get(f"/get-digests/{job_id}").json()
        if job["status"] not in ("queued", "processing"):
            return job
        time.sleep(1)
    raise RuntimeError(f"digest {job_id} did not finish in {timeout} s")


def service_phases(args, work: Path) -> None:
    key = "bench-" + uuid.uuid4().hex[:8]
    home = work / "home"
    with facepipe_ui(home):
        env = {"FACEPIPE_API_KEY": key, "FACEPIPE_ALLOWED_ROOTS": os.pathsep.join([str(SAMPLES), str(work)])}
        with facepipe_server(
            home, "serve", lambda u: httpx.get(f"{u}/health", timeout=30).status_code == 200, **env
        ) as url:
            server = Server(f"--port {url.rsplit(':', 1)[1]}")
            http = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600)
            job = http.post("/digest", json={"local_dir_path": str(IMAGES), "group_id": "sample"}).json()
            job = wait_digest(http, job["job_id"])
            # the digests that run during the searches: 16 of the samples each, 4 a chunk
            folder = work / "during"
            folder.mkdir()
            for name in sorted(os.listdir(IMAGES))[:16]:
                shutil.copy(IMAGES / name, folder / name)
            expected = sum(n for name, n in faces_per_photo(home).items() if name in os.listdir(folder))
            print(f"\n## Searches (group 'sample': {job['faces_in_group']} faces; selfie {SELFIE.name})")
            print(f"server at rest: RSS {server.rss() / 2**20:.0f} MB; search workers: {os.cpu_count()}")
            search_phase(url, key, 2, 1, args.phase_seconds, server)  # the workers load their models
            quiet = {c: search_phase(url, key, c, n, args.phase_seconds, server) for c, n in ((1, 12), (20, 3))}
            for r in quiet.values():
                show("nothing else running", r)
            print(f"20 clients' throughput over one's: {quiet[20]['per_second'] / quiet[1]['per_second']:.2f}x")
            for clients, per_client in ((1, 12), (20, 3), (50, 2)):
                group = f"during-{clients}"
                body = {"local_dir_path": str(folder), "group_id": group, "chunk_size": 4}
                started = http.post("/digest", json=body).json()
                show("while a digest runs", search_phase(url, key, clients, per_client, args.phase_seconds, server))
                done = wait_digest(http, started["job_id"])
                print(
                    f"    the digest into {group!r}: {done['status']}, {done['images_processed']} photos, "
                    f"{done['faces_in_group']} faces in its group (the same photos in 'sample': {expected}), "
                    f"error: {done['error']}"
                )
            cpu0 = server.cpu()
            for _ in range(1000):
                httpx.get(f"{url}/health")
            print(f"\n1,000 GET /health without a key: {server.cpu() - cpu0:.2f} server CPU-s")


def listing(args) -> None:
    from dagster import DagsterInstance

    from facepipe.platform.history import count_digests, digest_runs
    from facepipe_tests.test_many_clients import add_digest_runs

    def measure(instance, label: str) -> None:
        add_digest_runs(instance, 1000)
        started = time.process_time()
        digest_runs(instance, limit=20)
        first = time.process_time() - started
        warm = []
        for _ in range(5):
            started = time.process_time()
            digest_runs(instance, limit=20)
            count_digests(instance)
            warm.append(time.process_time() - started)
        print(
            f"{label}: {count_digests(instance)} runs; a page of 20: first {first:.3f} CPU-s, "
            f"then {statistics.median(warm) * 1000:.1f} ms CPU (median of 5, with the count)"
        )

    print("\n## Listing digests (in process, 1,000 runs in the history)")
    with tempfile.TemporaryDirectory() as folder, DagsterInstance.local_temp(folder) as instance:
        measure(instance, "SQLite")
    if args.skip_postgres or why_not_available():
        print(f"PostgreSQL: skipped ({why_not_available() or '--skip-postgres'})")
        return
    from facepipe.clients.local import instance_for_digests

    with postgres_server() as server, tempfile.TemporaryDirectory() as home:
        os.environ.update(FACEPIPE_POSTGRES_URL=server.create_database("listing"), FACEPIPE_HOME=home)
        os.environ.pop("DAGSTER_HOME", None)
        instance = instance_for_digests()
        try:
            measure(instance, "PostgreSQL")
        finally:
            instance.dispose()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--open-sizes", type=int, nargs="*", default=[1000, 20_000, 100_000])
    parser.add_argument("--phase-seconds", type=float, default=300, help="A search phase stops sending past this.")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("DEEPFACE_HOME", tempfile.mkdtemp(prefix="deepface-"))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="service-load-") as folder:
        work = Path(folder)
        open_cost(args.open_sizes, work)
        if not args.skip_service:
            service_phases(args, work)
    listing(args)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
