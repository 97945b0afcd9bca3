"""The `facepipe search`, `people` and `store` commands (added to the `facepipe` group in cli/main.py).

Each command imports what it runs inside itself: search loads OpenCV and the models, people
SciPy, `people cluster` Dagster, and none of them should slow the others or `facepipe --help`.
"""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from facepipe import settings
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES
from facepipe.store import (
    FaceStore,
    StoreBusy,
    StoreError,
    is_local_mode_store,
    is_shard_per_collection_store,
    migrate_local_store,
    open_store_from_settings,
    split_shards_by_group,
)

if TYPE_CHECKING:
    from facepipe.domain.search import FacialArea

GROUP = click.option("--group", "group_id", required=True, help="The group (event, album) to look in.")
PROFILE = click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default=None,
    help="The model profile (default: the one the group was digested with).",
)
THRESHOLD = click.option(
    "--threshold",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Least cosine similarity (default: the profile's search threshold, 0.93 for dlib).",
)
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


@contextmanager
def open_store() -> Iterator[FaceStore]:
    """The face store, with a clear message if there is none yet or a run holds its lock."""
    if not settings.qdrant_url() and not settings.qdrant_path().exists():
        raise click.ClickException(f"no face store at {settings.qdrant_path()}: digest photos first")
    try:
        with open_store_from_settings() as store:
            yield store
    except StoreError as err:
        raise click.ClickException(str(err)) from None


def _profile_of(store: FaceStore, group_id: str, profile: str | None) -> str:
    from facepipe.domain.search import group_profiles

    profiles = group_profiles(store, group_id)
    if not profiles:
        raise click.ClickException(f"unknown group {group_id!r}: it has no faces; digest photos into it first")
    if profile and profile not in profiles:
        raise click.ClickException(f"group {group_id!r} has no faces with profile {profile!r} (it has {profiles})")
    return profile or profiles[0]


def _area(area: "FacialArea") -> str:
    return f"{area['x']},{area['y']} {area['w']}x{area['h']}"


@click.command()
@click.argument("selfie", type=click.Path(dir_okay=False))
@GROUP
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="At most this many matching faces per selfie face.",
)
@THRESHOLD
@PROFILE
@click.option("--all-faces", is_flag=True, help="Search with every face in the selfie, not only the largest.")
@AS_JSON
def search(
    selfie: str,
    group_id: str,
    top_k: int,
    threshold: float | None,
    profile: str | None,
    all_faces: bool,
    as_json: bool,
) -> None:
    """Find the group's photos showing the person in SELFIE, grouped by photo, best first."""
    from facepipe.domain.search import SearchError, group_profile, matching_photos, selfie_faces

    try:
        # embedded before the store is opened (a digest may want it meanwhile), with the profile
        # asked for, else the default: a group digested with another is embedded again
        if not Path(selfie).is_file():
            raise SearchError(f"no such selfie file: {selfie}")
        guessed = profile or DEFAULT_PROFILE
        faces = selfie_faces(selfie, guessed, all_faces)
        with open_store() as store:
            chosen = group_profile(store, group_id, profile)
            result = matching_photos(store, group_id, chosen, faces, top_k, threshold) if chosen == guessed else None
        if result is None:
            faces = selfie_faces(selfie, chosen, all_faces)
            with open_store() as store:
                result = matching_photos(store, group_id, chosen, faces, top_k, threshold)
    except SearchError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(
        f"{len(result.photos)} photos in group {group_id!r} match {Path(selfie).name} "
        f"(profile {result.profile}, similarity >= {result.threshold}, "
        f"{len(result.query_faces)} selfie face{'s' if len(result.query_faces) > 1 else ''})"
    )
    for photo in result.photos:
        click.echo(f"{photo.score:.4f}  {photo.image_path}")
        for m in photo.faces:
            person = f"person {m.person_id}" if m.person_id is not None else "no person yet"
            click.echo(f"    face {m.face_index} at {_area(m.facial_area)}  {m.score:.4f}  {person}  id {m.face_id}")


@click.group()
def people() -> None:
    """The people of a group: faces clustered into persons, named, merged and split by hand."""


@people.command("cluster")
@GROUP
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default=DEFAULT_PROFILE, show_default=True)
@click.option("--full", is_flag=True, help="Re-cluster every face (ids, names, merges and splits are kept).")
@AS_JSON
def cluster_command(group_id: str, profile: str, full: bool, as_json: bool) -> None:
    """Place the group's new faces into people (a run of the `people` asset on the instance)."""
    from facepipe.clients.local import run_people

    try:
        counts = run_people(group_id, profile, full)
    except LookupError as err:
        raise click.ClickException(str(err)) from None
    except (RuntimeError, StoreBusy) as err:
        raise click.ClickException(f"clustering failed: {err}") from None
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(
            f"{counts['people']} people, {counts['new_people']} new, from {counts['faces']} faces "
            f"({counts['faces_assigned']} placed); run {counts['run_id']}"
        )


