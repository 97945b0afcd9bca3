"""Bad input: a corpus of broken, odd and hostile files, built here (nothing binary in the repo),
mixed with good photos. Each is a per-photo error with a one-line reason, or digested correctly
where it is a valid image, or left out of the listing with a recorded reason; nothing fails a
chunk or a digest, and no photo costs a worker more than the stated budgets.

Tests run as root, for whom no permission bit holds: the unreadable file and folder are read by
the digest under `setpriv` with the capabilities that let root bypass permissions
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) dropped, so the kernel refuses them as it would refuse
any user.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facepipe import settings
from facepipe.engine import listing as listing_module
from facepipe.engine.faces import faces_in_chunk
from facepipe.engine.listing import list_images
from facepipe.engine.planning import ImageTask
from facepipe.engine.presets import PRESETS
from facepipe.store import FaceStore, local_path, stored_path
from facepipe_tests.conftest import REPORTS, SAMPLE_IMAGES, faces_by_photo

FACE_PHOTO = SAMPLE_IMAGES / "img1.jpg"  # one face (person01), 1382 x 1868
GOOD_PHOTOS = ["img2.jpg", "img3.jpg", "couple.jpg", "img47.jpg"]  # img47.jpg is a WebP named .jpg
# Pillow's transposition that shows a photo stored with each EXIF orientation (its inverse stores it)
STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@dataclass
class Kind:
    """One kind of input: where it is in the corpus and what must happen to it."""

    name: str
    path: str  # relative to the corpus folder
    expect: str  # "faces": digested with at least `faces` faces; "error": a per-photo error containing
    # `reason`; "not listed": left out of the listing with a reason containing `reason`
    reason: str = ""
    faces: int = 0
    in_digest: bool = True  # False: only the engine can stage it (a file changed between listing and reading)


def save(pil_image: Image.Image, path: Path, fmt: str, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.BytesIO()
    pil_image.save(out, fmt, **options)
    path.write_bytes(out.getvalue())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels of RGB and whose data holds a few bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(1000)))
        + png_chunk(b"IEND", b"")
    )


def black_png(width: int, height: int) -> bytes:
    """A real, complete PNG of width x height black pixels at 1 bit a pixel: 32,000 x 32,000 is
    ~124 KB, and decodes to 3 GB of BGR (just under OpenCV's own limit of 2^30 pixels)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)
    compressor, parts = zlib.compressobj(9), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is rewritten to claim width x height."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 90)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame: marker, length (2), precision (1), height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose screen and only frame claim width x height (at most 65,535 each) over one pixel's data."""
    size = struct.pack("<HH", width, height)
    return (
        b"GIF89a"
        + size
        + b"\x00\x00\x00"
        + b"\x2c"
        + struct.pack("<HH", 0, 0)
        + size
        + b"\x00"
        + b"\x02\x02\x4c\x01\x00"
        + b"\x3b"
    )


def tiff_claiming(width: int, height: int) -> bytes:
    """An uncompressed 8-bit grayscale TIFF whose tags claim width x height over 16 bytes of data."""
    tags = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, 16),
    ]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = data_offset if tag == 273 else value
        ifd += struct.pack("<HHI", tag, kind, 1) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(16)


def heic_header() -> bytes:
    """The start of an HEIC file (its `ftyp` box, brand heic) and nothing a decoder could use:
    enough to stand for the format, which neither OpenCV nor Pillow decodes here."""
    return struct.pack(">I", 24) + b"ftypheic" + struct.pack(">I", 0) + b"mif1heic" + bytes(200)


