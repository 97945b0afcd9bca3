"""A full disk and a read-only data folder (#14): the face store's folder on a small tmpfs of its own.

What Qdrant Edge (qdrant-edge-py 0.9.0) does, measured on tmpfs: it writes even to open a store
(it cannot open one read-only: "Failed to open mmap payload storage: Read-only file system (os
error 30)"); on a disk with no room it fails the open ("No space left on device (os error 28)",
which facepipe used to call a damaged store); with a little room it grows its memory-mapped files
into pages the disk cannot back, and the process dies of SIGBUS, nothing to catch. So facepipe
opens the embedded store only with MIN_FREE_BYTES free, and turns every disk error into one
StoreNotWritable message that names the folder and what to do.

The tests mount the tmpfs on FACEPIPE_HOME/qdrant (root may mount here); Dagster's own storage stays
on the ordinary disk, as when only the store's disk fills.
"""

import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from facepipe.store import MIN_FREE_BYTES, FaceStore
from facepipe_tests.conftest import (
    FIRST_16_SAMPLES_FACES,
    SAMPLE_IMAGES,
    SLOW_DIGEST_FACES,
    SLOW_DIGEST_PHOTOS,
    digest,
    run_facepipe,
    start_facepipe,
)

pytestmark = pytest.mark.e2e  # real digests through the CLI on a mounted file system

SELFIE = SAMPLE_IMAGES / "img1.jpg"


@contextmanager
def small_disk(folder: Path, size: str = "160m"):
    """A tmpfs of `size` mounted at `folder`, unmounted after; the test is skipped where mounting is not
    permitted (not root, or a container without CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): the disk faults need one")
    try:
        yield folder
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(folder)], capture_output=True)
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(disk: Path, leave: int = 2**20) -> Path:
    """A file that takes all of `disk` but `leave` bytes."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, stat.f_bavail * stat.f_frsize - leave)
    return filler


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


def face_ids(home: Path, group: str) -> set[str]:
    with FaceStore.open(path=home / "qdrant") as store:
        return {p.id for p in store.scroll_faces(group, "dlib", payload_keys=())}


def photos(folder: Path, names: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    return folder


def one_store_error(summary: dict) -> str:
    """The digest's step error: one line per failed step (each store step after the fault fails
    alike), the store's message, never a traceback; besides it only Dagster's line for the run."""
    assert summary["status"] == "failed", summary
    steps = [error for error in summary["errors"] if error.startswith("digest.")]
    assert steps and len(summary["errors"]) <= len(steps) + 1, summary["errors"]
    for error in summary["errors"]:
        assert "Traceback" not in error and "\n" not in error.strip(), error
    assert {error.split(": ", 1)[1] for error in steps} == {steps[0].split(": ", 1)[1]}, steps
    return steps[0]


def store_steps_retried(home: Path, run_id: str) -> int:
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        return len(instance.all_logs(run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY))


def wait_until_extracting(home: Path, previous: str, timeout: float = 600) -> str:
    """The run id of the newest digest on `home` (not `previous`), once it has listed its photos and is extracting the
    faces of its first chunk: with one worker no store step runs until that ends, so the disk fills
    between two opens of the store (a write into a full disk's mapped pages would kill the step by
    SIGBUS instead)."""
    deadline = time.time() + timeout
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        while time.time() < deadline:
            records = instance.get_run_records(limit=1)
            if records and records[0].dagster_run.run_id != previous:
                run_id = records[0].dagster_run.run_id
                events = instance.all_logs(run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS})
                starts = [e for e in events if e.dagster_event_type == DagsterEventType.STEP_START]
                started = {e.step_key for e in starts if e.step_key}
                if "digest.list_images" in started and any(k.startswith("digest.extract") for k in started):
                    assert not any(k.startswith("digest.store_chunk") for k in started)
                    return run_id
            time.sleep(0.1)
    raise AssertionError(f"no digest on {home} went on to extract faces within {timeout} s")


