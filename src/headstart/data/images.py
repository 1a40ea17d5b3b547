"""Reading image files safely: RGB out, bad files refused with a reason.

``open_image`` decodes one file into an RGB ``PIL.Image``; ``check_image`` says why a file cannot be
used (or ``None``), for the loaders' scan. Both refuse, with a :class:`~headstart.errors.DataError`
or a reason naming the fix:

- images whose declared size (read from the header, before any decoding) exceeds
  :data:`MAX_IMAGE_PIXELS` (Pillow's own default limit, 89,478,485 pixels);
- corrupt, truncated (a JPEG cut in half) and non-image files. Truncated files are never accepted:
  this module relies on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` staying ``False`` (its default) and
  never changes it.

Grayscale, palette, RGBA, CMYK and 16-bit images become 8-bit RGB (transparent pixels are composited
on white; 16-bit values are scaled to 0-255), and the EXIF orientation is applied.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import IO, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

logger = logging.getLogger("headstart.data")

#: Largest accepted image, in pixels (width * height), checked from the header before decoding.
#: Raise it with ``headstart.data.images.MAX_IMAGE_PIXELS = ...`` or per call with ``max_pixels=``.
MAX_IMAGE_PIXELS = 89_478_485

#: File extensions the folder loaders treat as images (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


class _BadImage(Exception):
    """Internal: why a file could not be used (the path is added by the caller)."""


def open_image(path: str | os.PathLike | IO[bytes], *, max_pixels: int | None = None, name: str | None = None,
               draft: Callable[[int, int], tuple[int, int]] | None = None) -> Image.Image:
    """Decode ``path`` (a file path, or a binary file object such as ``io.BytesIO(upload)``) into an
    8-bit RGB image with its EXIF orientation applied.

    ``draft(width, height)``, given the (upright) image size, returns the smallest size the caller
    needs, e.g. :meth:`Preprocessing.decode_size <headstart.backbones.base.Preprocessing.decode_size>`:
    a JPEG is then decoded at the largest of 1/2, 1/4, 1/8 scale that is at least that large
    (libjpeg's DCT scaling, several times faster than a full decode); other formats, and JPEGs too
    small to reduce, are decoded in full. Truncated files are still refused.

    Raises :class:`DataError` naming the file (``name``, else the path, else ``<in-memory image>``)
    and the reason for a missing, empty, non-image, corrupt, truncated or too large file.
    """
    try:
        img = _decode(path, max_pixels, draft=draft or False)
    except _BadImage as e:
        raise DataError(f"cannot read image {name or _describe(path)}: {e}") from None
    with img:  # close the file (multi-frame formats keep it open); return a detached image
        out = _to_rgb(img)
        return out.copy() if out is img else out


def check_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> str | None:
    """Return why ``path`` cannot be used as an image, or ``None`` if it decodes cleanly.

    Reads the header (size limit), then decodes the whole file, which is the only way to catch
    truncation; JPEGs are decoded at reduced scale (``draft``), which still reads every byte.
    """
    try:
        _decode(path, max_pixels, draft=True).close()
    except _BadImage as e:
        return str(e)
    return None


def _decode(path: str | os.PathLike | IO[bytes], max_pixels: int | None, *, draft: bool | Callable[[int, int], tuple[int, int]]) -> Image.Image:
    """Open, check the declared size, and fully load ``path``; raise :class:`_BadImage`.

    ``draft``: ``True`` decodes JPEGs at 1/8 scale (a check that still reads every byte); a callable
    gives the smallest size needed (see :func:`open_image`)."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # We apply our own limit below; Pillow's warning at the same size would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise _BadImage(f"{e} Resize the image, or raise PIL.Image.MAX_IMAGE_PIXELS (and "
                        "headstart.data.images.MAX_IMAGE_PIXELS) if you trust the file") from None
    except FileNotFoundError:
        raise _BadImage("file not found") from None
    except PermissionError:
        raise _BadImage("permission denied; make the file readable") from None
    except IsADirectoryError:
        raise _BadImage("is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise _BadImage(_unidentified_reason(path)) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise _BadImage(f"not a readable image ({e})") from None
    _check_size(img, limit)
    if draft is True and img.format == "JPEG":
        img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
    elif callable(draft) and img.format == "JPEG":
        img.draft("RGB", _stored_size(img, draft))
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        img.close()
        raise _BadImage(f"corrupt or truncated {img.format or 'image'} file ({e}); re-export or remove it") from None
    return img


def _stored_size(img: Image.Image, needed: Callable[[int, int], tuple[int, int]]) -> tuple[int, int]:
    """``needed`` of the upright size, in the file's stored orientation (EXIF 5-8 swap the axes)."""
    try:
        swap = img.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - unreadable EXIF: _to_rgb ignores it too
        swap = False
    w, h = img.size
    if not swap:
        return tuple(needed(w, h))
    nw, nh = needed(h, w)
    return (nh, nw)


def _check_size(img: Image.Image, limit: int) -> None:
    width, height = img.size
    if width * height > limit:
        img.close()
        raise _BadImage(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} pixels; "
            "resize it, or raise the limit with headstart.data.images.MAX_IMAGE_PIXELS = N "
            "(or open_image(..., max_pixels=N)) if you trust the file"
        )


def _describe(path: str | os.PathLike | IO[bytes]) -> str:
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    return str(getattr(path, "name", None) or "<in-memory image>")


def _unidentified_reason(path: str | os.PathLike | IO[bytes]) -> str:
    try:
        if isinstance(path, (str, os.PathLike)):
            size = os.path.getsize(path)
        else:
            size = path.seek(0, os.SEEK_END)
    except (OSError, ValueError, AttributeError):
        size = -1
    if size == 0:
        return "empty file (0 bytes)"
    return "not an image file (Pillow cannot identify its format); remove it or fix its content"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB and apply the EXIF orientation."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - a malformed EXIF block must not make the image unusable
        logger.debug("ignoring unreadable EXIF orientation of %s: %s", getattr(img, "filename", "image"), e)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_high_depth_to_uint8(img), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """16/32-bit integer or float grayscale to uint8: 16-bit ranges scaled, [0, 1] floats * 255."""
    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and a.size and a.max() > 255):
        a = a / 257.0
    elif img.mode == "F" and a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
