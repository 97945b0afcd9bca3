"""Names in the store: collection names, deterministic point ids, and photo paths as stored."""

import os
import re
import uuid

# Fixed namespace: the same face always gets the same point id, on every machine.
ID_NAMESPACE = uuid.UUID("5b4c1a8e-6f3d-4d52-9c1e-3a7f0e2b9d10")


def faces_collection(profile: str) -> str:
    return "faces_" + profile.replace("-", "_")


def images_collection(profile: str) -> str:
    return "images_" + profile.replace("-", "_")


def people_collection(profile: str) -> str:
    return "people_" + profile.replace("-", "_")


def kind_of(collection: str) -> str:
    """`faces`, `images` or `people`: what a collection holds."""
    return collection.split("_", 1)[0]


def profile_of(collection: str) -> str:
    """The model profile a collection is for."""
    return collection.split("_", 1)[1].replace("_", "-")


def face_point_id(group_id: str, image_path: str, content_hash: str, face_index: int, profile: str) -> str:
    """A face's id: its group, its photo's path and bytes, its index in the photo, the profile. The
    path is part of it, so the same photo under two names has a set of faces each: both paths are
    found by search, and editing one copy leaves the other's faces alone. (Before, ids had no path:
    such faces keep their ids until their photo is digested again; see FaceStore.digested_images.)"""
    key = f"face:{group_id}:{stored_path(image_path)}:{content_hash}:{face_index}:{profile}"
    return str(uuid.uuid5(ID_NAMESPACE, key))


def image_point_id(group_id: str, image_path: str, profile: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"image:{group_id}:{stored_path(image_path)}:{profile}"))


def person_point_id(group_id: str, person_id: int, profile: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"person:{group_id}:{person_id}:{profile}"))


def stored_path(path: str) -> str:
    """A photo's path as the store keeps it (in payloads and ids): the path itself, unless its name
    holds bytes that are not UTF-8 (Python keeps them as surrogates, which no JSON, payload or id
    can hold): then each such byte is written `\\xNN` and each backslash `\\\\`, as bash's
    `$'...'` reads them. `local_path` turns it back into the path that opens the file.

    A UTF-8 name is kept as it is, so its ledger id and payloads are what stores written before hold.
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        raw = os.fsencode(path).replace(b"\\", b"\\\\")
        return raw.decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def local_path(text: str) -> str:
    """The path `stored_path` wrote `text` for: the file's name with its bytes that are not UTF-8.

    Text whose escapes do not spell such bytes is a path of its own (a UTF-8 name may hold
    backslashes), returned as it is.
    """
    if "\\x" not in text or _ESCAPE.sub("", text).count("\\"):
        return text
    raw = _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)
    try:
        path = os.fsdecode(os.fsencode(raw))
    except UnicodeEncodeError:  # an escape of a byte below 0x80: never written by stored_path
        return text
    return path if stored_path(path) == text else text
