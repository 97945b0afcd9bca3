"""The `facepipe delete`, `forget` and `verify` commands (facepipe.domain.forget), added to the
`facepipe` group in cli/main.py. Each imports what it runs inside itself: verify and forget load the
models, which `facepipe --help` need not pay for."""

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import click

from facepipe.cli.people import AS_JSON, GROUP, PROFILE, THRESHOLD, open_store
from facepipe.engine.profiles import DEFAULT_PROFILE, PROFILES

if TYPE_CHECKING:
    from facepipe.domain.forget import Deleted, Verification


def _report(deleted: "Deleted", what: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(deleted.to_dict()))
        return
    click.echo(
        f"deleted {what} from group {deleted.group_id!r}: {deleted.faces} faces, {deleted.photos} photos, "
        f"{deleted.people} people without faces left" + (f", {deleted.files} uploaded files" if deleted.files else "")
    )
    for path in deleted.image_paths:
        click.echo(f"  {path}")


def _photo(photo: str) -> str:
    """A photo as the store names it: its id as it is; a local path made absolute and real, as a
    digest lists it (an S3 URL as it is)."""
    try:
        return str(uuid.UUID(photo))
    except ValueError:
        return photo if photo.startswith("s3://") else os.path.realpath(photo)


@click.group()
def delete() -> None:
    """Delete a photo, a face, a person or a whole group: gone from search, people and thumbnails,
    and left out of the group's later digests."""


@delete.command("photo")
@click.argument("photo")
@GROUP
@PROFILE
@AS_JSON
def delete_photo_command(photo: str, group_id: str, profile: str | None, as_json: bool) -> None:
    """Delete PHOTO (its path, or its id) from the group: its faces, and its ledger row, kept as a
    tombstone so that no later digest of its folder brings it back. A photo uploaded to facepipe
    is removed from the disk too."""
    from facepipe.domain.forget import NothingToDelete, delete_photo

    with open_store() as store:
        try:
            deleted = delete_photo(store, group_id, _photo(photo), profile)
        except NothingToDelete as err:
            raise click.ClickException(str(err)) from None
    _report(deleted, f"photo {photo}", as_json)


@delete.command("face")
@click.argument("face_id")
@GROUP
@PROFILE
@AS_JSON
def delete_face_command(face_id: str, group_id: str, profile: str | None, as_json: bool) -> None:
    """Delete one face (its id, from `search` or `people show`); its photo stays without it."""
    from facepipe.domain.forget import NothingToDelete, delete_face

    with open_store() as store:
        try:
            deleted = delete_face(store, group_id, face_id, profile)
        except NothingToDelete as err:
            raise click.ClickException(str(err)) from None
    _report(deleted, f"face {face_id}", as_json)


@delete.command("person")
@click.argument("person_id", type=int)
@GROUP
@click.option("--with-photos", is_flag=True, help="Delete their photos too, with every face in them.")
@PROFILE
@AS_JSON
def delete_person_command(person_id: int, group_id: str, with_photos: bool, profile: str | None, as_json: bool) -> None:
    """Delete a person and their faces (their photos stay, without them, unless --with-photos)."""
    from facepipe.domain.forget import NothingToDelete, delete_person

    with open_store() as store:
        try:
            deleted = delete_person(store, group_id, person_id, profile, with_photos)
        except NothingToDelete as err:
            raise click.ClickException(str(err)) from None
    _report(deleted, f"person {person_id}", as_json)


@delete.command("group")
@click.argument("group_id")
@click.confirmation_option("--yes", prompt="Delete the whole group: every face, photo record and person?")
@AS_JSON
def delete_group_command(group_id: str, as_json: bool) -> None:
    """Delete GROUP_ID whole: faces, photo records, people, thumbnails and uploaded photos."""
    from facepipe.domain.forget import NothingToDelete, delete_group

    with open_store() as store:
        try:
            deleted = delete_group(store, group_id)
        except NothingToDelete as err:
            raise click.ClickException(str(err)) from None
    _report(deleted, "everything", as_json)


