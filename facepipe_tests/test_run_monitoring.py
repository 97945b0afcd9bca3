"""Stuck runs (#14): a digest whose run process is killed ends as failed, and its store pool slot
is freed, so the next digest runs.

Under `facepipe ui` (dagster dev: webserver, daemon and a code server) a `--detach` digest runs in a
process the code server started. SIGKILL that process while a store-pool step holds the slot: the
code server sees its child gone and marks the run failed; the run still claims the slot (nothing
else frees it), until the daemon's run monitoring (`free_slots_after_run_end_seconds`, which
facepipe's dagster.yaml sets) frees it. Without that the pool stays full and every later digest
waits for ever.

A `facepipe digest` without --detach executes its run in its own process, with no launcher and no
code server to watch it. facepipe's run launcher tells the daemon's run monitoring whether that
process still exists (by the pid and host tags the run carries), so a SIGKILLed `facepipe digest`
ends the same way, within a poll of the daemon.

Each is killed twice: the process alone, at any store-pool step (often the listing: its step
workers are orphaned and finish what they do), and the process with its step workers while a store
step writes (`store_chunk[...]` or `store_faces` holds the slot): the writer dies mid-write, so
nothing but run monitoring frees the slot, and the retry must still store each face exactly once.
"""

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from facepipe.platform.instance import RUN_MONITORING, process_alive
from facepipe.settings import STORE_POOL
from facepipe_tests.conftest import (
    FIRST_16_SAMPLES_FACES,
    SAMPLE_IMAGES,
    copy_samples,
    digest,
    digest_at,
    facepipe_ui,
    run_facepipe,
    start_facepipe,
)

pytestmark = pytest.mark.e2e  # digests killed under a real daemon

# 16 of the samples, four photos a step on one worker: four chunks to write, so the run is still
# listing or storing when it is killed. These tests are about the run, not the faces: the portraits
# preset finds the same 17 faces in these photos at a twentieth of the default's detection time.
PHOTOS = 16
FACES = FIRST_16_SAMPLES_FACES
CHUNKS = ("--workers", "1", "--chunk-size", "4", "--preset", "portraits")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    copy_samples(folder, PHOTOS)
    return folder


@pytest.fixture(scope="module")
def monitored_home(tmp_path_factory):
    """One `facepipe ui` (webserver, daemon with run monitoring) for the kill tests, each killing a
    digest of a group of its own: what they test is the run, the slot and the daemon, never a
    fresh instance (the restart tests below start their own)."""
    home = tmp_path_factory.mktemp("monitored") / "home"
    with facepipe_ui(home, daemons=("QUEUED_RUN_COORDINATOR", "MONITORING")):
        yield home


# the longest the daemon may take: the run marked failed, one monitoring poll to see it ended,
# the grace period, one more poll, and slack for two loaded cores
BOUND_SECONDS = 2 * RUN_MONITORING["poll_interval_seconds"] + RUN_MONITORING["free_slots_after_run_end_seconds"] + 30


def run_process_pid(instance, run_id, timeout=180) -> int:
    """The pid of the process executing a launched run, from the engine event Dagster records."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for event in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            if event.message.startswith("Started process for run (pid: "):
                return int(event.message.split("pid: ")[1].split(")")[0])
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} never started a process")


# the store steps that write: each chunk's faces, and the digest's last step (indexing, totals)
STORE_WRITES = ("digest.store_chunk[", "digest.store_faces")


def wait_for_claimed_slot(instance, run_id, steps=("",), timeout=300) -> list[str]:
    """The steps of `run_id` that hold a store-pool slot, once one whose key starts with one of
    `steps` does (by default, any)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        claimed = [
            s.step_key
            for s in instance.event_log_storage.get_concurrency_info(STORE_POOL).claimed_slots
            if s.run_id == run_id
        ]
        if any(key.startswith(steps) for key in claimed):
            return claimed
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never claimed a {STORE_POOL} slot for {steps}")


def kill(pid: int, with_workers: bool) -> None:
    """SIGKILL `pid`; `with_workers`, its step worker processes too (every descendant, all at once):
    the store step dies mid-write, as when the machine runs out of memory."""
    doomed = [pid] + (descendants(pid) if with_workers else [])
    for each in doomed:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass


def descendants(pid: int) -> list[int]:
    children = [int(c) for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]
    return children + [grandchild for child in children for grandchild in descendants(child)]


