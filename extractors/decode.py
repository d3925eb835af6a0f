"""Image decoding: bytes on disk -> ``uint8[H, W, 3]`` RGB, or a failure with its reason.

Decoding is deliberately strict and never half-succeeds: truncated files,
zero-byte files, non-images, degenerate (e.g. 1x1) and oversized images, and
unreadable paths raise :class:`ImageDecodeError`, whose ``reason`` goes into the
store's failures table. EXIF orientation is applied; L, LA, P, PA, RGBA, CMYK,
I, I;16 and F images are converted to RGB (transparent pixels composited over
white; 16-bit and float greyscale scaled to 0..255).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_MIN_SIDE", "DecodeLimits", "ImageDecodeError", "decode_image", "probe_image",
    "read_image_bytes",
]

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (~ 9459 x 9459)
DEFAULT_MIN_SIDE = 8

# EXIF orientations 5..8 swap width and height.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


class ImageDecodeError(ValueError):
    """An input that cannot be turned into an RGB image; ``reason`` is a short machine-friendly tag + detail."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """Accepted image sizes.

    Args:
        max_pixels: ``width * height`` above this is refused as a decompression bomb
            (checked from the header, before any pixel is decoded).
        min_side: images whose shorter side is below this are refused (no regions to find).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read an image file's bytes: the one place the extractors open an input file.

    Raises:
        ImageDecodeError: ``not-found``, ``permission-denied``, ``not-a-file`` (a folder),
            ``unreadable`` (any other OS error, e.g. a symlink loop) or ``empty-file``.
    """
    uri = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ImageDecodeError(uri, f"not-found: {exc.strerror or exc}") from exc
    except PermissionError as exc:
        raise ImageDecodeError(uri, f"permission-denied: {exc.strerror or exc}") from exc
    except IsADirectoryError as exc:
        raise ImageDecodeError(uri, "not-a-file: is a directory") from exc
    except OSError as exc:
        raise ImageDecodeError(uri, f"unreadable: {exc}") from exc
    if not data:
        raise ImageDecodeError(uri, "empty-file: zero bytes")
    return data


def _check_size(uri: str, width: int, height: int, limits: DecodeLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageDecodeError(
            uri, f"too-large: {width}x{height} = {width * height} pixels > max_pixels={limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        raise ImageDecodeError(uri, f"too-small: {width}x{height}, shorter side < min_side={limits.min_side}")


def _open(uri: str, data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(uri, "not-an-image: unrecognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(uri, f"too-large: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(uri, f"corrupt: {exc}") from exc


def probe_image(path: str | os.PathLike[str], data: bytes | None = None, limits: DecodeLimits = DecodeLimits()) -> tuple[int, int]:
    """Read only the header: ``(width, height)`` after EXIF orientation.

    Raises:
        ImageDecodeError: unreadable, empty, not an image, too small or too large.
    """
    uri = str(path)
    data = read_image_bytes(path) if data is None else data
    with _open(uri, data) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block must not fail the probe; decode re-checks the pixels
            orientation = 1
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    _check_size(uri, width, height, limits)
    return width, height


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else (float(arr.max()) if arr.size and arr.max() > 255 else 255.0)
        if mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            arr = arr * (255.0 / top)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "P":
        return im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(
    path: str | os.PathLike[str], *, data: bytes | None = None, limits: DecodeLimits = DecodeLimits()
) -> np.ndarray:
    """Decode an image file fully into ``uint8[H, W, 3]`` RGB (EXIF orientation applied).

    Args:
        path: the file (also used as the uri in errors).
        data: the file's bytes when already read (skips the read).
        limits: size limits.

    Raises:
        ImageDecodeError: any reason the file is not a usable image (``reason``
            starts with one of ``not-found``, ``permission-denied``, ``not-a-file``,
            ``unreadable``, ``empty-file``, ``not-an-image``, ``corrupt``,
            ``truncated``, ``too-small``, ``too-large``).
    """
    uri = str(path)
    data = read_image_bytes(path) if data is None else data
    probe_image(path, data, limits)
    src = _open(uri, data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            src.load()
            rgb = _to_rgb(ImageOps.exif_transpose(src))
            arr = np.array(rgb, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(uri, f"too-large: {exc}") from exc
    except OSError as exc:
        text = str(exc)
        tag = "truncated" if "truncat" in text.lower() else "corrupt"
        raise ImageDecodeError(uri, f"{tag}: {text}") from exc
    except (SyntaxError, ValueError, MemoryError) as exc:
        raise ImageDecodeError(uri, f"corrupt: {exc}") from exc
    finally:
        src.close()
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(uri, f"corrupt: decoded to shape {arr.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(arr)
