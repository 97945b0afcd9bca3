"""Hands-off ingestion: watch sensors, nightly schedules, webhooks, and the daemon running it all.

Everything is real: folders of files with the modification times they say, moto's S3 server on
loopback, Dagster instances on disk (sensors and schedules evaluated with Dagster's own
build_*_context), real digest and people runs through the `facepipe` command, and a webhook
receiver (http.server) on a loopback port. The end-to-end test runs `facepipe ui` (webserver +
daemon) with a watches file, and drops a photo into the watched folder.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC

import boto3
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    SkipReason,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from dagster_aws.s3 import S3Resource

from facepipe.clients.local import run_digest
from facepipe.defs.ingestion.schedules import build_recluster_schedule, build_schedules
from facepipe.defs.ingestion.sensors import build_watch_sensor
from facepipe.defs.ingestion.webhooks import build_webhook_sensors
from facepipe.domain.request import DigestRequest, digest_request, request_from_config
from facepipe.domain.watching import parse_watches
from facepipe.engine.listing import list_images
from facepipe_tests.conftest import SAMPLE_IMAGES, digest, facepipe_ui, free_port, run_facepipe

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND  # the photos' modification times are set explicitly, from here


def watch(**fields):
    return parse_watches({"watches": [fields]}).watches[0]


def tick(sensor, instance, cursor=None):
    """One evaluation of a sensor, as the daemon does it: the cursor in, a SensorResult out."""
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"s3": S3Resource()})
    return sensor(context)


def window_config(run_request) -> DigestRequest:
    return request_from_config(
        run_request.run_config["ops"]["digest"]["ops"]["list_images"]["config"], run_request.partition_key
    )


def drop(folder, name, mtime_ns, photo="img1.jpg"):
    """A photo in the folder with this modification time."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_IMAGES / photo, folder / name)
    os.utime(folder / name, ns=(mtime_ns, mtime_ns))
    return folder / name


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


# -- the definitions -------------------------------------------------------------------------------


