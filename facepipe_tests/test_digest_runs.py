"""Digests as Dagster runs: queued and remote launches, status and history, cancel and retry.

A `facepipe ui` (Dagster webserver + daemon) runs on a free loopback port over a temporary
instance; the CLI talks to that instance directly, or to the webserver over GraphQL (--remote).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from dagster import DagsterEventType, DagsterInstance, RunsFilter

from facepipe_tests.conftest import (
    REPO,
    SAMPLE_IMAGES,
    SLOW_DIGEST,
    SLOW_DIGEST_CHUNK,
    SLOW_DIGEST_FACES,
    SLOW_DIGEST_PHOTOS,
    digest,
    digest_at,
    facepipe_ui,
    run_facepipe,
    start_facepipe,
)

PHOTOS = ["img1.jpg", "img2.jpg", "img3.jpg", "couple.jpg", "img5.jpg"]


def small_folder(path, bad=True):
    path.mkdir(parents=True)
    for name in PHOTOS:
        shutil.copy(SAMPLE_IMAGES / name, path / name)
    if bad:
        (path / "notes.jpg").write_text("a text file named .jpg")
    return path


def show(home, run_id, *extra):
    return json.loads(run_facepipe(home, "digests", "show", run_id, "--json", *extra).stdout)


def wait_until_finished(home, run_id, timeout=300, *extra):
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        summary = show(home, run_id, *extra)
        seen.append(summary["status"])
        if summary["status"] not in ("queued", "processing"):
            return summary, seen
        time.sleep(1)
    raise AssertionError(f"digest {run_id} still {seen[-1]} after {timeout} s")


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory):
    """`facepipe ui` (webserver + daemon) on a temporary instance and a free port; each test digests
    into groups of its own."""
    home = tmp_path_factory.mktemp("ui_home")
    with facepipe_ui(home) as url:
        yield home, url


@pytest.mark.e2e
def test_a_queued_digest_moves_to_completed_with_its_counts_and_errors(dagster_ui, tmp_path):
    home, _ = dagster_ui
    folder = small_folder(tmp_path / "photos")
    started = json.loads(run_facepipe(home, "digest", str(folder), "--group", "queued", "--detach", "--json").stdout)
    assert started["status"] in ("queued", "processing")  # the daemon dequeues every second

    summary, seen = wait_until_finished(home, started["run_id"])
    assert set(seen) <= {"queued", "processing", "completed"} and seen[-1] == "completed"
    assert summary["progress_percent"] == 100.0
    assert summary["images_listed"] == 6 and summary["images_done"] == 6 and summary["images_failed"] == 1
    assert summary["faces_stored"] == 6 and summary["faces_in_group"] == 6  # couple.jpg has two
    assert [f["path"].rsplit("/", 1)[-1] for f in summary["failed_images"]] == ["notes.jpg"]
    assert summary["start_time"] and summary["end_time"] and summary["duration_seconds"] > 0
    assert (summary["group_id"], summary["profile"], summary["workers"]) == ("queued", "dlib", os.cpu_count())


@pytest.mark.e2e
def test_launch_over_graphql_shows_up_in_the_history(dagster_ui, tmp_path):
    home, url = dagster_ui
    folder = small_folder(tmp_path / "photos", bad=False)
    result = run_facepipe(home, "digest", str(folder), "--group", "remote", "--remote", url, "--workers", "1", "--json")
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["faces_stored"] == 6

    local = json.loads(run_facepipe(home, "digests", "list", "--group", "remote", "--json").stdout)
    assert [d["run_id"] for d in local] == [summary["run_id"]]
    remote = json.loads(run_facepipe(home, "digests", "list", "--group", "remote", "--remote", url, "--json").stdout)
    assert remote == local
    assert show(home, summary["run_id"], "--remote", url)["faces_stored"] == 6


LOCATION = {"repositoryLocationName": "facepipe", "repositoryName": "__repository__"}
CONFIG_VALID = """query Valid($selector: PipelineSelector!, $config: RunConfigData) {
  isPipelineConfigValid(pipeline: $selector, mode: "default", runConfigData: $config) {
    __typename ... on RunConfigValidationInvalid { errors { message } } } }"""


def graphql(url, query, variables):
    import requests

    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    return response.json()["data"]


@pytest.mark.e2e
def test_the_launchpad_refuses_what_the_config_schema_can_tell(dagster_ui, tmp_path):
    _, url = dagster_ui
    selector = {**LOCATION, "pipelineName": "digest_job"}

    def verdict(config):
        run_config = {"ops": {"digest": {"ops": {"list_images": {"config": config}}}}}
        return graphql(url, CONFIG_VALID, {"selector": selector, "config": run_config})["isPipelineConfigValid"]

    assert (
        verdict({"source": {"local_folder": {"path": str(tmp_path)}}})["__typename"] == "PipelineConfigValidationValid"
    )
    for bad, says in [
        ({"source": {}}, "Must specify a field"),
        ({"source": {"local_folder": {"path": "/x"}, "s3": {"bucket": "b"}}}, "You can only specify a single field"),
        ({"source": {"local_folder": {"path": "/x"}}, "profile": "nope"}, "not in enum"),
        ({"source": {"local_folder": {"path": "/x"}}, "preset": "tiny"}, "not in enum"),
        ({"source": {"local_folder": {"path": "/x"}}, "group_id": "g"}, 'unexpected config entry "group_id"'),
    ]:
        answer = verdict(bad)
        assert answer["__typename"] == "RunConfigValidationInvalid", bad
        assert any(says in error["message"] for error in answer["errors"]), (bad, answer)


ADD_PARTITION = """mutation Add($selector: RepositorySelector!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: "digest_groups", partitionKey: $key) {
    __typename } }"""
LAUNCHPAD = """query Launchpad($selector: PipelineSelector!) {
  runConfigSchemaOrError(selector: $selector) { ... on RunConfigSchema { rootDefaultYaml } }
  pipelineOrError(params: $selector) {
    ... on Pipeline { partitionKeysOrError { ... on PartitionKeys { partitionKeys } } } }
}"""


@pytest.mark.e2e
def test_the_launchpad_opens_on_a_folder_to_type_and_a_launch_it_would_fail_fails_before_any_step(dagster_ui, tmp_path):
    """As the UI does: the Launchpad's initial config (rootDefaultYaml), its partition picker, and
    launches through the mutation it uses; a run its values doom fails at its launch, in one line."""
    import yaml
    from dagster_graphql import DagsterGraphQLClient

    home, url = dagster_ui
    for key in ("refused", "a/b"):  # the "Add a partition" dialog takes any name
        graphql(url, ADD_PARTITION, {"selector": LOCATION, "key": key})
    launchpad = graphql(url, LAUNCHPAD, {"selector": {**LOCATION, "pipelineName": "digest_job"}})
    initial = yaml.safe_load(launchpad["runConfigSchemaOrError"]["rootDefaultYaml"])
    assert initial["ops"]["digest"]["ops"]["list_images"]["config"]["source"] == {"local_folder": {"path": ""}}
    assert {"refused", "a/b"} <= set(launchpad["pipelineOrError"]["partitionKeysOrError"]["partitionKeys"])

    client = DagsterGraphQLClient("127.0.0.1", port_number=int(url.rsplit(":", 1)[1]))
    folder = small_folder(tmp_path / "photos", bad=False)
    for config, group, says in [
        ({}, "refused", "source.local_folder.path: type the path of the folder of photos"),  # launched as it opens
        ({"source": {"local_folder": {"path": str(folder)}}, "confidence": 1.5}, "refused", "confidence: Input should"),
        ({"source": {"local_folder": {"path": str(tmp_path / "nowhere")}}}, "refused", "source: cannot list"),
        ({"source": {"local_folder": {"path": str(folder)}}}, "a/b", "group_id 'a/b' may only hold"),
    ]:
        run_id = client.submit_job_execution(
            "digest_job",
            repository_location_name="facepipe",
            repository_name="__repository__",
            run_config={"ops": {"digest": {"ops": {"list_images": {"config": config}}}}},
            tags={"dagster/partition": group},
        )
        summary, _ = wait_until_finished(home, run_id)
        assert summary["status"] == "failed"
        (error,) = summary["errors"]
        assert says in error and "\n" not in error and "Traceback" not in error, error
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            # refused by the run launcher: no process, no step
            assert not instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_START).records
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert not instance.has_dynamic_partition("digest_groups", "a/b")  # a name no group can have
        # refused before any step: the partition is their one tag (facepipe's are added as a run starts)
        refused = instance.get_run_records(RunsFilter(tags={"dagster/partition": "refused"}))
        assert len(refused) == 3 and not any("facepipe/group_id" in r.dagster_run.tags for r in refused)

    # a group's digests are its partition's runs, on this machine's instance and over GraphQL alike
    for where in ((), ("--remote", url)):
        listed = json.loads(run_facepipe(home, "digests", "list", "--group", "refused", *where, "--json").stdout)
        assert sorted(d["run_id"] for d in listed) == sorted(r.dagster_run.run_id for r in refused), where
        assert {(d["group_id"], d["status"]) for d in listed} == {("refused", "failed")}, where


@pytest.mark.e2e
def test_a_digest_launched_as_the_launchpad_does_is_a_digest_to_the_cli(dagster_ui, tmp_path):
    """No facepipe tags, only the partition the Launchpad's picker sets, through the mutation the UI uses."""
    from dagster_graphql import DagsterGraphQLClient

    home, url = dagster_ui
    folder = small_folder(tmp_path / "photos", bad=False)
    port = int(url.rsplit(":", 1)[1])
    graphql(
        url,
        """mutation Add($selector: RepositorySelector!, $key: String!) {
      addDynamicPartition(repositorySelector: $selector, partitionsDefName: "digest_groups", partitionKey: $key) {
        __typename } }""",
        {"selector": LOCATION, "key": "launchpad"},
    )
    run_config = {
        "ops": {"digest": {"ops": {"list_images": {"config": {"source": {"local_folder": {"path": str(folder)}}}}}}}
    }
    run_id = DagsterGraphQLClient("127.0.0.1", port_number=port).submit_job_execution(
        "digest_job",
        repository_location_name="facepipe",
        repository_name="__repository__",
        run_config=run_config,
        tags={"dagster/partition": "launchpad"},
    )

    summary, _ = wait_until_finished(home, run_id)
    assert (summary["status"], summary["group_id"], summary["source"], summary["profile"]) == (
        "completed",
        "launchpad",
        str(folder),
        "dlib",
    )
    listed = json.loads(run_facepipe(home, "digests", "list", "--group", "launchpad", "--json").stdout)
    assert [d["run_id"] for d in listed] == [run_id]
    shown = show(home, run_id, "--face-ids", "3")
    assert len(shown["face_ids"]) == 3 and shown["faces_stored"] == 6