def wait_until_failed_and_freed(instance, run_id, killed_at, ends="FAILURE"):
    """(slot still held when it was marked failed, seconds to fail, seconds to free the slot); the run
    must have ended `ends` (or canceled by hand, CANCELED)."""
    status, claimed, held, failed_after = None, [], None, None
    while time.time() < killed_at + BOUND_SECONDS:
        run = instance.get_run_by_id(run_id)
        claimed = [
            s for s in instance.event_log_storage.get_concurrency_info(STORE_POOL).claimed_slots if s.run_id == run_id
        ]
        if run.is_finished and status is None:
            # at the moment it is marked failed, the dead run still holds the slot: nothing but the
            # daemon's run monitoring gives it back
            status, held, failed_after = run.status.value, bool(claimed), time.time() - killed_at
        if status and not claimed:
            break
        time.sleep(1)
    assert status == ends, f"the killed run is {instance.get_run_by_id(run_id).status} after {BOUND_SECONDS} s"
    assert not claimed, f"the killed run still holds {claimed} after {BOUND_SECONDS} s"
    return held, failed_after, time.time() - killed_at


# (the store steps to kill at, whether the step workers die too, the group's name for it)
KILLS = {
    "the process alone, at any store step": (("",), False, "alone"),
    "the process and its workers, while a store step writes": (STORE_WRITES, True, "with-workers"),
}


@pytest.mark.parametrize(("steps", "with_workers", "killed"), KILLS.values(), ids=KILLS.keys())
def test_a_killed_detached_digest_ends_failed_frees_its_store_slot_and_the_next_digest_completes(
    samples, monitored_home, steps, with_workers, killed
):
    home, group = monitored_home, f"detached-{killed}"
    run_id = run_facepipe(home, "digest", str(samples), "--group", group, "--detach", *CHUNKS).stdout.strip()
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        pid = run_process_pid(instance, run_id)
        holding = wait_for_claimed_slot(instance, run_id, steps)
        kill(pid, with_workers)
        held, failed_after, freed_after = wait_until_failed_and_freed(instance, run_id, time.time())
    assert held
    print(f"killed during {holding}: failed after {failed_after:.0f} s, slot freed after {freed_after:.0f} s")

    assert json.loads(run_facepipe(home, "digests", "show", run_id, "--json").stdout)["status"] == "failed"
    # the slot is free: a retry of the killed digest gets it and completes, and a next digest
    # finds every photo stored
    retried = json.loads(run_facepipe(home, "digests", "retry", run_id, "--json").stdout)
    assert retried["status"] == "completed" and retried["faces_in_group"] == FACES, steps_of(home, retried)
    after = digest(home, samples, group)
    assert after["status"] == "completed" and after["images_skipped"] == PHOTOS and after["faces_in_group"] == FACES


@pytest.mark.parametrize(("steps", "with_workers", "killed"), KILLS.values(), ids=KILLS.keys())
def test_a_killed_facepipe_digest_process_ends_failed_and_frees_its_store_slot(
    samples, monitored_home, steps, with_workers, killed
):
    home, group = monitored_home, f"process-{killed}"
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        earlier = {record.dagster_run.run_id for record in instance.get_run_records()}  # the other tests'
        running = start_facepipe(home, "digest", str(samples), "--group", group, *CHUNKS)
        try:
            deadline, new = time.time() + 120, []
            while not new and time.time() < deadline:
                new = [r.dagster_run.run_id for r in instance.get_run_records() if r.dagster_run.run_id not in earlier]
                time.sleep(0.2)
            (run_id,) = new
            holding = wait_for_claimed_slot(instance, run_id, steps)
            # SIGKILL; the `facepipe digest` process alone orphans its step workers
            kill(running.pid, with_workers)
            running.wait()  # reaped, as a shell would (a zombie still has its pid)
            held, failed_after, freed_after = wait_until_failed_and_freed(instance, run_id, time.time())
        finally:
            running.kill()
    assert held
    print(f"killed during {holding}: failed after {failed_after:.0f} s, slot freed after {freed_after:.0f} s")

    retried = json.loads(run_facepipe(home, "digests", "retry", run_id, "--json").stdout)
    assert retried["status"] == "completed" and retried["faces_in_group"] == FACES, steps_of(home, retried)
    after = digest(home, samples, group)
    assert after["status"] == "completed" and after["images_skipped"] == PHOTOS and after["faces_in_group"] == FACES


def steps_of(home, summary) -> str:
    """What a run's steps did, and the summary, for a failing assertion's message."""
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        events = [
            f"{e.step_key} {e.dagster_event.event_type_value}"
            for e in instance.all_logs(summary["run_id"])
            if e.dagster_event and e.dagster_event.event_type_value.startswith(("STEP_", "ASSET_MAT"))
        ]
    return f"{summary}\n" + "\n".join(events)


def digest_status(home, run_id) -> dict:
    return json.loads(run_facepipe(home, "digests", "show", run_id, "--json").stdout)