def test_definitions_load_a_sensor_per_watch_and_the_schedules(tmp_path):
    watches = tmp_path / "watches.yaml"
    watches.write_text(
        f"watches:\n  - {{name: inbox, source: {tmp_path}, group_id: g}}\n"
        "  - {name: bucket, source: 's3://photos/event/', group_id: h}\n"
        "webhooks: ['${HOOK_URL}']\n"
    )
    code = (
        "from facepipe.definitions import loaded; defs = loaded(); "
        "print(sorted(s.name for s in defs.sensors), sorted(s.name for s in defs.schedules))"
    )
    env = {
        **os.environ,
        "FACEPIPE_WATCHES": str(watches),
        "FACEPIPE_HOME": str(tmp_path / "home"),
        "HOOK_URL": "http://127.0.0.1:1/hook",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == (
        "['digest_failed_webhooks', 'digest_succeeded_webhooks', 'watch_bucket', "
        "'watch_inbox'] ['nightly_recluster', 'nightly_watch_recheck']"
    )


def test_a_typo_in_one_watch_disables_that_watch_only_and_its_sensor_says_why(tmp_path, instance):
    watches = tmp_path / "watches.yaml"
    watches.write_text(
        f"watches:\n  - {{name: inbox, source: {tmp_path}, group_id: g}}\n"
        f"  - {{name: typo, source: {tmp_path}, group_id: 'a/b'}}\n"
    )
    code = (
        "from facepipe.definitions import loaded; defs = loaded(); "
        "print(sorted(s.name for s in defs.sensors), sorted(j.name for j in defs.resolve_all_job_defs()))"
    )
    env = {**os.environ, "FACEPIPE_WATCHES": str(watches), "FACEPIPE_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "['watch_inbox', 'watch_typo'] ['__ASSET_JOB', 'digest_job', 'people_job']"

    from facepipe.defs.ingestion.sensors import broken_watch_sensor

    broken = broken_watch_sensor("watch_typo", f"{watches}: watch typo: group_id: 'a/b' is not a group name")
    with pytest.raises(Exception, match="watch typo: group_id: 'a/b' is not a group name .*fix the watches file"):
        tick(broken, instance)


# -- watch sensors ----------------------------------------------------------------------------------


def test_new_photos_become_runs_of_their_window_and_the_cursor_advances(instance, tmp_path):
    inbox = tmp_path / "inbox"
    for i in range(5):
        drop(inbox, f"p{i}.jpg", T0 + i * SECOND)
    sensor = build_watch_sensor(watch(name="inbox", source=str(inbox), group_id="wedding", max_photos_per_run=2))

    first = tick(sensor, instance)
    assert [r.run_key for r in first.run_requests] == [
        f"inbox:-1:{T0 + SECOND}",
        f"inbox:{T0 + SECOND}:{T0 + 3 * SECOND}",
        f"inbox:{T0 + 3 * SECOND}:{T0 + 4 * SECOND}",
    ]
    assert {r.partition_key for r in first.run_requests} == {"wedding"}
    assert first.run_requests[0].tags["facepipe/watch"] == "inbox"
    assert first.run_requests[0].tags["facepipe/group_id"] == "wedding"
    # the group's partition is added with the first runs
    assert [r.partition_keys for r in first.dynamic_partitions_requests] == [["wedding"]]
    # each run digests exactly its batch: the digest's listing, cut to the run's window
    listed = list_images(inbox)
    assert [
        [os.path.basename(f.path) for f in window_config(r).modified_in_window(listed)] for r in first.run_requests
    ] == [["p0.jpg", "p1.jpg"], ["p2.jpg", "p3.jpg"], ["p4.jpg"]]
    assert json.loads(first.cursor)["mtime_ns"] == T0 + 4 * SECOND

    # the same tick again (a daemon restarted before saving its cursor) asks for the same run keys,
    # which Dagster launches once
    assert [r.run_key for r in tick(sensor, instance).run_requests] == [r.run_key for r in first.run_requests]

    instance.add_dynamic_partitions("digest_groups", ["wedding"])
    second = tick(sensor, instance, first.cursor)
    assert not second.run_requests and "nothing modified" in second.skip_reason.skip_message
    assert second.cursor == first.cursor

    # a changed photo (a newer modification time) and a new one are picked up, and only they
    os.utime(inbox / "p1.jpg", ns=(T0 + 10 * SECOND, T0 + 10 * SECOND))
    drop(inbox, "new.jpg", T0 + 11 * SECOND, photo="img2.jpg")
    third = tick(sensor, instance, second.cursor)
    (request,) = third.run_requests
    assert request.run_key == f"inbox:{T0 + 4 * SECOND}:{T0 + 11 * SECOND}"
    assert [os.path.basename(f.path) for f in window_config(request).modified_in_window(list_images(inbox))] == [
        "new.jpg",
        "p1.jpg",
    ]
    assert third.dynamic_partitions_requests == []  # the group exists now
    assert not tick(sensor, instance, third.cursor).run_requests


def test_a_watch_run_that_will_wait_in_the_run_queue_names_the_run_it_waits_behind(instance, tmp_path):
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    drop(tmp_path / "inbox", "p0.jpg", T0)
    sensor = build_watch_sensor(watch(name="inbox", source=str(tmp_path / "inbox"), group_id="wedding"))
    assert "facepipe/queued_behind" not in tick(sensor, instance).run_requests[0].tags  # nothing ahead

    ahead = create_run_for_test(
        instance, job_name="digest_job", status=DagsterRunStatus.STARTED, tags={"facepipe/group_id": "party"}
    )
    create_run_for_test(instance, job_name="digest_job", status=DagsterRunStatus.STARTING)
    create_run_for_test(instance, job_name="digest_job", status=DagsterRunStatus.SUCCESS)
    (request,) = tick(sensor, instance).run_requests
    assert request.tags["facepipe/queued_behind"] == ahead.run_id


def test_a_flood_of_photos_becomes_several_bounded_runs(instance, tmp_path):
    inbox = tmp_path / "flood"
    inbox.mkdir()
    # 1200 files, ten per modification time (a burst of uploads): listed by name, never decoded here
    for i in range(1200):
        path = inbox / f"{i:05d}.jpg"
        path.write_bytes(b"listed by its extension")
        os.utime(path, ns=(T0 + (i // 10) * SECOND, T0 + (i // 10) * SECOND))
    sensor = build_watch_sensor(watch(name="flood", source=str(inbox), group_id="flood", max_photos_per_run=500))
    result = tick(sensor, instance)
    listed = list_images(inbox)
    batches = [window_config(r).modified_in_window(listed) for r in result.run_requests]
    assert [len(b) for b in batches] == [500, 500, 200]
    assert sorted(f.path for b in batches for f in b) == [f.path for f in listed]  # each photo in one run
    assert len({r.run_key for r in result.run_requests}) == 3
    assert not tick(sensor, instance, result.cursor).run_requests


def test_a_photo_arriving_late_with_the_time_of_the_last_launch_is_launched_once(instance, tmp_path):
    # S3's LastModified has whole seconds: an upload that lands after a tick's listing can carry
    # the very time the cursor holds
    inbox = tmp_path / "inbox"
    drop(inbox, "a.jpg", T0)
    sensor = build_watch_sensor(watch(name="late", source=str(inbox), group_id="late"))
    first = tick(sensor, instance)
    drop(inbox, "b.jpg", T0, photo="img2.jpg")
    second = tick(sensor, instance, first.cursor)
    (request,) = second.run_requests
    assert request.run_key == f"late:{T0 - 1}:{T0}:2"  # a.jpg is in the window again, and skipped as unchanged
    assert sorted(os.path.basename(f.path) for f in window_config(request).modified_in_window(list_images(inbox))) == [
        "a.jpg",
        "b.jpg",
    ]
    assert not tick(sensor, instance, second.cursor).run_requests
    drop(inbox, "c.jpg", T0, photo="img3.jpg")
    (third,) = tick(sensor, instance, second.cursor).run_requests
    assert third.run_key == f"late:{T0 - 1}:{T0}:3"  # the same window, re-opened again: a new key


def test_an_s3_watch_lists_the_prefix_and_picks_up_new_objects(s3_endpoint, instance):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="watched")
    for name in ("img1.jpg", "img2.jpg"):
        client.put_object(Bucket="watched", Key=f"event/{name}", Body=(SAMPLE_IMAGES / name).read_bytes())
    client.put_object(Bucket="watched", Key="event/readme.txt", Body=b"not a photo")
    client.put_object(Bucket="watched", Key="other/img3.jpg", Body=(SAMPLE_IMAGES / "img3.jpg").read_bytes())
    sensor = build_watch_sensor(
        watch(name="bucket", source="s3://watched/event/", group_id="s3g", s3_endpoint_url=s3_endpoint)
    )

    first = tick(sensor, instance)
    (request,) = first.run_requests
    config = window_config(request)
    assert (config.source.bucket, config.source.prefix, config.source.endpoint_url) == (
        "watched",
        "event/",
        s3_endpoint,
    )
    assert request.tags["facepipe/source"] == "s3://watched/event/"
    assert not tick(sensor, instance, first.cursor).run_requests

    # most likely within the same second as the first uploads (LastModified has whole seconds):
    # a late arrival at the cursor's time, launched all the same
    client.put_object(Bucket="watched", Key="event/img5.jpg", Body=(SAMPLE_IMAGES / "img5.jpg").read_bytes())
    (later,) = tick(sensor, instance, first.cursor).run_requests
    from facepipe.engine.sources import list_s3_images

    listed = list_s3_images(client, "watched", "event/")
    window = {f.path: f.mtime_ns for f in window_config(later).modified_in_window(listed)}
    assert "s3://watched/event/img5.jpg" in window
    # anything else in its window was launched already, at the time the window re-opens (the
    # digest's ledger skips it unchanged)
    launched_at = json.loads(first.cursor)["mtime_ns"]
    assert all(mtime == launched_at for path, mtime in window.items() if not path.endswith("img5.jpg"))
    assert later.run_key != request.run_key


def test_an_unreadable_source_fails_the_tick_with_a_clear_message(instance, tmp_path):
    sensor = build_watch_sensor(watch(name="gone", source=str(tmp_path / "nowhere"), group_id="g"))
    with pytest.raises(Exception, match="watch gone: cannot list"):
        tick(sensor, instance)


# -- real digests, shared by the schedule and webhook tests --------------------------------------------


@pytest.fixture(scope="module")
def digested(tmp_path_factory):
    """An instance with real digests: groups 'alpha' and 'beta' of one photo each, and a failed one."""
    home = tmp_path_factory.mktemp("sensors_home")
    folders = {}
    for group, photo in (("alpha", "img1.jpg"), ("beta", "img2.jpg")):
        folders[group] = home / group
        drop(folders[group], photo, time.time_ns(), photo=photo)
    runs = {group: digest(home, folder, group, "--workers", "1") for group, folder in folders.items()}
    # a digest of a folder that is gone fails at its listing (the CLI refuses a missing folder before
    # it launches, so this one is launched from Python, on the same instance)
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs["failed"] = run_digest(digest_request(str(home / "gone"), "alpha"), workers=1, instance=instance)
    assert runs["alpha"]["status"] == runs["beta"]["status"] == "completed"
    assert runs["failed"]["status"] == "failed"
    return home, folders, runs


def recluster_requests(home):
    schedule = build_recluster_schedule(parse_watches({}))
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        result = schedule(build_schedule_context(instance=instance))
    if isinstance(result, SkipReason):
        return []
    return sorted((r.partition_key, r.run_config["ops"]["people"]["config"]["profile"]) for r in result)


@pytest.mark.e2e
def test_the_nightly_recluster_asks_only_for_groups_with_new_faces(digested):
    home, folders, _ = digested
    assert recluster_requests(home) == [("alpha", "dlib"), ("beta", "dlib")]  # never clustered

    run_facepipe(home, "people", "cluster", "--group", "alpha")
    assert recluster_requests(home) == [("beta", "dlib")]

    # a digest that stores nothing new does not count; one that does, does
    assert digest(home, folders["alpha"], "alpha", "--workers", "1")["faces_stored"] == 0
    assert recluster_requests(home) == [("beta", "dlib")]
    drop(folders["alpha"], "img3.jpg", time.time_ns(), photo="img3.jpg")
    assert digest(home, folders["alpha"], "alpha", "--workers", "1")["faces_stored"] == 1
    assert recluster_requests(home) == [("alpha", "dlib"), ("beta", "dlib")]

    run_facepipe(home, "people", "cluster", "--group", "alpha")
    run_facepipe(home, "people", "cluster", "--group", "beta")
    assert recluster_requests(home) == []  # nothing changed: nothing to do


def test_the_nightly_recheck_digests_every_watch_in_full(tmp_path, instance):
    config = parse_watches({"watches": [{"name": "inbox", "source": str(tmp_path), "group_id": "nightly"}]})
    recheck = {s.name: s for s in build_schedules(config)}["nightly_watch_recheck"]
    from datetime import datetime

    night = datetime(2026, 11, 26, 2, tzinfo=UTC)  # the daemon gives the tick's scheduled time
    (request,) = list(recheck(build_schedule_context(instance=instance, scheduled_execution_time=night)))
    assert request.partition_key == "nightly" and request.tags["facepipe/recheck"] == "nightly"
    assert request.run_key == "recheck:inbox:2026-11-26T02:00:00+00:00"
    full = window_config(request)
    assert (full.modified_after_ns, full.modified_until_ns, full.source.url) == (None, None, str(tmp_path))
    assert instance.has_dynamic_partition("digest_groups", "nightly")


# -- webhooks ---------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_webhooks_receive_the_success_and_failure_summaries_with_retries(digested, receiver, monkeypatch, capsys):
    home, _, runs = digested
    monkeypatch.setenv("HOOK_PORT", str(receiver.server.server_address[1]))
    nobody = free_port()
    config = parse_watches(
        {
            "webhooks": [
                f"http://127.0.0.1:{nobody}/nobody-listens",  # first, so the others must still be called
                receiver.url + "/ok",
                "http://127.0.0.1:${HOOK_PORT}/flaky",  # 503, then 200 on the retry
            ]
        }
    )
    sensors = {s.name: s for s in build_webhook_sensors(config)}
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        for name, key, event_type in (
            ("digest_succeeded_webhooks", "alpha", DagsterEventType.RUN_SUCCESS),
            ("digest_failed_webhooks", "failed", DagsterEventType.RUN_FAILURE),
        ):
            run_id = runs[key]["run_id"]
            (record,) = instance.get_records_for_run(run_id, of_type=event_type).records
            context = build_run_status_sensor_context(
                sensor_name=name,
                dagster_event=record.event_log_entry.dagster_event,
                dagster_instance=instance,
                dagster_run=instance.get_run_by_id(run_id),
            )
            if event_type == DagsterEventType.RUN_FAILURE:
                context = context.for_run_failure()
            sensors[name](context)  # the unreachable webhook is logged, not raised

    completed, failed = receiver.bodies("/ok")
    assert completed["event"] == "digest_completed" and completed["run_id"] == runs["alpha"]["run_id"]
    assert (completed["status"], completed["group_id"], completed["faces_stored"]) == ("completed", "alpha", 1)
    assert completed["images_listed"] == 1 and completed["errors"] == []
    assert failed["event"] == "digest_failed" and failed["run_id"] == runs["failed"]["run_id"]
    assert failed["status"] == "failed" and any("source: cannot list" in e for e in failed["errors"])
    # the flaky receiver got the success summary twice (503, then 200), the failure once
    assert [b["event"] for b in receiver.bodies("/flaky")] == ["digest_completed", "digest_completed", "digest_failed"]
    # the webhook nobody listens to is a warning in the sensor's log, without its path (a Slack-style secret)
    warnings = [
        line for line in capsys.readouterr().err.splitlines() if f"webhook http://127.0.0.1:{nobody}/..." in line
    ]
    assert len(warnings) == 2 and all("ConnectionError" in w and "nobody-listens" not in w for w in warnings)


# -- the daemon -------------------------------------------------------------------------------------


@pytest.fixture
def ui_with_a_watch(tmp_path, receiver):
    """`facepipe ui` (webserver + daemon) on a free port, watching an empty folder every 5 s."""
    home, inbox = tmp_path / "home", tmp_path / "inbox"
    inbox.mkdir()
    watches = tmp_path / "watches.yaml"
    watches.write_text(
        f"watches:\n  - name: inbox\n    source: {inbox}\n    group_id: dropped\n"
        f"    minimum_interval_seconds: 5\n    workers: 1\nwebhooks:\n  - {receiver.url}/hook\n"
    )
    with facepipe_ui(home, daemons=("SENSOR", "QUEUED_RUN_COORDINATOR"), FACEPIPE_WATCHES=str(watches)):
        yield home, inbox


@pytest.mark.e2e
def test_a_photo_dropped_into_a_watched_folder_becomes_stored_faces(ui_with_a_watch, receiver):
    home, inbox = ui_with_a_watch
    shutil.copy(SAMPLE_IMAGES / "img1.jpg", inbox / "dropped.jpg")

    deadline, found = time.time() + 150, []
    while time.time() < deadline:
        found = json.loads(run_facepipe(home, "digests", "list", "--group", "dropped", "--json").stdout)
        if any(d["status"] == "completed" and d["faces_stored"] >= 1 for d in found):
            break
        assert not any(d["status"] == "failed" for d in found), found
        time.sleep(2)
    (done,) = [d for d in found if d["status"] == "completed"]
    assert done["images_listed"] == 1 and done["faces_stored"] == 1 and done["source"] == str(inbox)
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        tags = instance.get_run_by_id(done["run_id"]).tags
    assert tags["dagster/sensor_name"] == "watch_inbox" and tags["facepipe/watch"] == "inbox"

    # the daemon's run status sensor announces it to the webhook
    while time.time() < deadline and not receiver.bodies("/hook"):
        time.sleep(1)
    (announced,) = receiver.bodies("/hook")
    assert announced["event"] == "digest_completed" and announced["run_id"] == done["run_id"]