@pytest.mark.e2e
def test_history_filters_by_group_status_and_time(dagster_ui, tmp_path):
    home, url = dagster_ui
    # a digest of a folder the server does not have fails before any work
    failed = json.loads(
        run_facepipe(
            home, "digest", str(tmp_path / "nowhere"), "--group", "remote", "--remote", url, "--json", check=False
        ).stdout
    )
    assert failed["status"] == "failed"
    assert any("source: cannot list" in error for error in failed["errors"]), failed["errors"]
    # and one that completes (the other tests on this ui add theirs)
    done = digest(home, small_folder(tmp_path / "photos", bad=False), "history", "--workers", "1")
    assert done["status"] == "completed"

    everything = json.loads(run_facepipe(home, "digests", "list", "--json").stdout)
    assert {failed["run_id"], done["run_id"]} <= {d["run_id"] for d in everything}
    remote_failed = json.loads(
        run_facepipe(home, "digests", "list", "--group", "remote", "--status", "failed", "--json").stdout
    )
    assert [d["run_id"] for d in remote_failed] == [failed["run_id"]]
    completed = json.loads(run_facepipe(home, "digests", "list", "--status", "completed", "--json").stdout)
    assert done["run_id"] in {d["run_id"] for d in completed} and all(d["status"] == "completed" for d in completed)
    future = json.loads(run_facepipe(home, "digests", "list", "--since", "2999-01-01", "--json").stdout)
    assert future == []
    # every CLI call opened the instance anew from its folder: the history is on disk
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert len(instance.get_run_records()) == len(everything)