@click.command()
@click.argument("selfie", type=click.Path(dir_okay=False))
@GROUP
@THRESHOLD
@PROFILE
@click.option("--dry-run", is_flag=True, help="Show the faces that would be deleted, delete nothing.")
@AS_JSON
def forget(
    selfie: str, group_id: str, threshold: float | None, profile: str | None, dry_run: bool, as_json: bool
) -> None:
    """Forget the person in SELFIE: delete every face of the group that `facepipe search` finds
    for it. The photos stay, without those faces, and later digests keep them out."""
    from facepipe.domain.forget import faces_to_forget
    from facepipe.domain.forget import forget as forget_faces
    from facepipe.domain.search import SearchError, group_profile, selfie_faces

    try:
        if not Path(selfie).is_file():
            raise SearchError(f"no such selfie file: {selfie}")
        # embedded before the store is opened, with the profile asked for or the default (search does so)
        guessed = profile or DEFAULT_PROFILE
        faces = selfie_faces(selfie, guessed)
        with open_store() as store:
            chosen = group_profile(store, group_id, profile)
        if chosen != guessed:
            faces = selfie_faces(selfie, chosen)
        with open_store() as store:
            if dry_run:
                matches = faces_to_forget(store, group_id, chosen, faces, threshold)
            else:
                deleted = forget_faces(store, group_id, chosen, faces, threshold)
    except SearchError as err:
        raise click.ClickException(str(err)) from None
    if not dry_run:
        _report(deleted, f"the person in {Path(selfie).name}", as_json)
        return
    if as_json:
        click.echo(json.dumps(matches.to_dict()))
        return
    count = sum(len(photo.faces) for photo in matches.photos)
    click.echo(f"would delete {count} faces in {len(matches.photos)} photos (similarity >= {matches.threshold}):")
    for photo in matches.photos:
        for match in photo.faces:
            click.echo(f"  {match.score:.4f}  {photo.image_path} face {match.face_index}  id {match.face_id}")


@click.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--face", "face_id", help="A stored face (its id) to compare with one PHOTO, instead of two photos.")
@click.option("--group", "group_id", help="The group of --face.")
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default=None,
    help=f"The model profile (default: {DEFAULT_PROFILE}; with --face, the group's).",
)
@AS_JSON
def verify(
    photos: tuple[str, ...], face_id: str | None, group_id: str | None, profile: str | None, as_json: bool
) -> None:
    """Whether two photos show the same person (the largest face of each), at the search threshold;
    or, with --face and --group, a stored face and one photo."""
    from facepipe.domain.forget import VerifyError, verify_face
    from facepipe.domain.forget import verify as verify_photos

    try:
        if face_id is None:
            if len(photos) != 2:
                raise click.UsageError("give two photos, or one photo with --face FACE_ID --group GROUP")
            result = verify_photos(photos[0], photos[1], profile or DEFAULT_PROFILE)
        else:
            if len(photos) != 1 or not group_id:
                raise click.UsageError("with --face, give --group and one photo")
            with open_store() as store:
                result = verify_face(store, group_id, face_id, photos[0], profile)
    except VerifyError as err:
        raise click.ClickException(str(err)) from None
    _report_verification(result, as_json)


def _report_verification(result: "Verification", as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    answer = "the same person" if result.verified else "not the same person"
    click.echo(f"{answer}: similarity {result.similarity:.4f}, threshold {result.threshold} (profile {result.profile})")
    for side in (result.face1, result.face2):
        several = f" (the largest of its {side.faces_in_photo} faces)" if side.faces_in_photo > 1 else ""
        area = side.facial_area
        click.echo(f"  {side.photo}: face at {area['x']},{area['y']} {area['w']}x{area['h']}{several}")