@people.command("list")
@GROUP
@PROFILE
@AS_JSON
def list_command(group_id: str, profile: str | None, as_json: bool) -> None:
    """The group's people, most faces first."""
    from facepipe.domain.people import list_people

    with open_store() as store:
        found = list_people(store, group_id, _profile_of(store, group_id, profile))
    if as_json:
        click.echo(json.dumps(found))
        return
    if not found:
        click.echo(f"group {group_id!r} has no people yet: run `facepipe people cluster --group {group_id}`")
    for p in found:
        click.echo(
            f"person {p['person_id']:>4}  {p['face_count']:>5} faces  {p['name'] or '-':<20}  "
            f"{p['representative_image_path']}"
        )


@people.command("show")
@click.argument("person_id", type=int)
@GROUP
@PROFILE
@AS_JSON
def show_command(person_id: int, group_id: str, profile: str | None, as_json: bool) -> None:
    """One person: name, faces, and a thumbnail file per face."""
    from facepipe.domain.people import PersonNotFound, person_with_faces
    from facepipe.domain.thumbnails import face_thumbnails, read_stored_photo

    with open_store() as store:
        profile = _profile_of(store, group_id, profile)
        try:
            person = person_with_faces(store, group_id, person_id, profile)
        except PersonNotFound as err:
            raise click.ClickException(str(err)) from None
    records = person.pop("records")
    read: Callable[[str], tuple[bytes, str]] = read_stored_photo
    if any(face.payload["image_path"].startswith("s3://") for face in records):
        from facepipe.clients.local import photo_reader  # Dagster's instance: only for photos in S3

        read = photo_reader(records)
    thumbnails = face_thumbnails(records, read)
    for face in person["faces"]:
        face["thumbnail"] = str(thumbnails[face["face_id"]]) if thumbnails[face["face_id"]] else None
    if as_json:
        click.echo(json.dumps(person))
        return
    click.echo(
        f"person {person_id} ({person['name'] or 'no name'}): {person['face_count']} faces, "
        f"representative {person['representative_image_path']}"
    )
    for f in person["faces"]:
        click.echo(f"  {f['face_id']}  {f['image_path']} face {f['face_index']}  thumbnail {f['thumbnail']}")


@people.command("name")
@click.argument("person_id", type=int)
@click.argument("name")
@GROUP
@PROFILE
def name_command(person_id: int, name: str, group_id: str, profile: str | None) -> None:
    """Name a person (an empty NAME clears it)."""
    from facepipe.domain.people import PersonNotFound, name_person

    with open_store() as store:
        try:
            person = name_person(store, group_id, person_id, name, _profile_of(store, group_id, profile))
        except PersonNotFound as err:
            raise click.ClickException(str(err)) from None
    click.echo(f"person {person_id} is now {person['name']!r}")


@people.command("merge")
@click.argument("keep", type=int)
@click.argument("others", type=int, nargs=-1, required=True)
@GROUP
@PROFILE
def merge_command(keep: int, others: tuple[int, ...], group_id: str, profile: str | None) -> None:
    """Merge OTHERS into KEEP: their faces become KEEP's, and stay so through re-clustering."""
    from facepipe.domain.people import PersonNotFound, merge_people

    with open_store() as store:
        try:
            person = merge_people(store, group_id, keep, list(others), _profile_of(store, group_id, profile))
        except PersonNotFound as err:
            raise click.ClickException(str(err)) from None
    click.echo(f"person {keep} ({person['name'] or 'no name'}) now has {person['face_count']} faces")


@people.command("split")
@click.argument("person_id", type=int)
@click.argument("face_ids", nargs=-1, required=True)
@GROUP
@PROFILE
def split_command(person_id: int, face_ids: tuple[str, ...], group_id: str, profile: str | None) -> None:
    """Move FACE_IDS (see `people show`) out of a person into a new person."""
    from facepipe.domain.people import PersonNotFound, split_person

    with open_store() as store:
        try:
            person = split_person(store, group_id, person_id, list(face_ids), _profile_of(store, group_id, profile))
        except (PersonNotFound, ValueError) as err:
            raise click.ClickException(str(err)) from None
    click.echo(f"person {person['person_id']} is new, with {person['face_count']} faces from person {person_id}")


@click.group()
def store() -> None:
    """The embedded face store."""


@store.command("migrate")
def migrate_command() -> None:
    """Bring a face store written by an earlier facepipe to the current layout: from qdrant-client's
    local mode (before Qdrant Edge; the old files kept in a backup folder), or from a Qdrant Edge
    shard per collection to a shard per group. Opening the store does it too (a digest's first step
    would wait for it: ~0.7 ms of CPU a face); this does it now."""
    path = settings.qdrant_path()
    if settings.qdrant_url():
        raise click.ClickException("QDRANT_URL is set: a Qdrant server needs no migration")
    local = is_local_mode_store(path)
    if not local and not is_shard_per_collection_store(path):
        click.echo(f"nothing to migrate: {path} is neither a local-mode store nor a store of a shard per collection")
        return
    try:
        copied = migrate_local_store(path) if local else split_shards_by_group(path)
    except StoreBusy as err:
        raise click.ClickException(str(err)) from None
    counts = ", ".join(f"{n} {name}" for name, n in copied.items())
    if local:
        click.echo(f"migrated {path} to Qdrant Edge: {counts}; the old files are in {path / 'local-mode-backup'}")
    else:
        click.echo(f"split {path} into a shard per group: {counts}")