def test_a_remote_digest_is_retried_on_its_server_where_every_step_left_is_known():
    from facepipe.clients.remote import RemoteDigests

    with pytest.raises(ValueError, match="`facepipe digests retry 1234abcd` there"):
        RemoteDigests("http://127.0.0.1:9").retry_digest("1234abcd")  # no server: refused before asking


@pytest.mark.e2e
def test_unknown_digest_is_not_found(tmp_path):
    for command in (
        ["digests", "show", "no-such-run"],
        ["digests", "cancel", "no-such-run"],
        ["digests", "retry", "no-such-run"],
    ):
        result = run_facepipe(tmp_path, *command, check=False)
        assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_a_queued_digest_without_a_daemon_says_so(tmp_path):
    folder = small_folder(tmp_path / "photos", bad=False)
    result = run_facepipe(tmp_path / "home", "digest", str(folder), "--group", "g", "--detach")
    assert "no Dagster daemon is running" in result.stderr
    assert show(tmp_path / "home", result.stdout.strip())["status"] == "queued"


FROM_FAILURE = """
import json, sys
from dagster import ReexecutionOptions, execute_job, reconstructable
from facepipe.definitions import get_digest_job
from facepipe.clients.local import instance_for_digests

instance = instance_for_digests()
options = ReexecutionOptions.from_failure(sys.argv[1], instance)
# as the UI's button does: the parent's tags (its partition among them) go to the new run
tags = {k: v for k, v in instance.get_run_by_id(sys.argv[1]).tags.items() if not k.startswith(".dagster")}
with execute_job(reconstructable(get_digest_job), instance, reexecution_options=options, tags=tags) as result:
    failures = [e.step_failure_data.user_failure_data.description for e in result.get_step_failure_events()
                if e.step_failure_data.user_failure_data]
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    print(json.dumps({"success": result.success, "failure": failures[0] if failures else None,
                      "complete_check": checks.get("complete")}))
"""