def build_corpus(folder: Path, unreadable: bool) -> list[Kind]:
    """Write the corpus into `folder`; the returned kinds say what must happen to each entry."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds: list[Kind] = []
    face = Image.open(FACE_PHOTO)
    face.load()

    def add(name, relative, expect, reason="", faces=0, in_digest=True):
        kinds.append(Kind(name, relative, expect, reason, faces, in_digest))
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        return folder / relative

    for name in GOOD_PHOTOS:
        shutil.copyfile(SAMPLE_IMAGES / name, add(f"good photo {name}", name, "faces", faces=1))
    # broken files
    add("zero-byte file", "empty.jpg", "error", "empty file").write_bytes(b"")
    data = FACE_PHOTO.read_bytes()
    add("truncated JPEG", "truncated.jpg", "error", "corrupt or truncated").write_bytes(data[: len(data) // 2])
    add("random bytes named .jpg", "random.jpg", "error", "not an image").write_bytes(
        np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes()
    )
    add("text named .png", "text.png", "error", "not an image").write_text("a text file, not a picture\n" * 20)
    # decompression bombs and huge files: refused before decoding or reading, by a stated budget
    add(
        "PNG header claiming 60,000 x 60,000", "bomb_header.png", "error", "refused: 60,000 x 60,000 pixels"
    ).write_bytes(png_claiming(60_000, 60_000))
    add(
        "JPEG header claiming 65,000 x 65,000", "bomb_header.jpg", "error", "refused: 65,000 x 65,000 pixels"
    ).write_bytes(jpeg_claiming(65_000, 65_000))
    add(
        "GIF header claiming 65,535 x 65,535", "bomb_header.gif", "error", "refused: 65,535 x 65,535 pixels"
    ).write_bytes(gif_claiming(65_535, 65_535))
    add(
        "TIFF header claiming 100,000 x 100,000", "bomb_header.tif", "error", "refused: 100,000 x 100,000 pixels"
    ).write_bytes(tiff_claiming(100_000, 100_000))
    add(
        "124 KB PNG of 32,000 x 32,000 that OpenCV would decode",
        "bomb_real.png",
        "error",
        "refused: 32,000 x 32,000 pixels",
    ).write_bytes(black_png(32_000, 32_000))
    with open(add("2 GiB sparse file named .jpg", "huge.jpg", "error", "refused: the file is 2.0 GiB"), "wb") as f:
        f.truncate(2 * 2**30)
    # valid images in every layout and format: digested, their face found
    rgb = np.asarray(face)
    save(
        Image.fromarray((rgb.astype(np.uint16) * 257)[..., 0]).convert("I;16"),
        add("16-bit PNG (grayscale, 16 bits a pixel)", "layouts/gray16.png", "faces", faces=1),
        "PNG",
    )
    save(face.convert("L"), add("grayscale JPEG", "layouts/gray.jpg", "faces", faces=1), "JPEG")
    save(face.convert("CMYK"), add("CMYK JPEG", "layouts/cmyk.jpg", "faces", faces=1), "JPEG")
    save(face.convert("RGBA"), add("RGBA PNG", "layouts/rgba.png", "faces", faces=1), "PNG")
    save(
        face.convert("P", palette=Image.Palette.ADAPTIVE),
        add("palette PNG", "layouts/palette.png", "faces", faces=1),
        "PNG",
    )
    save(face, add("BMP", "formats/face.bmp", "faces", faces=1), "BMP")
    save(face, add("TIFF", "formats/face.tif", "faces", faces=1), "TIFF")
    save(face, add("WebP", "formats/face.webp", "faces", faces=1), "WEBP")
    save(face.convert("P", palette=Image.Palette.ADAPTIVE), add("GIF", "formats/face.gif", "faces", faces=1), "GIF")
    half = face.resize((face.width // 2, face.height // 2))
    save(half, add("AVIF (decoded by Pillow)", "formats/face.avif", "faces", faces=1), "AVIF")
    add("HEIC", "formats/face.heic", "error", "unsupported format: HEIC").write_bytes(heic_header())
    for orientation, transpose in STORE_FOR_ORIENTATION.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(
            face.transpose(transpose),
            add(f"EXIF orientation {orientation}", f"orientation/o{orientation}.jpg", "faces", faces=1),
            "JPEG",
            exif=exif.tobytes(),
        )
    # odd sizes: no face, one pixel, a 30,000 x 200 panorama with a face in its middle
    save(
        Image.fromarray(np.random.default_rng(2).integers(0, 256, (480, 640, 3), np.uint8)),
        add("image with no face", "sizes/noise.png", "faces", faces=0),
        "PNG",
    )
    save(Image.new("RGB", (1, 1), (200, 100, 50)), add("1 x 1 image", "sizes/one_pixel.png", "faces", faces=0), "PNG")
    panorama = Image.new("RGB", (30_000, 200), (120, 120, 120))
    panorama.paste(face.crop((255, 255, 1121, 1121)).resize((200, 200)), (15_000, 0))  # its face: 355..1021
    save(panorama, add("30,000 x 200 panorama", "sizes/panorama.jpg", "faces", faces=1), "JPEG")
    # names and depth
    shutil.copyfile(
        SAMPLE_IMAGES / "img5.jpg", add("name with spaces", "names/a photo with spaces.jpg", "faces", faces=1)
    )
    shutil.copyfile(SAMPLE_IMAGES / "img6.jpg", add("unicode name", "names/ünïcødé 照片 😀.jpg", "faces", faces=1))
    shutil.copyfile(
        SAMPLE_IMAGES / "img13.jpg",
        add("name with bytes that are not UTF-8", os.fsdecode(b"names/latin1 caf\xe9.jpg"), "faces", faces=1),
    )
    deep = "/".join(f"d{i:02d}" for i in range(40))
    shutil.copyfile(SAMPLE_IMAGES / "img7.jpg", add("40-deep folder tree", f"{deep}/deep.jpg", "faces", faces=1))
    # links: never followed, each recorded
    os.symlink(".", add("symlink loop (ln -s . loop)", "loop", "not listed", "symbolic link, not followed"))
    os.symlink("b.jpg", add("symlink cycle a.jpg -> b.jpg", "links/a.jpg", "not listed", "symbolic link, not followed"))
    os.symlink("a.jpg", add("symlink cycle b.jpg -> a.jpg", "links/b.jpg", "not listed", "symbolic link, not followed"))
    os.symlink(
        SAMPLE_IMAGES / "img8.jpg",
        add("symlink to a photo outside the folder", "links/outside.jpg", "not listed", "symbolic link, not followed"),
    )
    os.symlink(
        SAMPLE_IMAGES,
        add(
            "symlink to a folder outside the folder",
            "links/outside_folder",
            "not listed",
            "symbolic link, not followed",
        ),
    )
    os.symlink(
        "../img2.jpg",
        add("symlink to a photo inside the folder", "links/inside.jpg", "not listed", "symbolic link, not followed"),
    )
    os.mkfifo(add("named pipe called .jpg", "pipe.jpg", "not listed", "not a regular file"))
    if unreadable:
        secret = add("unreadable file", "private/secret.jpg", "error", "cannot read file: Permission denied")
        shutil.copyfile(SAMPLE_IMAGES / "img9.jpg", secret)
        secret.chmod(0)
        nameless = add(
            "unreadable file without an extension",
            "private/no_extension",
            "not listed",
            "file not read to tell whether it is a photo: Permission denied",
        )
        shutil.copyfile(SAMPLE_IMAGES / "img9.jpg", nameless)
        nameless.chmod(0)
        closed = add("unreadable subfolder", "closed", "not listed", "folder not read: Permission denied")
        closed.mkdir()
        shutil.copyfile(SAMPLE_IMAGES / "img10.jpg", closed / "inside.jpg")
        closed.chmod(0)
    return kinds


def stage_changes_after_listing(folder: Path) -> list[Kind]:
    """Files listed, then deleted or replaced before they are read (what a digest meets when a
    folder changes under it): only the engine can place a change between its two steps."""
    kinds = []
    for name in ("gone.jpg", "now_a_link.jpg", "now_text.jpg", "now_another_photo.jpg", "now_a_folder.jpg"):
        shutil.copyfile(SAMPLE_IMAGES / "img11.jpg", folder / name)
    kinds.append(
        Kind("file deleted between listing and processing", "gone.jpg", "error", "it is gone", in_digest=False)
    )
    kinds.append(
        Kind(
            "file replaced by a symlink after listing",
            "now_a_link.jpg",
            "error",
            "symbolic link, not followed",
            in_digest=False,
        )
    )
    kinds.append(Kind("file replaced by text after listing", "now_text.jpg", "error", "not an image", in_digest=False))
    kinds.append(
        Kind("file replaced by another photo after listing", "now_another_photo.jpg", "faces", faces=2, in_digest=False)
    )
    kinds.append(
        Kind(
            "file replaced by a folder after listing",
            "now_a_folder.jpg",
            "error",
            "a folder, not a file",
            in_digest=False,
        )
    )
    return kinds


def change_after_listing(folder: Path) -> None:
    (folder / "gone.jpg").unlink()
    (folder / "now_a_link.jpg").unlink()
    os.symlink(SAMPLE_IMAGES / "img12.jpg", folder / "now_a_link.jpg")
    (folder / "now_text.jpg").write_text("not a photo any more")
    shutil.copyfile(SAMPLE_IMAGES / "couple.jpg", folder / "now_another_photo.jpg")
    (folder / "now_a_folder.jpg").unlink()
    (folder / "now_a_folder.jpg").mkdir()


def tally(kinds: list[Kind]) -> str:
    """How many kinds of input were tried, and what happened to them."""
    bad = [k for k in kinds if not k.name.startswith("good photo")]
    return (
        f"{len(bad)} kinds of bad input tried, with {len(kinds) - len(bad)} good photos: "
        f"{sum(k.expect == 'error' for k in bad)} per-photo errors, "
        f"{sum(k.expect == 'faces' for k in bad)} valid images digested correctly, "
        f"{sum(k.expect == 'not listed' for k in bad)} entries not listed, each with its reason"
    )


def outcome(kind: Kind, result) -> str | None:
    """What is wrong with `result` (an ImageResult) for `kind`, or None."""
    if kind.expect == "error":
        if not result.error or kind.reason not in result.error:
            return f"expected an error with {kind.reason!r}, got error={result.error!r}"
        if "\n" in result.error or len(result.error) > 300:
            return f"the reason is not one short line: {result.error!r}"
        return None
    if result.error:
        return f"expected it digested, got error {result.error!r}"
    if len(result.faces) < kind.faces or (kind.faces == 0 and result.faces):
        return f"expected {kind.faces} face(s), found {len(result.faces)}"
    return None


@pytest.mark.slow  # the whole generated corpus through the engine (about 10 s)
def test_the_engine_lists_and_reads_every_kind_of_bad_input(tmp_path):
    """Every kind through list_images and faces_in_chunk (the digest's chunk step, in process)."""
    corpus = tmp_path / "corpus"
    kinds = build_corpus(corpus, unreadable=False) + stage_changes_after_listing(corpus)

    start = time.perf_counter()
    listing = list_images(corpus)
    listed_seconds = time.perf_counter() - start
    change_after_listing(corpus)
    # the corpus's faces are large (every outcome holds at 160 px): the portraits preset, a fifth of the time
    tasks = [ImageTask(f.path, f.size, f.mtime_ns) for f in listing]
    results = faces_in_chunk(tasks, "dlib", 0.5, min_face_size=PRESETS["portraits"])
    by_path = {r.path: r for r in results.images}
    not_listed = {n.path: n.reason for n in listing.not_listed}

    problems = []
    for kind in kinds:
        path = str(corpus / kind.path)
        if kind.expect == "not listed":
            if path in by_path or kind.reason not in not_listed.get(path, ""):
                problems.append(f"{kind.name}: expected not listed with {kind.reason!r}, got {not_listed.get(path)!r}")
        elif path not in by_path:
            problems.append(f"{kind.name}: not listed ({not_listed.get(path)!r})")
        elif problem := outcome(kind, by_path[path]):
            problems.append(f"{kind.name}: {problem}")
    assert not problems, "\n".join(problems)
    assert len(by_path) + len(not_listed) == len(kinds)  # nothing else listed, nothing lost silently

    # the photo a link inside the folder points to is listed once, under its own path
    assert sum(1 for p in by_path if p.endswith("/img2.jpg")) == 1
    # the panorama's face where it was pasted, in the panorama's pixels
    (panorama_face,) = by_path[str(corpus / "sizes/panorama.jpg")].faces
    # the pasted face spans 15,023 to 15,177 (centre 15,100); a detector's box is a little wider
    x, _, width, _ = panorama_face.box
    assert abs(x + width / 2 - 15_100) <= 20 and 150 <= width <= 220
    REPORTS.append(
        "bad input: the engine (list_images + faces_in_chunk)\n"
        + tally(kinds)
        + f"; listing took {listed_seconds * 1000:.0f} ms"
    )


def test_exif_orientations_give_boxes_in_displayed_coordinates(tmp_path):
    """Each orientation 2 to 8 is stored so that, once shown, it is the unrotated photo: the face
    must be found at the same place as in the unrotated photo itself."""
    face = Image.open(FACE_PHOTO)
    paths = []
    for orientation, transpose in STORE_FOR_ORIENTATION.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        save(face.transpose(transpose), path, "JPEG", exif=exif.tobytes(), quality=95)
        paths.append(path)
    results = faces_in_chunk([ImageTask(str(FACE_PHOTO))] + [ImageTask(str(p)) for p in paths], "dlib", 0.5).images
    reference = results[0]
    ((x, y, w, h),) = [f.box for f in reference.faces]
    for orientation, result in zip(STORE_FOR_ORIENTATION, results[1:]):
        assert result.error is None and (result.width, result.height) == (reference.width, reference.height), (
            orientation
        )
        assert len(result.faces) == 1, orientation
        fx, fy, fw, fh = result.faces[0].box
        overlap_w = max(0, min(x + w, fx + fw) - max(x, fx))
        overlap_h = max(0, min(y + h, fy + fh) - max(y, fy))
        union = w * h + fw * fh - overlap_w * overlap_h
        assert overlap_w * overlap_h / union > 0.8, (orientation, (x, y, w, h), result.faces[0].box)
    # decoded reduced (JPEGs, faces of 320 px and more): the same place, in full-size pixels
    reduced = faces_in_chunk([ImageTask(str(p)) for p in paths], "dlib", 0.5, min_face_size=320).images
    for orientation, result in zip(STORE_FOR_ORIENTATION, reduced):
        fx, fy, fw, fh = result.faces[0].box
        assert abs(fx - x) < 0.1 * w and abs(fy - y) < 0.1 * h, (orientation, (x, y, w, h), result.faces[0].box)


class DeletingScandir:
    """os.scandir that deletes `victims` after the folder's entries were read, before the listing
    looks at them: what happens when files or folders are deleted while a digest lists."""

    real = os.scandir

    def __init__(self, victims):
        self.victims = victims

    def __call__(self, folder):
        if not isinstance(folder, (str, os.PathLike)):  # shutil.rmtree's own scandir of a folder's fd
            return self.real(folder)
        entries = list(self.real(folder))
        for victim in self.victims:
            if Path(victim).parent == Path(folder) and Path(victim).exists():
                shutil.rmtree(victim) if Path(victim).is_dir() else os.unlink(victim)
        return _Entries(entries)


class _Entries(list):
    def __enter__(self):
        return iter(self)

    def __exit__(self, *exc):
        return False


def test_entries_deleted_while_listing_are_recorded(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    for name in ("keep.jpg", "vanishing.jpg", "sub/inner.jpg"):
        shutil.copyfile(SAMPLE_IMAGES / "img1.jpg", tmp_path / name)
    monkeypatch.setattr(listing_module.os, "scandir", DeletingScandir([tmp_path / "vanishing.jpg", tmp_path / "sub"]))
    listing = list_images(tmp_path)
    assert [Path(f.path).name for f in listing] == ["keep.jpg"]
    reasons = {Path(n.path).name: n.reason for n in listing.not_listed}
    assert reasons == {
        "vanishing.jpg": "gone while listing (deleted or moved)",
        "sub": "folder not read: gone while listing (deleted or moved)",
    }


# The child's peak RSS is its VmHWM: ru_maxrss would keep the parent's peak across fork and exec.
PEAK_RSS_KIB = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
DECODE_IN_CHILD = f"""
import json, sys
from facepipe.engine.faces import faces_in_chunk
from facepipe.engine.planning import ImageTask
from facepipe.store import FaceStore, local_path, stored_path
from facepipe.engine.profiles import load_profile
load_profile("dlib")
before = {PEAK_RSS_KIB}
result = faces_in_chunk([ImageTask(p) for p in sys.argv[1:]], "dlib", 0.5)
print(json.dumps({{"errors": [r.error for r in result.images], "before_kib": before, "peak_kib": {PEAK_RSS_KIB}}}))
"""


def test_bombs_and_huge_files_are_refused_with_memory_bounded_in_the_worker(tmp_path):
    """The decode runs in a child process, as in a worker; its peak RSS is read after the refusals.
    Decoded, the 32,000 x 32,000 PNG alone would take 3 GB (the issue measured 6 GiB)."""
    bombs = {
        "header.png": png_claiming(60_000, 60_000),
        "header.jpg": jpeg_claiming(65_000, 65_000),
        "real.png": black_png(32_000, 32_000),
        "header.gif": gif_claiming(65_535, 65_535),
        "header.tif": tiff_claiming(100_000, 100_000),
    }
    for name, data in bombs.items():
        (tmp_path / name).write_bytes(data)
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(2 * 2**30)
    paths = [str(tmp_path / name) for name in [*bombs, "huge.jpg"]]
    child = subprocess.run([sys.executable, "-c", DECODE_IN_CHILD, *paths], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    measured = json.loads(child.stdout)
    pixel_budget, byte_budget = settings.max_image_pixels() / 1e6, settings.max_image_bytes() / 2**20
    assert measured["errors"][0].startswith(
        f"refused: 60,000 x 60,000 pixels (3,600.0 megapixels) is more than the {pixel_budget:,.1f} megapixels"
    )
    assert measured["errors"][1].startswith("refused: 65,000 x 65,000 pixels")
    assert measured["errors"][2].startswith("refused: 32,000 x 32,000 pixels (1,024.0 megapixels)")
    assert measured["errors"][3].startswith("refused: 65,535 x 65,535 pixels")
    assert measured["errors"][4].startswith("refused: 100,000 x 100,000 pixels")
    assert measured["errors"][5] == (
        f"refused: the file is 2.0 GiB, more than the {byte_budget:,.1f} MiB a photo may "
        "have (FACEPIPE_MAX_IMAGE_BYTES)"
    )
    grew_mb = (measured["peak_kib"] - measured["before_kib"]) / 1024
    assert grew_mb < 100, f"the refusals grew the process by {grew_mb:.0f} MB"
    REPORTS.append(
        "bad input: memory of a worker refusing bombs and a 2 GiB file\n"
        f"peak RSS {measured['before_kib'] / 1024:.0f} MB with the models loaded, {measured['peak_kib'] / 1024:.0f} MB "
        f"after the {len(paths)} refusals (+{grew_mb:.1f} MB)"
    )


def test_opencv_never_speaks_to_the_user():
    """What OpenCV alone would refuse (more than its 2^30 pixels) never reaches a user as its
    assertion text, even where facepipe's own budget is lifted."""
    from facepipe.engine.images import decode_image
    from facepipe.engine.listing import ImageError

    os.environ["FACEPIPE_MAX_IMAGE_PIXELS"] = str(10**12)
    try:
        with pytest.raises(ImageError) as raised:
            decode_image(png_claiming(60_000, 60_000))
    finally:
        del os.environ["FACEPIPE_MAX_IMAGE_PIXELS"]
    assert "CV_IO_MAX_IMAGE_PIXELS" not in str(raised.value) and "\n" not in str(raised.value)
    assert str(raised.value).startswith(("refused:", "cannot decode:"))


def test_a_selfie_that_is_a_bomb_or_huge_is_a_one_line_error(tmp_path):
    from facepipe.domain.search import SearchError, selfie_faces

    (tmp_path / "bomb.png").write_bytes(black_png(32_000, 32_000))
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(2 * 2**30)
    for name, reason in (("bomb.png", "refused: 32,000 x 32,000 pixels"), ("huge.jpg", "refused: the file is 2.0 GiB")):
        with pytest.raises(SearchError) as raised:
            selfie_faces(str(tmp_path / name), "dlib")
        assert str(raised.value).startswith(f"cannot read the selfie {tmp_path / name}: {reason}")
        assert "\n" not in str(raised.value)


def test_listing_20000_small_files(tmp_path):
    """Listing time and memory for a folder of 20,000 small files, measured (printed), not asserted."""
    child = tmp_path / "many"
    child.mkdir()
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, "PNG")
    for i in range(20_000):
        (child / f"p{i:05d}.png").write_bytes(tiny.getvalue())
    script = f"""
import json, sys, time
from facepipe.engine.listing import list_images
before = {PEAK_RSS_KIB}
start = time.perf_counter()
listing = list_images(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({{"files": len(listing), "not_listed": len(listing.not_listed), "seconds": seconds,
                  "before_mb": before / 1024, "peak_mb": {PEAK_RSS_KIB} / 1024}}))
"""
    measured = json.loads(
        subprocess.run(
            [sys.executable, "-c", script, str(child)], capture_output=True, text=True, check=True, timeout=300
        ).stdout
    )
    assert measured["files"] == 20_000 and measured["not_listed"] == 0
    REPORTS.append(
        "bad input: listing 20,000 small files\n"
        f"{measured['seconds']:.2f} s; the process's peak RSS {measured['before_mb']:.0f} MB before "
        "(Python, numpy, cv2), "
        f"{measured['peak_mb']:.0f} MB after (+{measured['peak_mb'] - measured['before_mb']:.1f} MB)"
    )


def drop_root_privileges() -> list[str] | None:
    """A command prefix that runs as root without the capabilities that bypass permissions, or []
    if this is not root (permissions hold already); None if root and no setpriv."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.e2e
def test_a_digest_of_the_corpus_completes_and_stores_every_good_photo(tmp_path):
    """One real `facepipe digest` (2 workers) of the corpus mixed with good photos."""
    prefix = drop_root_privileges()
    corpus = tmp_path / "corpus"
    kinds = [k for k in build_corpus(corpus, unreadable=prefix is not None) if k.in_digest]
    home = tmp_path / "home"
    env = {**os.environ, "FACEPIPE_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    run = subprocess.run(
        [
            *(prefix or []),
            sys.executable,
            "-m",
            "facepipe.cli",
            "digest",
            str(corpus),
            "--group",
            "bad-input",
            "--json",
            "--workers",
            "2",
            "--preset",  # the corpus's faces are large, as in the engine's test above
            "portraits",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.stdout.strip(), run.stderr[-4000:]
    summary = json.loads(run.stdout)
    assert summary["status"] == "completed", summary["errors"]

    failed = {f["path"]: f["error"] for f in summary["failed_images"]}
    not_listed = {n["path"]: n["reason"] for n in summary["not_listed"]}
    stored = faces_by_photo(home, "bad-input")
    stored_paths = {p.payload["image_path"] for faces in stored.values() for p in faces}
    problems = []
    for kind in kinds:
        path = stored_path(str(corpus / kind.path))  # as the store and the summary write it
        if kind.expect == "not listed":
            if kind.reason not in not_listed.get(path, ""):
                problems.append(f"{kind.name}: expected not listed with {kind.reason!r}, got {not_listed.get(path)!r}")
        elif kind.expect == "error":
            if kind.reason not in failed.get(path, ""):
                problems.append(f"{kind.name}: expected an error with {kind.reason!r}, got {failed.get(path)!r}")
        elif path in failed:
            problems.append(f"{kind.name}: failed: {failed[path]}")
        elif kind.faces and path not in stored_paths:
            problems.append(f"{kind.name}: no face stored")
    assert not problems, "\n".join(problems)
    expected = {"error": 0, "faces": 0, "not listed": 0}
    for kind in kinds:
        expected[kind.expect] += 1
    assert summary["images_failed"] == expected["error"] and summary["entries_not_listed"] == expected["not listed"]
    assert summary["images_listed"] == expected["error"] + expected["faces"]

    # memory, per worker process: what each chunk step observed of its own peak
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        peaks = [  # each chunk's last observation (those of its progress on the way have none)
            e.asset_observation.metadata["worker_peak_rss_mb"].value
            for e in instance.all_logs(summary["run_id"], of_type=DagsterEventType.ASSET_OBSERVATION)
            if "worker_peak_rss_mb" in e.asset_observation.metadata
        ]
    assert peaks and max(peaks) < 1000, peaks
    REPORTS.append(
        "bad input: one real digest of the corpus\n"
        + tally(kinds)
        + ("" if prefix is not None else " (no setpriv: the unreadable file and folder left out)")
        + f"; {summary['faces_stored']} faces stored; workers' peak RSS {', '.join(f'{p:.0f}' for p in peaks)} MB; "
        f"{summary['duration_seconds']} s"
    )


def test_a_photo_whose_name_is_not_utf8_is_digested_found_and_skipped_when_unchanged(tmp_path, monkeypatch):
    """A name with a Latin-1 byte (as an old camera or a Windows share writes it), digested by a
    real in-process run beside a UTF-8 name: stored under a text form that names the byte, found by
    search, its thumbnail cut from the file, and a second digest skips it as unchanged."""
    from dagster import instance_for_test

    from facepipe.domain.search import search_faces
    from facepipe.domain.thumbnails import face_thumbnails
    from facepipe_tests.test_assets import materialize_digest, metadata

    monkeypatch.setenv("FACEPIPE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "party"
    folder.mkdir()
    latin1 = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9 \\ 1.jpg")  # a backslash too
    shutil.copyfile(SAMPLE_IMAGES / "img1.jpg", latin1)
    shutil.copyfile(SAMPLE_IMAGES / "img20.jpg", folder / "café.jpg")
    text = stored_path(latin1)
    assert text == str(folder) + "/caf\\xe9 \\\\ 1.jpg" and local_path(text) == latin1
    assert stored_path(str(folder / "café.jpg")) == str(folder / "café.jpg")  # UTF-8 names as they are

    with instance_for_test() as instance:
        from facepipe.defs.partitions import GROUPS

        instance.add_dynamic_partitions(GROUPS, ["party"])
        first = materialize_digest(instance, folder, tmp_path / "store")
        assert first.success
        assert metadata(first, "faces")["images_failed"] == 0
        assert metadata(first, "stored_faces")["faces_stored"] == 2
        with FaceStore.open(path=tmp_path / "store") as store:
            faces = list(store.scroll_faces("party", "dlib"))
            assert sorted(f.payload["image_path"] for f in faces) == sorted([text, str(folder / "café.jpg")])
            found = search_faces(store, str(SAMPLE_IMAGES / "img2.jpg"), "party")  # img2: her, as img1
        assert [p.image_path for p in found.photos][:1] == [text]
        thumbnails = face_thumbnails([f for f in faces if f.payload["image_path"] == text])
        assert all(path is not None and path.is_file() for path in thumbnails.values())

        again = materialize_digest(instance, folder, tmp_path / "store")
        assert again.success
        assert metadata(again, "image_list")["images_skipped"] == 2
        assert metadata(again, "stored_faces")["faces_stored"] == 0
