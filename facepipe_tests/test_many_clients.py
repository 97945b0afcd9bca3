"""Many clients sharing one store and one instance: the store handed over between processes, a
page of the digest history read without reading the history, a full search queue refused.

The HTTP stories with a running service (a digest while 20 clients search, /health flooded while
`facepipe search` runs) are in test_api.py, beside the service they share; a full search queue
answered 503 is in test_api_inprocess.py.
"""

import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from facepipe.domain.request import PARTITION_TAG
from facepipe.platform.history import SUMMARY_TAG, count_digests, digest_runs
from facepipe.store import FaceStore, StoreBusy, StoreLease
from facepipe_tests.postgres_server import postgres_server, why_not_available


def test_a_leased_store_is_handed_to_a_process_that_waits_and_taken_back(tmp_path):
    root = tmp_path / "qdrant"
    with FaceStore.open(path=root) as store:
        store.ensure_collections("dlib")
    lease = StoreLease(lambda wait: FaceStore.open(path=root, wait=wait), root, idle_seconds=60)
    with lease.use(1) as store:
        assert store.count_faces("g", "dlib") == 0
    # kept open between uses: a process that does not wait finds it held
    with pytest.raises(StoreBusy, match="in use by another process"):
        with FaceStore.open(path=root):
            pass
    # one that waits gets it at once (the lease lets go when it sees a waiter), and holds it a while
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from facepipe.store import FaceStore
            started = time.monotonic()
            with FaceStore.open(path={str(root)!r}, wait=30):
                print(round(time.monotonic() - started, 3), flush=True)
                time.sleep(1.5)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        waited = float(child.stdout.readline())
        assert waited < 10  # not the whole 60 s of the lease's idle time (CPU-starved machines are slow)
        started = time.monotonic()
        with lease.use(30) as store:  # the lease waits in its turn, and opens the store again
            assert time.monotonic() - started > 0.5 and store.count_faces("g", "dlib") == 0
    finally:
        child.kill()
        child.wait()
    lease.close()
    # past its deadline, a waiting process is told who holds the store
    with FaceStore.open(path=root):
        with pytest.raises(StoreBusy, match="in use by another process"):
            with FaceStore.open(path=root, wait=0.3):
                pass


def add_digest_runs(instance: DagsterInstance, n: int, group: str = "g") -> None:
    """`n` finished digest runs of `group` in the run storage: records as the daemon leaves them,
    without events (what is counted is what a listing reads, not what it finds)."""
    for _ in range(n):
        instance.add_run(
            DagsterRun(
                job_name="digest_job",
                run_id=str(uuid.uuid4()),
                status=DagsterRunStatus.SUCCESS,
                tags={PARTITION_TAG: group},
            )
        )


def event_log_reads(instance: DagsterInstance, monkeypatch) -> list[str]:
    """The run ids whose event log the instance is asked for from now on."""
    reads: list[str] = []
    real = instance.get_records_for_run

    def counted(run_id, *args, **kwargs):
        reads.append(run_id)
        return real(run_id, *args, **kwargs)

    monkeypatch.setattr(instance, "get_records_for_run", counted)
    return reads


def check_listing_reads_the_page(instance: DagsterInstance, monkeypatch) -> None:
    reads = event_log_reads(instance, monkeypatch)
    add_digest_runs(instance, 2, group="other")
    for history in (10, 100):
        add_digest_runs(instance, history - count_digests(instance, group_id="g"))
        reads.clear()
        first = digest_runs(instance, "g", limit=5)
        assert len(first) == 5 and len(reads) <= 5  # at most each run of the page, once
        reads.clear()
        again = digest_runs(instance, "g", limit=5)
        assert reads == []  # the page's summaries are in its runs' tags now, whatever the history
        assert [s for s, _ in again] == [s for s, _ in first]
        assert all(SUMMARY_TAG in run.tags for _, run in again)
        assert count_digests(instance, group_id="g") == history
        assert count_digests(instance, status="completed") == history + 2


@pytest.mark.slow  # ~20 s on a busy machine: SQLite writes each run, and makes each run's event log
def test_a_page_of_the_digest_history_reads_the_page_not_the_history_on_sqlite(tmp_path, monkeypatch):
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        check_listing_reads_the_page(instance, monkeypatch)


@pytest.mark.e2e
def test_a_page_of_the_digest_history_reads_the_page_not_the_history_on_postgres(tmp_path, monkeypatch):
    reason = why_not_available()
    if reason:
        pytest.skip(reason)
    from facepipe.clients.local import instance_for_digests

    with postgres_server() as server:
        monkeypatch.setenv("FACEPIPE_POSTGRES_URL", server.create_database("listing"))
        monkeypatch.setenv("FACEPIPE_HOME", str(tmp_path))
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        instance = instance_for_digests()
        try:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            check_listing_reads_the_page(instance, monkeypatch)
        finally:
            instance.dispose()