@pytest.mark.e2e
def test_cancel_then_retry_completes_without_redoing_or_duplicating(slow_digest_photos, tmp_path):
    home = tmp_path / "home"
    run_facepipe(home, "digests", "list")  # creates the instance, so the polling below never races its creation
    running = start_facepipe(home, "digest", str(slow_digest_photos), *SLOW_DIGEST, stdout=subprocess.PIPE)
    try:
        run_id = digest_at(home, SLOW_DIGEST_CHUNK)
        run_facepipe(home, "digests", "cancel", run_id)
        assert json.loads(running.communicate(timeout=120)[0])["status"] == "canceled"
    finally:
        running.kill()
    canceled = show(home, run_id)
    assert canceled["status"] == "canceled" and SLOW_DIGEST_CHUNK <= canceled["images_done"] < SLOW_DIGEST_PHOTOS

    # Dagster's own "Re-execute from failure" (the UI's button) re-runs the store step but not the
    # chunks that never started: it must fail, saying how many photos are missing, never end green
    env = {**os.environ, "FACEPIPE_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    from_failure = subprocess.run(
        [sys.executable, "-c", FROM_FAILURE, run_id], env=env, capture_output=True, text=True, timeout=600
    )
    outcome = json.loads(from_failure.stdout.strip().splitlines()[-1])
    assert outcome["success"] is False and outcome["complete_check"] is False, (outcome, from_failure.stderr[-3000:])
    missing = rf"\d+ of {SLOW_DIGEST_PHOTOS} photos were not digested .*facepipe digests retry"
    assert re.match(missing, outcome["failure"])

    retried = json.loads(run_facepipe(home, "digests", "retry", run_id, "--json").stdout)
    assert retried["status"] == "completed"
    assert retried["images_done"] == SLOW_DIGEST_PHOTOS
    assert retried["faces_in_group"] == retried["faces_stored"] == SLOW_DIGEST_FACES
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        redone = {e.step_key for e in instance.all_logs(retried["run_id"], of_type=DagsterEventType.STEP_START)}
        done_before = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    assert "digest.list_images" not in redone and not (redone & done_before)

    # a later digest of the same source finds everything stored: nothing to do, nothing duplicated
    again = digest(home, slow_digest_photos, "g")
    assert again["images_skipped"] == SLOW_DIGEST_PHOTOS and again["faces_in_group"] == SLOW_DIGEST_FACES