def test_a_full_disk_fails_the_digest_in_one_line_and_once_freed_the_store_has_everything(tmp_path):
    home = tmp_path / "home"
    names = sorted(p.name for p in SAMPLE_IMAGES.iterdir())
    folder = photos(tmp_path / "photos", names[:16])
    with small_disk(home / "qdrant") as disk:
        first = digest(home, folder, "g")
        assert first["status"] == "completed"
        before = face_ids(home, "g")
        assert len(before) == first["faces_in_group"] > 0

        photos(folder, names[16:SLOW_DIGEST_PHOTOS])  # a digest of the next 8 photos, 4 a step
        digest_args = ("digest", str(folder), "--group", "g", "--json", "--workers", "1", "--chunk-size", "4")
        running = start_facepipe(home, *digest_args, stdout=subprocess.PIPE)
        try:
            run_id = wait_until_extracting(home, first["run_id"])
            filler = fill(disk)
            out, _ = running.communicate(timeout=900)
        finally:
            running.kill()
        assert running.returncode != 0
        error = one_store_error(json.loads(out))
        print(f"full disk: {error}")
        assert error.startswith("digest.store_chunk[") and f"the face store at {disk} cannot be written" in error
        assert "no space left on its disk" in error and "Free space on it" in error and "retry" in error
        assert store_steps_retried(home, run_id) == 0  # not a busy store: nothing to wait for

        # search says the same; nothing is opened, so nothing can be damaged
        searched = run_facepipe(home, "search", str(SELFIE), "--group", "g", check=False)
        assert searched.returncode == 1 and "no space left on its disk" in searched.stderr, searched.stderr

        filler.unlink()
        assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > MIN_FREE_BYTES
        # what was stored before the disk filled is all there, and the digest's history too
        assert face_ids(home, "g") == before
        shown = json.loads(run_facepipe(home, "digests", "show", first["run_id"], "--json").stdout)
        assert shown["status"] == "completed" and shown["faces_stored"] == first["faces_stored"]

        retried = json.loads(run_facepipe(home, "digests", "retry", run_id, "--json").stdout)
        assert retried["status"] == "completed" and retried["faces_in_group"] == SLOW_DIGEST_FACES
        assert before < face_ids(home, "g") and len(face_ids(home, "g")) == SLOW_DIGEST_FACES  # none stored twice
        found = json.loads(run_facepipe(home, "search", str(SELFIE), "--group", "g", "--json").stdout)
        assert found["photos"][0]["image_path"].endswith("/img1.jpg")
        again = digest(home, folder, "g")
        assert again["status"] == "completed" and again["images_skipped"] == SLOW_DIGEST_PHOTOS
        assert again["faces_in_group"] == SLOW_DIGEST_FACES


def test_a_read_only_store_folder_fails_digest_and_search_clearly_and_works_once_writable(tmp_path):
    home = tmp_path / "home"
    names = sorted(p.name for p in SAMPLE_IMAGES.iterdir())
    folder = photos(tmp_path / "photos", names[:8])
    # the portraits preset finds the same faces in these photos at a twentieth of the default's
    # detection time: what is tested is the store's disk, not the detector
    portraits = ("--preset", "portraits")
    with small_disk(home / "qdrant") as disk:
        first = digest(home, folder, "g", *portraits)
        assert first["status"] == "completed"
        before = face_ids(home, "g")

        remount(disk, "ro")
        photos(folder, names[8:16])
        failed = digest(home, folder, "g", *portraits)
        error = one_store_error(failed)
        print(f"read-only: {error}")
        assert error.startswith("digest.list_images: ") and f"the face store at {disk} is on a read-only" in error
        assert "remount it read-write" in error
        assert store_steps_retried(home, failed["run_id"]) == 0
        # Qdrant Edge cannot open a store read-only: search says so, in one line
        searched = run_facepipe(home, "search", str(SELFIE), "--group", "g", check=False)
        assert searched.returncode == 1 and "read-only file system" in searched.stderr, searched.stderr
        assert "Traceback" not in searched.stderr

        remount(disk, "rw")
        assert face_ids(home, "g") == before
        retried = json.loads(run_facepipe(home, "digests", "retry", failed["run_id"], "--json").stdout)
        assert retried["status"] == "completed" and retried["faces_in_group"] == FIRST_16_SAMPLES_FACES
        found = json.loads(run_facepipe(home, "search", str(SELFIE), "--group", "g", "--json").stdout)
        assert found["photos"][0]["image_path"].endswith("/img1.jpg")