# how `facepipe ui` stops: SIGTERM to its process group (a terminal closed, a service manager's
# stop): its code server marks the run it executed failed on the way out; SIGKILL to the group (the
# out-of-memory killer, `kill -9`, a crash): no one does, and only the restarted daemon's run
# monitoring, asking facepipe's run launcher whether the run's process lives, can
# (the signal, whether `facepipe digests cancel` ends the run before the ui starts again)
UI_STOPS = {
    "SIGTERM": (signal.SIGTERM, False),
    "SIGKILL": (signal.SIGKILL, False),
    "SIGKILL, then cancel": (signal.SIGKILL, True),
}


@pytest.mark.parametrize(("stop", "cancel"), UI_STOPS.values(), ids=UI_STOPS.keys())
def test_a_restarted_ui_keeps_its_history_and_fails_the_run_it_was_executing(samples, tmp_path, stop, cancel):
    """`facepipe ui` (webserver, daemon, code server) stopped while a `--detach` digest executes a store
    step, and started again on the same FACEPIPE_HOME."""
    home, photos = tmp_path / "home", tmp_path / "photos"
    photos.mkdir()
    for name in ("img1.jpg", "img2.jpg", "couple.jpg"):
        shutil.copy(SAMPLE_IMAGES / name, photos / name)
    daemons = ("QUEUED_RUN_COORDINATOR", "MONITORING")
    with facepipe_ui(home, daemons=daemons):
        done = digest(home, photos, "before")  # a completed digest in the history
        run_id = run_facepipe(home, "digest", str(samples), "--group", "g", "--detach", *CHUNKS).stdout.strip()
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            pid = run_process_pid(instance, run_id)
            wait_for_claimed_slot(instance, run_id, STORE_WRITES)
        if stop == signal.SIGKILL:  # the ui's whole process group at once, the run's process with it
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    # (leaving the block stops the ui as facepipe_ui does: SIGTERM to its process group)
    stopped_at = time.time()
    status = digest_status(home, run_id)["status"]
    print(f"after {stop.name}: the run is {status}, its process alive: {process_alive(pid)}")
    assert not process_alive(pid)
    # SIGTERM: the code server marked it failed; SIGKILL: nothing was left to, it shows processing
    assert status == ("failed" if stop == signal.SIGTERM else "processing")
    if cancel:  # without the ui: cancel finds the run's process gone and ends the run
        (line,) = run_facepipe(home, "digests", "cancel", run_id).stdout.strip().splitlines()
        assert line.startswith(f"{run_id}: canceled (the run process that executed it (pid {pid}) had ended")

    with facepipe_ui(home, daemons=daemons):
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            ends = "CANCELED" if cancel else "FAILURE"
            _, failed_after, freed_after = wait_until_failed_and_freed(instance, run_id, time.time(), ends)
        print(f"after the restart: failed after {failed_after:.0f} s, its slot freed after {freed_after:.0f} s")
        listed = {d["run_id"]: d for d in json.loads(run_facepipe(home, "digests", "list", "--json").stdout)}
        assert listed[done["run_id"]]["status"] == "completed"
        assert listed[done["run_id"]]["faces_stored"] == done["faces_stored"] > 0
        assert listed[run_id]["status"] == ("canceled" if cancel else "failed")
        retried = json.loads(run_facepipe(home, "digests", "retry", run_id, "--json").stdout)
        assert retried["status"] == "completed" and retried["faces_in_group"] == FACES, steps_of(home, retried)
    print(f"restarted {time.time() - stopped_at:.0f} s after the stop")


def test_canceling_a_queued_and_a_starting_detached_digest_leaks_no_store_slot(tmp_path):
    """Cancel, at once, a digest waiting in the run queue and one as soon as a step of it has claimed
    the store's slot: neither keeps a slot (read from the instance's claimed slots), and the next
    digest completes."""
    home, photos = tmp_path / "home", tmp_path / "photos"
    copy_samples(photos, 4)
    detach = ("--detach", "--workers", "1")
    with facepipe_ui(home, daemons=("QUEUED_RUN_COORDINATOR", "MONITORING")):
        # the 64 samples in small chunks: still running when it is canceled, though launching the
        # second digest may take a minute on a loaded machine, longer than a digest of 16 photos
        starting = run_facepipe(
            home, "digest", str(SAMPLE_IMAGES), "--group", "a", *detach, "--chunk-size", "8"
        ).stdout.strip()
        # one digest at a time (the embedded store): the second waits in the queue
        queued = run_facepipe(home, "digest", str(photos), "--group", "b", *detach).stdout.strip()
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            assert instance.get_run_by_id(queued).status.value == "QUEUED"
            run_facepipe(home, "digests", "cancel", queued)
            wait_for_claimed_slot(instance, starting)  # its listing, or a store step, holds the slot
            run_facepipe(home, "digests", "cancel", starting)
            canceled_at = time.time()
            for run_id in (queued, starting):
                wait_until_failed_and_freed(instance, run_id, canceled_at, ends="CANCELED")
            assert instance.event_log_storage.get_concurrency_info(STORE_POOL).claimed_slots == []
        after = digest(home, photos, "c")
        assert after["status"] == "completed" and after["images_done"] == 4