@pytest.mark.e2e
def test_a_detached_digest_completes_under_the_standard_daemon_of_workspace_yaml(tmp_path):
    """`dagster-daemon run -w workspace.yaml` (the standard deployment's daemon, not `facepipe ui`)
    knows the code location by the name `--detach` launches with."""
    home = tmp_path / "home"
    run_facepipe(home, "digests", "list")  # writes the instance's dagster.yaml
    env = {**os.environ, "FACEPIPE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dagster._daemon", "run", "-w", str(REPO / "workspace.yaml")],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            while "QUEUED_RUN_COORDINATOR" not in instance.get_daemon_heartbeats():
                assert time.time() < deadline and daemon.poll() is None, "the daemon did not start"
                time.sleep(1)
        folder = small_folder(tmp_path / "photos", bad=False)
        run_id = run_facepipe(home, "digest", str(folder), "--group", "standard", "--detach").stdout.strip()
        summary, _ = wait_until_finished(home, run_id)
        assert (summary["status"], summary["faces_stored"]) == ("completed", 6), summary["errors"]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(60)


@pytest.mark.e2e
def test_a_killed_digest_process_is_canceled_in_one_line_and_its_retry_completes(tmp_path):
    """SIGKILL of the `facepipe digest` process while a chunk is being digested leaves its run
    `processing` with nothing to end it; `facepipe digests cancel` says the process is gone and
    marks it canceled (it used to crash with ProcessLookupError), and `retry` finishes it."""

    folder = tmp_path / "photos"
    folder.mkdir()
    names = sorted(p.name for p in SAMPLE_IMAGES.glob("img*.jpg"))[:16]
    for name in names:
        shutil.copy(SAMPLE_IMAGES / name, folder / name)
    home = tmp_path / "home"
    run_facepipe(home, "digests", "list")  # creates the instance before the polling below
    running = start_facepipe(
        home, "digest", str(folder), "--group", "g", "--workers", "1", "--chunk-size", "4", "--json"
    )
    try:
        # kill it once a chunk's faces are found and the next one's are being found (not in a store
        # step: a store step killed keeps the store pool's slot, which is the instance's business)
        with DagsterInstance.from_config(str(home / "dagster")) as instance:
            deadline, run_id = time.time() + 300, None
            while time.time() < deadline and running.poll() is None:
                records = instance.get_run_records(limit=1)
                if records:
                    run_id = records[0].dagster_run.run_id
                    started = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)}
                    ended = {
                        e.step_key
                        for e in instance.all_logs(
                            run_id, of_type={DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
                        )
                    }
                    in_flight = started - ended
                    found = any(str(k).startswith("digest.extract_faces") for k in ended)
                    if found and in_flight and all(str(k).startswith("digest.extract_faces") for k in in_flight):
                        os.kill(running.pid, signal.SIGKILL)
                        break
                time.sleep(0.1)
        assert running.wait(30) == -signal.SIGKILL, "the digest ended before it could be killed"
    finally:
        running.kill()
    killed = show(home, run_id)
    assert killed["status"] == "processing" and killed["images_done"] < len(names)

    canceled = run_facepipe(home, "digests", "cancel", run_id)
    (line,) = canceled.stdout.strip().splitlines()
    assert line.startswith(f"{run_id}: canceled (the facepipe digest process that executed it (pid {running.pid})")
    assert f"facepipe digests retry {run_id}" in line and "Traceback" not in canceled.stderr
    assert show(home, run_id)["status"] == "canceled"

    retried = json.loads(run_facepipe(home, "digests", "retry", run_id, "--json").stdout)
    assert retried["status"] == "completed", retried["errors"]
    assert retried["images_done"] == len(names) and retried["images_failed"] == 0
    assert retried["faces_in_group"] == retried["faces_stored"] > 0
    # nothing lost, nothing twice: a new digest of the folder has nothing to do
    again = digest(home, folder, "g")
    assert again["images_skipped"] == len(names) and again["faces_in_group"] == retried["faces_in_group"]
