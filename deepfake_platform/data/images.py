"""Decoding one image into the RGB picture every model sees, and rejecting what cannot be decoded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from deepfake_platform.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
DEFAULT_MAX_PIXELS = 50_000_000

# 16-bit and 32-bit grey modes: Pillow's own convert("RGB") clips them at 255 (a white picture), so
# they are rescaled by hand.
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class BadImageError(UserError, ValueError):
    """An image that cannot be decoded, or that is too large to decode safely."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.reason = reason


def is_image_name(path: Path) -> bool:
    """True for a visible file name whose extension is one of IMAGE_EXTENSIONS (case-insensitive)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decode an image file or encoded bytes into an upright 8-bit RGB PIL image."""
    name = "the uploaded image" if isinstance(source, bytes) else str(source)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone switched Pillow to padding truncated files with grey: a cut-off image would pass.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; set it back to False.")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            # Checked before decoding: the header is cheap, the pixels of a decompression bomb are not.
            if width * height > max_pixels:
                raise BadImageError(
                    name,
                    f"is {width}x{height} pixels, more than the limit of {max_pixels:,}; downscale it first.",
                )
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except BadImageError:
        raise
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as error:
        raise BadImageError(name, f"is too large to decode safely ({error}); downscale it first.") from error
    except (OSError, SyntaxError, ValueError) as error:
        # UnidentifiedImageError is an OSError; corrupt headers surface as SyntaxError or ValueError.
        raise BadImageError(name, f"cannot be read as an image ({error}).") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES:
        grey = Image.fromarray(_wide_grey_to_uint8(np.asarray(image, dtype=np.float32), image.mode))
        return grey.convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA keeps Pillow from warning about byte-coded palette transparency.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _wide_grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    # float32 and in place: one extra copy of the pixels at most, whatever the image's size.
    values = np.asarray(values, dtype=np.float32)
    if not values.flags.writeable:
        values = values.copy()
    peak = values.max(initial=0.0)
    if mode == "F" and peak <= 1.0:
        values *= 255.0  # a float image in [0, 1]
    elif mode.startswith("I;16") or peak > 255.0:
        values /= 257.0  # the 16-bit range onto 8 bits
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)
