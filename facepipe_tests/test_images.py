"""Finding and decoding photos: recursive, deterministic, by content, and robust to odd files."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from facepipe.engine.images import decode_image, decode_image_reduced, jpeg_size
from facepipe.engine.listing import ImageError, list_images
from facepipe_tests.conftest import SAMPLE_IMAGES


def jpeg_bytes(width=200, height=100, orientation=None) -> bytes:
    image = Image.fromarray(np.full((height, width, 3), 128, np.uint8))
    out = io.BytesIO()
    if orientation:
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(out, "JPEG", exif=exif.tobytes())
    else:
        image.save(out, "JPEG")
    return out.getvalue()


def test_listing_is_recursive_sorted_and_finds_images_by_content(tmp_path):
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "b" / "deeper" / "z.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    (tmp_path / "no_extension").write_bytes(jpeg_bytes())  # an image by content
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "fake.jpg").write_text("a text file named .jpg")  # listed, fails at decode
    (tmp_path / ".hidden.jpg").write_bytes(jpeg_bytes())

    names = [f.path.removeprefix(str(tmp_path) + "/") for f in list_images(tmp_path)]
    assert names == ["a.png", "b/deeper/z.jpg", "fake.jpg", "no_extension"]


def test_sample_folder_lists_all_64_photos():
    files = list_images(SAMPLE_IMAGES)
    assert len(files) == 64
    assert [f.path for f in files] == sorted(f.path for f in files)


def test_exif_orientation_is_applied():
    assert decode_image(jpeg_bytes(200, 100)).shape == (100, 200, 3)
    # orientation 6: stored landscape, shown rotated a quarter turn, so portrait
    assert decode_image(jpeg_bytes(200, 100, orientation=6)).shape == (200, 100, 3)


def test_a_large_jpeg_decodes_reduced_but_reports_its_full_size():
    data = jpeg_bytes(3000, 1000, orientation=6)  # shown 1000 wide, 3000 high
    assert jpeg_size(data) == (1000, 3000)
    image, size = decode_image_reduced(data, 5)
    assert size == (1000, 3000) and image.shape == (750, 250, 3)  # 1/4: the largest reduction up to 5
    image, size = decode_image_reduced(data, 1.9)
    assert size == (1000, 3000) and image.shape == (3000, 1000, 3)
    # not a JPEG (a WebP named .jpg among the samples): decoded whole
    webp = (SAMPLE_IMAGES / "img47.jpg").read_bytes()
    assert jpeg_size(webp) is None and decode_image_reduced(webp, 8)[0].shape == (1800, 1350, 3)


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((40, 50), np.uint8),  # grayscale
        np.zeros((40, 50, 4), np.uint8),  # alpha
        np.full((40, 50, 3), 40000, np.uint16),  # 16-bit
    ],
    ids=["gray", "alpha", "16-bit"],
)
def test_any_common_layout_decodes_to_8bit_bgr(pixels):
    image = decode_image(cv2.imencode(".png", pixels)[1].tobytes())
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8


def test_bad_files_raise_a_clear_image_error():
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"just some text, named .jpg")
    with pytest.raises(ImageError, match="corrupt"):
        decode_image(b"\xff\xd8\xff\xe0" + bytes(500))
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
