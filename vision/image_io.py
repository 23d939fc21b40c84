"""Turning whatever a camera, a file or an operator hands us into one kind of frame.

Everything downstream assumes 8-bit BGR, H×W×3. Photos arrive as greyscale, RGBA, 16-bit
PNG, truncated JPEGs or not images at all; each is converted or refused here with a message
that says what was wrong, so no stage further on has to guess.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

MAX_PIXELS = 100_000_000  # refuse decompression bombs; 8000×8000 (64 MP) still passes


class ImageError(ValueError):
    """The input is not a usable image; the message says why."""


def to_bgr8(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise ImageError(f"expected a numpy image array, got {type(img).__name__}")
    if img.size == 0:
        raise ImageError("image is empty (zero pixels)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ImageError(f"unsupported image shape {img.shape}: need H×W, H×W×3 or H×W×4")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():
            raise ImageError("image contains NaN or infinite values")
        scale = 255.0 if img.max() <= 1.0 else 1.0
        img = np.clip(img * scale, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {img.dtype}: need uint8, uint16 or float")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header alone (Pillow reads it without decoding pixels);
    None when Pillow does not know the format (OpenCV then decides, and the size is checked
    after decoding)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError:  # Pillow's own limit (~179 MP) is above ours: too large either way
        return (MAX_PIXELS + 1, 1)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    if not data:
        raise ImageError(f"{name}: file is empty")
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:  # before decoding: a 20000×20000 bomb costs nothing
        raise ImageError(f"{name}: {size[0]}×{size[1]} is larger than the {MAX_PIXELS} pixel limit")
    buf = np.frombuffer(data, dtype=np.uint8)
    # ANYDEPTH|ANYCOLOR keeps 16-bit and grey images as they are (to_bgr8 converts them) but,
    # unlike IMREAD_UNCHANGED, applies the EXIF orientation: phone photos are stored sideways
    # with a rotate tag, and a sideways face is not detected.
    img = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if img is None:
        raise ImageError(f"{name}: not a decodable image (truncated, corrupted or not an image format)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageError(f"{name}: {img.shape[1]}×{img.shape[0]} is larger than the {MAX_PIXELS} pixel limit")
    return to_bgr8(img)


def load_image(path: str | Path) -> np.ndarray:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror})") from e
    return decode_image(data, str(p))
