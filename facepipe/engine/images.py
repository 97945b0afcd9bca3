"""Decode photos robustly, within a budget: an image of more than `max_image_pixels` is refused by
the size its header states, before any pixel is decoded (a decompression bomb)."""

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from facepipe import settings

if TYPE_CHECKING:
    import PIL.Image

from facepipe.engine.listing import AVIF_BRANDS, HEIF_BRANDS, ImageError, file_brand, looks_like_image, size_text


@dataclass(frozen=True)
class ImageHeader:
    """What an image's headers say, read without decoding a pixel."""

    format: str  # Pillow's name of it: JPEG, PNG, GIF, WEBP, TIFF, AVIF...
    width: int  # as shown: for a JPEG, its EXIF orientation applied
    height: int


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _facepipe_budget_only() -> Iterator[None]:
    """Lift Pillow's own decompression-bomb check (a global) while Pillow reads: it raises without
    saying the image's size, and facepipe's budget, which names it, is checked before any decode."""
    from PIL import Image

    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def read_header(data: bytes) -> ImageHeader | None:
    """The image's format and size from its headers (Pillow opens lazily: it reads the headers and
    decodes no pixel), or None where Pillow cannot tell."""
    from PIL import Image

    try:
        with _facepipe_budget_only(), Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = _orientation(image) if image.format == "JPEG" else 1
            header = ImageHeader(image.format or "", width, height)
    except Exception:  # whatever Pillow cannot read, OpenCV may; if not, decoding says so
        return None
    if orientation in (5, 6, 7, 8):  # a quarter turn: width and height swap
        header = ImageHeader(header.format, height, width)
    return header


def _orientation(image: "PIL.Image.Image") -> int:
    from PIL import ExifTags

    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a broken EXIF block: shown as stored
        return 1


def check_pixels(header: ImageHeader | None) -> None:
    """Refuse an image whose headers state more pixels than `max_image_pixels` (a decompression bomb)."""
    budget = settings.max_image_pixels()
    if header and header.width * header.height > budget:
        raise ImageError(
            f"refused: {header.width:,} x {header.height:,} pixels ({size_text(header.width * header.height, 'px')}) "
            f"is more than the {size_text(budget, 'px')} a photo may have (FACEPIPE_MAX_IMAGE_PIXELS; "
            "a decompression bomb, or a panorama to scale down first)"
        )


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """A JPEG's (width, height) as shown, EXIF orientation applied, from its headers only.
    None if `data` is not a readable JPEG."""
    header = read_header(data)
    return (header.width, header.height) if header and header.format == "JPEG" else None


def decode_image(data: bytes) -> np.ndarray:
    """Decode to 8-bit BGR with the EXIF orientation applied; refuse a decompression bomb first.

    OpenCV's IMREAD_COLOR applies EXIF orientation and turns grayscale, alpha, palette, CMYK and
    16-bit images into 8-bit BGR, so every later step sees one layout. What OpenCV does not read
    but Pillow does (AVIF, whose orientation OpenCV ignores) is decoded by Pillow.
    """
    if not data:
        raise ImageError("empty file")
    header = read_header(data)
    check_pixels(header)
    return _decode_whole(data, header)


# formats Pillow decodes better than OpenCV does: OpenCV ignores AVIF's orientation
_PILLOW_FORMATS = {"AVIF"}


def _decode_whole(data: bytes, header: ImageHeader | None) -> np.ndarray:
    if header is None and file_brand(data[:16]) in HEIF_BRANDS:
        raise ImageError(
            "unsupported format: HEIC/HEIF (neither OpenCV nor Pillow here decodes it): convert it to JPEG to digest it"
        )
    if header and header.format in _PILLOW_FORMATS:
        return _decode_with_pillow(data, header)
    image = _opencv_decode(data, cv2.IMREAD_COLOR)
    if image is not None:
        return image
    if header:  # Pillow knows the format but OpenCV does not decode it (or not this file)
        return _decode_with_pillow(data, header)
    if file_brand(data[:16]) in AVIF_BRANDS:
        raise ImageError(
            "unsupported format: AVIF (neither OpenCV nor Pillow here decodes it): convert it to JPEG to digest it"
        )
    kind = "not an image" if not looks_like_image(data[:16]) else "corrupt or truncated image"
    raise ImageError(f"cannot decode: {kind}")


def _opencv_decode(data: bytes, flag: int) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as err:  # never OpenCV's raw assertion text: a sentence
        if "CV_IO_MAX_IMAGE_PIXELS" in str(err):
            raise ImageError("refused: more pixels than OpenCV decodes (a decompression bomb)") from None
        raise ImageError(f"cannot decode: OpenCV failed ({one_line(str(err))})") from None


def _decode_with_pillow(data: bytes, header: ImageHeader) -> np.ndarray:
    from PIL import Image, ImageOps

    try:  # within facepipe's budget, checked before
        with _facepipe_budget_only(), Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as err:
        raise ImageError(f"cannot decode: corrupt or truncated {header.format} image ({one_line(str(err))})") from None
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)


def one_line(text: str, limit: int = 200) -> str:
    """The first line of a library's message, at most `limit` characters: errors are shown one a line."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


# libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size in its DCT, for a fraction of the cost
# of decoding it whole and resizing it.
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def decode_image_reduced(data: bytes, most_reduction: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode like `decode_image`, but at 1/2, 1/4 or 1/8 of full size where that is no more than
    `most_reduction`; return the pixels and the photo's full (width, height).

    Only JPEGs are decoded reduced (they are most photos, and libjpeg does it in its DCT); any
    other image, or a JPEG whose headers do not say its size, is decoded whole.
    """
    if not data:
        raise ImageError("empty file")
    header = read_header(data)
    check_pixels(header)
    if header and header.format == "JPEG" and most_reduction >= 2:
        width, height = header.width, header.height
        for factor, flag in _REDUCED:
            if factor > most_reduction:
                continue
            image = _opencv_decode(data, flag)
            # trust the headers only if the decoder agrees with them (to a rounding)
            if (
                image is not None
                and abs(image.shape[1] * factor - width) <= factor
                and abs(image.shape[0] * factor - height) <= factor
            ):
                return image, (width, height)
            break
    image = _decode_whole(data, header)
    return image, (image.shape[1], image.shape[0])
