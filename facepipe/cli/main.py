"""The `facepipe` command: digests as Dagster runs on the local instance.

Each command imports the Dagster side it runs (facepipe.clients.local, history, remote) inside itself:
importing Dagster takes ~1.5 s, which `facepipe --help`, `search` and `people list` need not pay.
"""

import json
import os
import sys
import types
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, TypeVar, get_args, get_origin

import annotated_types
import click
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from facepipe.cli.forget import delete, forget, verify
from facepipe.cli.people import people, search, store
from facepipe.clients.digests import DigestsClient, LaunchError, OnProgress, Summary
from facepipe.domain.request import DigestChoices, default_workers, digest_request, valid_workers

F = TypeVar("F", bound=Callable[..., Any])


def _validation_message(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
    )


class Commands(click.Group):
    """The `facepipe` commands: a setting facepipe cannot use, or an instance or workers' configuration
    that contradicts its settings, is one line that says what to change, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from facepipe.platform.instance import InstanceConfigError
        from facepipe.platform.worker_check import WorkerConfigError
        from facepipe.settings import SettingError

        try:
            return super().invoke(ctx)
        except Exception as err:
            # Dagster's loader wraps what a definition raised (a setting read as the definitions load)
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, (InstanceConfigError, SettingError, WorkerConfigError)):
                cause = cause.__cause__
            if cause is None:
                raise
            raise click.ClickException(str(cause)) from None


@click.group(cls=Commands)
def main() -> None:
    """facepipe: find, embed and store the faces of a photo collection, on Dagster."""


def digests_client(remote: str | None) -> DigestsClient:
    """The digests of the local instance, or of a webserver's over GraphQL (--remote): chosen here only."""
    if remote:
        from facepipe.clients.remote import RemoteDigests

        return RemoteDigests(remote)
    from facepipe.clients.local import LocalDigests

    return LocalDigests()


def choice_option(name: str, field: FieldInfo) -> Callable[[F], F]:
    """The click option of one of a digest's options (DigestChoices): its flag, type, bounds, default
    and help, all read from its declaration."""
    flag = "--" + name.replace("_", "-")
    kind = field.annotation
    if isinstance(kind, types.UnionType):  # an option left out unless given (`int | None`): typed as given
        (kind,) = (arg for arg in get_args(kind) if arg is not type(None))
    if kind is bool:
        return click.option(flag, name, is_flag=True, default=field.default, help=field.description)
    bounds: dict[str, Any] = {
        "min": next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None),
        "max": next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None),
    }
    click_type: click.ParamType
    if get_origin(kind) is Literal:
        click_type = click.Choice(get_args(kind))
    elif kind is int:
        click_type = click.IntRange(**bounds)
    elif kind is float:
        click_type = click.FloatRange(**bounds)
    else:
        raise TypeError(f"DigestChoices.{name} is a {kind}: say how the command line types one")
    shown = field.default is not None
    return click.option(flag, name, type=click_type, default=field.default, show_default=shown, help=field.description)


def digest_choices(command: F) -> F:
    """A command's options for each of a digest's options (DigestChoices), in their declared order."""
    for name, field in reversed(DigestChoices.model_fields.items()):
        command = choice_option(name, field)(command)
    return command


REMOTE = click.option(
    "--remote", metavar="URL", help="A Dagster webserver (e.g. http://host:3000) instead of the local instance."
)


