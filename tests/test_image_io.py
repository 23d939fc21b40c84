import cv2
import numpy as np
import pytest

from tests.paths import lfw_people
from vision.image_io import ImageError, decode_image, load_image, to_bgr8


def _photo():
    return next(lfw_people(1)[0].glob("*.jpg"))


def test_real_jpeg_loads_as_bgr8():
    img = load_image(_photo())
    assert img.dtype == np.uint8 and img.shape == (250, 250, 3)


@pytest.mark.parametrize("data, msg", [(b"", "empty"), (b"not an image at all" * 10, "not a decodable image")])
def test_non_images_are_refused_with_reason(data, msg):
    with pytest.raises(ImageError, match=msg):
        decode_image(data, "x")


def test_truncated_jpeg_is_refused_or_decoded_partially_but_never_crashes():
    data = _photo().read_bytes()
    for cut in (10, 100, len(data) // 2):
        try:
            img = decode_image(data[:cut], "cut")
        except ImageError as e:
            assert "cut" in str(e)
        else:
            assert img.ndim == 3 and img.shape[2] == 3


def test_grey_rgba_16bit_and_float_are_converted():
    bgr = load_image(_photo())
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert to_bgr8(grey).shape == bgr.shape
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    assert np.array_equal(to_bgr8(rgba), bgr)
    sixteen = bgr.astype(np.uint16) * 257
    assert np.array_equal(to_bgr8(sixteen), bgr)
    ok, png16 = cv2.imencode(".png", sixteen)
    assert np.array_equal(decode_image(png16.tobytes()), bgr)
    as_float = bgr.astype(np.float32) / 255.0
    assert np.array_equal(to_bgr8(as_float), (as_float * 255).astype(np.uint8))


@pytest.mark.parametrize("bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((4, 4, 3), np.int64), np.full((4, 4), np.nan, np.float32)])
def test_unusable_arrays_are_refused(bad):
    with pytest.raises(ImageError):
        to_bgr8(bad)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "nope.jpg")


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding():
    import io
    import struct
    import time
    import zlib

    from PIL import Image

    from vision.image_io import ImageError, decode_image

    for side in (12000, 20000):  # below and above Pillow's own bomb limit, both above ours
        buf = io.BytesIO()
        Image.new("L", (8, 8)).save(buf, "PNG")
        b = bytearray(buf.getvalue())
        b[16:24] = struct.pack(">II", side, side)  # the IHDR claims side×side pixels
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
        t0 = time.perf_counter()
        with pytest.raises(ImageError, match="larger than the .* pixel limit"):
            decode_image(bytes(b), "bomb.png")
        assert time.perf_counter() - t0 < 0.5  # refused from the header, nothing decoded
