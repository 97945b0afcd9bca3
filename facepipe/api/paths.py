"""Photos as answers name them: by their paths within the folder or s3:// prefix they were digested
from (what the client knows), never by where the server keeps them."""

from pathlib import PurePosixPath

from dagster import DagsterInstance, RunsFilter

from facepipe.domain.request import PARTITION_TAG, SOURCE_TAG
from facepipe.store import StoredPoint, local_path


def sources_of_runs(instance: DagsterInstance, run_ids: set[str]) -> dict[str, str]:
    """The source (folder or s3:// prefix) each digest run read, by run id."""
    sources = {}
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.tags.get(SOURCE_TAG):
            sources[run_id] = run.tags[SOURCE_TAG]
    return sources


def group_sources(instance: DagsterInstance, group_id: str) -> list[str]:
    """The folders and s3:// prefixes digested into the group, longest first."""
    records = instance.get_run_records(RunsFilter(tags={PARTITION_TAG: group_id}))
    found = {r.dagster_run.tags[SOURCE_TAG] for r in records if SOURCE_TAG in r.dagster_run.tags}
    return sorted(found, key=len, reverse=True)


def path_in_sources(image_path: str, sources: list[str]) -> str:
    """A photo's path within the source of the group that holds it (the longest that does)."""
    path = local_path(image_path)
    return path_in_source(image_path, next((s for s in sources if path.startswith(s.rstrip("/") + "/")), None))


def path_in_source(image_path: str, source: str | None) -> str:
    """A photo's path within the source it was digested from (its file name when that is unknown):
    an answer never shows where the server keeps its photos."""
    path = local_path(image_path)
    if source and path.startswith(source.rstrip("/") + "/"):
        return path[len(source.rstrip("/")) + 1 :]
    return PurePosixPath(path).name


def photo_names(instance: DagsterInstance, ledger: list[StoredPoint]) -> dict[str, str]:
    """Each ledger row's photo by its path within its digest's source, by its stored path."""
    sources = sources_of_runs(instance, {p.payload["run_id"] for p in ledger if p.payload.get("run_id")})
    return {
        p.payload["image_path"]: path_in_source(p.payload["image_path"], sources.get(p.payload.get("run_id", "")))
        for p in ledger
    }