@main.command()
@click.argument("path")
@click.option("--group", "group_id", required=True, help="The group (event, album) the faces go into.")
@click.option("--workers", type=int, default=default_workers(), show_default=True, help="Parallel worker processes.")
@digest_choices
@click.option("--s3-endpoint-url", help="For s3:// paths: an S3-compatible store's endpoint (MinIO, Ceph, R2...).")
@click.option("--s3-region", help="For s3:// paths: the bucket's region.")
@click.option("--detach", is_flag=True, help="Queue the digest on the instance and print its run id at once.")
@REMOTE
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
def digest(
    path: str,
    group_id: str,
    workers: int,
    s3_endpoint_url: str | None,
    s3_region: str | None,
    detach: bool,
    remote: str | None,
    as_json: bool,
    **choices: Any,
) -> None:
    """Digest the photos under PATH (a folder, or s3://bucket/prefix) into a group, as a Dagster run.

    By default the run executes in this process and the command waits, with a progress bar.
    With --detach it goes to the instance's run queue, which the Dagster daemon starts
    (`facepipe ui` runs one); follow it with `facepipe digests show RUN_ID`. With --remote, it
    goes to a webserver's instance over GraphQL, and PATH is a folder on that server.
    """
    if not remote and not path.startswith("s3://") and not os.path.isdir(path):
        raise click.BadParameter(f"{path!r} is not a folder", param_hint="PATH")
    try:
        request = digest_request(
            path,
            group_id,
            on_this_machine=not remote,
            s3_endpoint_url=s3_endpoint_url,
            s3_region=s3_region,
            **choices,
        )
        try:
            valid_workers(workers)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--workers") from None
    except ValidationError as err:
        raise click.UsageError(_validation_message(err)) from None

    client = digests_client(remote)
    try:
        if detach:
            run_id = client.start_digest(request, workers)
        else:
            bar = _progress_bar(f"digest {group_id}" + (f" at {client.where}" if remote else ""))
            summary = client.run_digest(request, workers, on_progress=bar)
    except LaunchError as err:
        raise click.ClickException(str(err)) from None
    if detach:
        click.echo(json.dumps({"run_id": run_id, "status": "queued"}) if as_json else run_id)
        if warning := client.queue_warning():
            click.echo(f"note: {warning}", err=True)
        return
    _print_summary(summary, as_json)
    if summary["status"] != "completed":
        sys.exit(1)