def held_by(instance, run_id) -> list[str]:
    return [
        s.step_key
        for s in instance.event_log_storage.get_concurrency_info(STORE_POOL).claimed_slots
        if s.run_id == run_id
    ]


# how a store slot left by a `facepipe digest` that stopped mid-write is given back with no daemon
# running at all: (how the digest stops, what frees the slot)
NO_DAEMON = {
    "killed, then canceled": ("SIGKILL", "cancel"),
    "canceled while it writes, then retried": ("cancel", "retry"),
    "killed, then another digest": ("SIGKILL", "digest"),
}


@pytest.mark.parametrize(("stop", "then"), NO_DAEMON.values(), ids=NO_DAEMON.keys())
def test_without_a_daemon_the_cli_frees_the_store_slot_its_stopped_digest_held(tmp_path, stop, then):
    """No `facepipe ui`, no daemon: a digest stopped while a store step holds the store's one slot
    (its process and step workers SIGKILLed, or `facepipe digests cancel`) would leave that slot
    claimed for ever, and every later digest "blocked by limit for pool facepipe_store". The CLI
    gives it back: cancel (of the dead run), retry and the next digest each free what ended runs hold."""
    home, photos, few = tmp_path / "home", tmp_path / "photos", tmp_path / "few"
    copy_samples(few, 8)
    # one worker, two photos a step: five store steps (the listing, four writes) to be stopped in
    running = start_facepipe(home, "digest", str(few), "--group", "g", "--workers", "1", "--chunk-size", "2")
    try:
        # the instance is opened by facepipe commands (which take turns at a new home's first use)
        # until the run exists; only then directly
        run_id = digest_at(home, 0)
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            wait_for_claimed_slot(instance, run_id)
        if stop == "SIGKILL":
            kill(running.pid, with_workers=True)
        else:
            run_facepipe(home, "digests", "cancel", run_id)
        running.wait(120)
    finally:
        running.kill()
    if then == "cancel":
        (line,) = run_facepipe(home, "digests", "cancel", run_id).stdout.strip().splitlines()
        assert line.startswith(f"{run_id}: canceled (the facepipe digest process")
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            assert held_by(instance, run_id) == []
    elif then == "retry":
        # by the 8 characters of its id the retry's progress bar shows
        assert digest_status(home, run_id[:8])["status"] == "canceled"
        retried = run_facepipe(home, "digests", "retry", run_id[:8]).stdout
        assert retried.startswith("digest completed: 8 images listed") and "None" not in retried, retried
    else:
        photos.mkdir()
        for name in ("img1.jpg", "couple.jpg"):
            shutil.copy(SAMPLE_IMAGES / name, photos / name)
        assert digest(home, photos, "next")["status"] == "completed"
        assert digest_status(home, run_id)["status"] == "failed"  # as run monitoring would have marked it
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert held_by(instance, run_id) == []


def test_a_killed_digests_forkserver_ends_with_it(tmp_path):
    """The forkserver holds the models (~240 MB); Python ends it only when its last client is gone,
    and a killed digest's orphaned step process keeps it for as long as its step runs (minutes).
    SIGKILL the `facepipe digest` process alone while a step runs: its forkserver ends within 5 s."""
    home, photos = tmp_path / "home", tmp_path / "photos"
    copy_samples(photos, 32)
    # one step of 32 photos: its orphan, and a forkserver that waits for it, would run for 15 s or more
    running = start_facepipe(home, "digest", str(photos), "--group", "g", "--workers", "1", "--chunk-size", "32")
    forkserver, steps = None, []
    try:
        deadline = time.time() + 300
        while not steps and time.time() < deadline:  # the forkserver, once it has forked a step
            with contextlib.suppress(OSError):  # a process of the digest ended while it was read
                servers = [
                    p for p in descendants(running.pid) if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()
                ]
                forkserver = servers[0] if servers else None
                steps = descendants(forkserver) if forkserver else []
            time.sleep(0.5)
        assert forkserver and steps, "the digest never forked a step"
        running.kill()
        running.wait()
        deadline = time.time() + 5
        while process_alive(forkserver) and time.time() < deadline:
            time.sleep(0.2)
        assert not process_alive(forkserver), "the killed digest's forkserver outlived it by 5 s"
    finally:
        running.kill()
        for orphan in [forkserver, *steps]:
            if orphan:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGKILL)
