"""Image decoding: any supported file -> 8-bit gray or RGB values, converted by the image's mode.

Its own module so that both the data set type (:mod:`ferlib.data.base`, per-item decoding for
notebooks) and the cache (:mod:`ferlib.data.cache`, decode once for training) import it
without importing each other.

Why convert by mode rather than ``im.convert("L")``: PIL's plain conversions are wrong for
several modes a face data set really ships. A 16-bit grayscale PNG/TIFF/PGM (``I;16``, or
``I`` for PGM with ``maxval > 255``) is *clipped* to 255 by ``convert("L")``, so nearly every
pixel becomes white; a palette image converted to ``L`` goes through the palette's luma
rather than keeping its gray entries exactly. The file's mode says how the values are
stored, never how the data set is meant to look, so each mode gets an explicit rule here:

===================  ===================================================================
mode                 8-bit values
===================  ===================================================================
``L``                as stored
``1``                0 / 255
``LA``, ``La``       the gray channel (alpha dropped: face crops carry no meaning in it)
``I;16*``, ``I``     16-bit range scaled to 0..255 (``round(v * 255 / 65535)``); PIL opens
                     16-bit PNG/TIFF as ``I;16`` and PGM with ``maxval > 255`` as ``I``
                     already stretched to 16 bits
``F``                ``[0, 1]`` scaled by 255 when the maximum is at most 1, else clipped
                     to ``[0, 255]``
``RGB``              as stored
``P``, ``PA``        the palette's colours (RGB; gray palettes stay gray in every channel)
``RGBA``, ``CMYK``,  PIL's conversion to RGB (alpha dropped)
others
===================  ===================================================================
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

#: File suffixes the folder-based loaders accept as images (compared lower-case). Every one
#: decodes with the Pillow this kit pins (WebP through libwebp, TIFF through libtiff).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm", ".webp"}
)


def _scale_16bit(im: Image.Image) -> Image.Image:
    """16-bit (or PIL's 32-bit ``I`` holding 16-bit data) gray -> ``L``, rounded, clipped."""
    values = np.asarray(im).astype(np.int64)
    values = np.clip(values, 0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def _scale_float(im: Image.Image) -> Image.Image:
    values = np.asarray(im, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size and finite.max() <= 1.0:
        values = values * 255.0
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def to_8bit(im: Image.Image) -> Image.Image:
    """``im`` as an 8-bit ``L`` or ``RGB`` image, converted by its mode (table above)."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("LA", "La"):
        return im.convert("LA").getchannel("L")
    if mode.startswith("I;16") or mode == "I":
        return _scale_16bit(im)
    if mode == "F":
        return _scale_float(im)
    if mode in ("P", "PA"):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode one image at its stored size as ``uint8 (H, W, 3)`` RGB (gray replicated)."""
    with Image.open(path) as im:
        im.load()
        # np.array: a writable copy (torch warns on read-only arrays)
        return np.array(to_8bit(im).convert("RGB"))


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image resized to ``size x size``: ``(S, S)`` if grayscale, else ``(S, S, 3)``.

    Grayscale stays one channel here (replicated to three when written into the cache):
    FERPlus is grayscale and converting each image to RGB first triples the work. Values
    are made 8-bit *before* resizing (:func:`to_8bit`), so 16-bit files are scaled, not
    clipped. Resizing uses PIL's bilinear filter, whose support widens with the scale
    factor (antialiased, like torchvision's ``antialias=True``). Non-square images are
    stretched: the supported data sets all ship square face crops.
    """
    with Image.open(path) as im:
        im.load()
        im = to_8bit(im)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im)


__all__ = ["IMAGE_EXTENSIONS", "decode_image", "decode_rgb", "to_8bit"]