def _progress_bar(description: str) -> OnProgress:
    """A progress callback for run_digest and retry_digest, drawing a bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="img", desc=description, file=sys.stderr, disable=None)

    def show(summary: Summary) -> None:
        if summary["images_to_digest"] is not None and bar.total != summary["images_to_digest"]:
            bar.reset(total=summary["images_to_digest"])
        bar.n = summary["images_done"]
        bar.set_postfix(faces=summary["faces_detected"], failed=summary["images_failed"], refresh=False)
        bar.refresh()
        if summary["status"] not in ("queued", "processing"):
            bar.close()

    return show


def _print_summary(summary: Summary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
    else:
        # a count the run never reached (it failed before listing, or storing) is none of them
        n = {key: value or 0 for key, value in summary.items() if key.startswith(("images_", "faces_", "entries_"))}
        narrower = f"narrower than {summary['min_face_size']} px" if summary["min_face_size"] else "too small"
        in_group = f" ({n['faces_in_group']} in group {summary['group_id']!r})" if summary["group_id"] else ""
        click.echo(
            f"digest {summary['status']}: {n['images_listed']} images listed, "
            f"{n['entries_not_listed']} entries not listed, "
            f"{n['images_skipped']} skipped as unchanged, {n['images_done']} digested, "
            f"{n['images_failed']} failed; {n['faces_detected']} faces detected, "
            f"{n['faces_dropped']} dropped below the confidence threshold, "
            f"{n['faces_too_small']} {narrower}, {n['faces_stored']} stored{in_group}; "
            f"{summary['duration_seconds'] or 0} s; run {summary['run_id']}"
        )
        if summary.get("images_with_faces_lost"):
            click.echo(
                f"  warning: {summary['images_with_faces_lost']} photos recorded as digested had lost their faces "
                "in the face store (damaged?): digested again"
            )
        for entry in summary.get("not_listed", []):
            click.echo(f"  not listed: {entry['path']}: {entry['reason']}")
        _more(summary.get("entries_not_listed") or 0, summary.get("not_listed", []), "  ")
        for failure in summary["failed_images"]:
            click.echo(f"  failed: {failure['path']}: {failure['error']}")
        _more(summary["images_failed"] or 0, summary["failed_images"], "  ")
        for error in summary["errors"]:
            click.echo(f"  error: {error}")


def _more(count: int, shown: list, indent: str = "") -> None:
    """Say how many more there are when the event log keeps only the first of a long list."""
    if count > len(shown):
        click.echo(f"{indent}... and {count - len(shown)} more (the digest's event log keeps the first {len(shown)})")


@main.group()
def digests() -> None:
    """Digest runs on the local Dagster instance (or a webserver's, --remote): list, show, cancel, retry."""


def _not_found(err: LookupError) -> NoReturn:
    click.echo(f"not found: {err}", err=True)
    sys.exit(2)


@digests.command("list")
@click.option("--group", "group_id", help="Only this group's digests.")
@click.option("--status", type=click.Choice(["queued", "processing", "completed", "failed", "canceled"]))
@click.option("--since", type=click.DateTime(), help="Created at or after (UTC).")
@click.option("--until", type=click.DateTime(), help="Created before (UTC).")
@click.option("--limit", type=int, default=20, show_default=True)
@REMOTE
@click.option("--json", "as_json", is_flag=True, help="One JSON array of digest summaries.")
def list_command(
    group_id: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    remote: str | None,
    as_json: bool,
) -> None:
    """Digests, newest first."""
    utc = {key: value.replace(tzinfo=UTC) if value else None for key, value in (("since", since), ("until", until))}
    found = digests_client(remote).list_digests(group_id, status, utc["since"], utc["until"], limit)
    if as_json:  # with the seed's fields, as the HTTP job has them
        from facepipe.platform.history import seed_fields

        click.echo(json.dumps([{**seed_fields(d), **d} for d in found]))
        return
    for d in found:
        click.echo(
            f"{d['run_id']}  {d['status']:<10} {d['progress_percent']:>5.1f}%  group={d['group_id']}  "
            f"images={d['images_done']}/{d['images_to_digest']} failed={d['images_failed']}  "
            f"faces={d['faces_stored']}  started={d['start_time']}  {d['source']}"
        )


@digests.command("show")
@click.argument("run_id")
@click.option(
    "--face-ids", "face_ids", type=int, default=0, help="Also list up to this many ids of the faces it stored."
)
@REMOTE
@click.option("--json", "as_json", is_flag=True)
def show_command(run_id: str, face_ids: int, remote: str | None, as_json: bool) -> None:
    """One digest: status, progress, counts, times and errors."""
    from facepipe.clients.local import digest_face_ids
    from facepipe.platform.history import DigestNotFound, seed_fields

    try:
        summary = digests_client(remote).digest_summary(run_id)
    except DigestNotFound as err:
        _not_found(err)
    if face_ids:
        summary["face_ids"], summary["face_ids_next_offset"] = digest_face_ids(summary, limit=face_ids)
    if as_json:
        click.echo(json.dumps({**seed_fields(summary), **summary}))
        return
    for key, value in summary.items():
        if key not in ("failed_images", "not_listed", "errors", "face_ids"):
            click.echo(f"{key}: {value}")
    for entry in summary.get("not_listed", []):
        click.echo(f"not listed: {entry['path']}: {entry['reason']}")
    _more(summary.get("entries_not_listed") or 0, summary.get("not_listed", []))
    for failure in summary["failed_images"]:
        click.echo(f"failed: {failure['path']}: {failure['error']}")
    _more(summary["images_failed"] or 0, summary["failed_images"])
    for error in summary["errors"]:
        click.echo(f"error: {error}")
    for face_id in summary.get("face_ids", []):
        click.echo(f"face: {face_id}")


@digests.command("cancel")
@click.argument("run_id")
@REMOTE
def cancel_command(run_id: str, remote: str | None) -> None:
    """Cancel a queued or running digest; the faces it stored stay, a later digest does the rest."""
    from facepipe.platform.history import DigestNotFound

    try:
        summary = digests_client(remote).cancel_digest(run_id)
    except DigestNotFound as err:
        _not_found(err)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{run_id}: {summary['status']}" + (f" ({summary['message']})" if summary.get("message") else ""))


@digests.command("retry")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def retry_command(run_id: str, as_json: bool) -> None:
    """Re-execute a failed or canceled digest from its failure; chunks that succeeded are not redone."""
    from facepipe.platform.history import DigestNotFound

    try:
        summary = digests_client(None).retry_digest(run_id, on_progress=_progress_bar(f"retry {run_id[:8]}"))
    except DigestNotFound as err:
        _not_found(err)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    _print_summary(summary, as_json)
    if summary["status"] != "completed":
        sys.exit(1)


@main.command()
@click.option("--port", type=int, default=3000, show_default=True)
def ui(port: int) -> None:
    """Open the Dagster UI (webserver and daemon) on facepipe's instance."""
    from facepipe.clients.local import instance_for_digests, workspace_file

    workspace = workspace_file(instance_for_digests())
    # `dagster dev` serves a workspace file's code locations with the webserver and the daemon; each
    # start it warns that `dg dev` supersedes it, which a facepipe user has nothing to do about
    python_warnings = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), QUIET_DEV_COMMAND]))
    # the dagster of this interpreter, whether or not its environment is activated
    code = supervise(
        [sys.executable, "-m", "dagster", "dev", "-w", workspace, "-p", str(port)],
        env={**os.environ, "PYTHONWARNINGS": python_warnings},
    )
    # at once: a normal exit would first wind down the Dagster instance this process opened to find
    # the workspace, seconds on a busy machine, and a process manager waits for us to be gone
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# How long `dagster dev` gets to stop its webserver, daemon and code servers before they are killed
STOP_SECONDS = 7
QUIET_DEV_COMMAND = "ignore:Function `dev_command` is superseded"


