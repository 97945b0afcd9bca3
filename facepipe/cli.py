"""The `facepipe` command: digests as Dagster runs on the local instance."""

import json
import os
import sys

import click
from pydantic import ValidationError

from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES


def _validation_message(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()
    )


@click.group()
def main():
    """facepipe: find, embed and store the faces of a photo collection, on Dagster."""


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--group", "group_id", required=True, help="The group (event, album) the faces go into.")
@click.option("--confidence", type=float, default=0.5, show_default=True, help="Drop faces detected below this.")
@click.option("--workers", type=int, default=os.cpu_count() or 1, show_default=True, help="Parallel worker processes.")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default=DEFAULT_PROFILE, show_default=True)
@click.option("--redigest", is_flag=True, help="Digest photos the group already has again.")
@click.option("--chunk-size", type=int, default=200, show_default=True, help="At most this many photos per step.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
def digest(path, group_id, confidence, workers, profile, redigest, chunk_size, as_json):
    """Digest the photos under PATH into a group, as a run on the local Dagster instance."""
    from tqdm import tqdm

    from facepipe.digests import digest_request, run_digest

    try:
        request = digest_request(path, group_id, confidence, profile, redigest, chunk_size)
        if workers < 1:
            raise click.BadParameter(f"must be at least 1, got {workers}", param_hint="--workers")
    except ValidationError as err:
        raise click.UsageError(_validation_message(err)) from None

    bar = tqdm(total=0, unit="img", desc=f"digest {group_id}", file=sys.stderr, disable=None)

    def show(summary):
        if summary["images_to_digest"] is not None and bar.total != summary["images_to_digest"]:
            bar.reset(total=summary["images_to_digest"])
        bar.n = summary["images_done"]
        bar.set_postfix(faces=summary["faces_detected"], failed=summary["images_failed"], refresh=False)
        bar.refresh()

    summary = run_digest(request, workers=workers, on_progress=show)
    bar.close()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"digest {summary['status']}: {summary['images_listed']} images listed, "
            f"{summary['images_skipped']} skipped as unchanged, {summary['images_done']} digested, "
            f"{summary['images_failed']} failed; {summary['faces_detected']} faces detected, "
            f"{summary['faces_dropped']} dropped below confidence {confidence}, {summary['faces_stored']} stored "
            f"({summary['faces_in_group']} in group {group_id!r}); {summary['duration_seconds']} s; "
            f"run {summary['run_id']}"
        )
        for failure in summary["failed_images"]:
            click.echo(f"  failed: {failure['path']}: {failure['error']}")
        for error in summary["errors"]:
            click.echo(f"  error: {error}")
    if summary["status"] != "completed":
        sys.exit(1)


@main.command()
@click.option("--port", type=int, default=3000, show_default=True)
def ui(port):
    """Open the Dagster UI (webserver and daemon) on facepipe's instance."""
    from facepipe import settings

    settings.prepare_dagster_home()
    os.execvp("dagster", ["dagster", "dev", "-m", "facepipe.definitions", "-p", str(port)])


if __name__ == "__main__":
    main()