def supervise(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run `command` in a process group of its own until it ends, or until this process is asked to
    stop (SIGTERM from a process manager, SIGINT from Ctrl-C): then the group is asked with SIGINT,
    which `dagster dev` handles, and whatever is left of it is killed after STOP_SECONDS. (A shell's
    background job starts with SIGINT ignored, which `dagster dev` would inherit and so ignore
    SIGTERM, which it maps to SIGINT.)"""
    import signal
    import subprocess
    import time

    child = subprocess.Popen(command, start_new_session=True, env=env)
    stop_by: list[float] = []

    def ask_to_stop(signum: int, frame: types.FrameType | None) -> None:
        if not stop_by:
            stop_by.append(time.monotonic() + STOP_SECONDS)
            _signal_group(child.pid, signal.SIGINT)

    signal.signal(signal.SIGTERM, ask_to_stop)
    signal.signal(signal.SIGINT, ask_to_stop)
    code = None
    while code is None and not (stop_by and time.monotonic() > stop_by[0]):
        try:
            code = child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(child.pid, signal.SIGKILL)  # code servers or a daemon that outlived it
    return 128 + signal.SIGTERM if code is None else code


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


main.add_command(search)
main.add_command(people)
main.add_command(store)
main.add_command(delete)
main.add_command(forget)
main.add_command(verify)


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="The address to listen on (0.0.0.0: every interface)."
)
@click.option("--port", type=int, default=8000, show_default=True)
def serve(host: str, port: int) -> None:
    """Serve the HTTP API (FastAPI on uvicorn; OpenAPI docs at /docs) over the local instance and store."""
    from facepipe import settings

    if not settings.api_key() and not settings.is_loopback(host):
        raise click.ClickException(
            f"--host {host} lets other machines call the API: set FACEPIPE_API_KEY first "
            "(or listen on 127.0.0.1, the default)"
        )
    from facepipe.api import serve as serve_api

    serve_api(host, port)


@main.command()
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    default=["dagster"],
    show_default=True,
    help="A Celery queue to serve (repeat for several). The machine that holds the embedded face store "
    "also serves facepipe_store: -q dagster -q facepipe_store.",
)
@click.option(
    "--processes", type=int, default=default_workers(), show_default=True, help="Worker processes (one step each)."
)
@click.option("--name", help="The worker's name in the run's events (default: facepipe-PID), @ this host.")
def worker(queues: tuple[str, ...], processes: int, name: str | None) -> None:
    """Run digest steps from the Celery broker at FACEPIPE_CELERY_BROKER, with the models loaded once."""
    from facepipe.clients.celery_worker import run_worker

    run_worker(list(queues), processes, name)
