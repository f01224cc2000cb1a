"""Decoders that beat OpenCV's on their format, each used only where it was measured to win
(bench/codecs.py, bench/RESULTS.md) and falling back to OpenCV wherever it cannot give the same pixels.

- PNG, 8-bit RGB or RGBA: libspng (pyspng), 15% less CPU than OpenCV's libpng on the web mix's and the
  heavy mix's PNGs, the same pixels; pyspng copies the bytes before decoding them (the resizer counts
  that copy in its memory plan). Palette, gray, 16-bit, transparency chunks and animations stay with
  OpenCV, whose conversions of those are the reference. pyspng holds the GIL while it decodes (a few ms
  for a megapixel PNG): the other threads of the process wait for it meanwhile, the other processes do not.
  It has libspng skip chunk checksums: a PNG whose pixels decode but whose CRCs are wrong is kept, where
  libpng refuses it.
- WebP downscaled: libwebp scales while it decodes (the `webp` package's build of it), so neither the
  full-size pixels nor their colour conversion nor the resize are made: 7-10% less CPU per WebP, and no
  full-size pixels in memory (for a lossy WebP; libwebp decodes a lossless one whole inside).
  The `webp` package's bindings leave out the scaling options of `WebPDecoderConfig`, so the struct is
  laid out here from libwebp's public `decode.h` (ABI 0x0209) and checked against the binding's size and
  offsets at import; where they differ, this path is off.

Each returns None where it does not apply or fails; the caller then decodes with OpenCV.
"""

from __future__ import annotations

import ctypes
import logging

import cv2
import numpy as np

from .imageinfo import PNG_SIGNATURE, png_chunks_before_data

logger = logging.getLogger(__name__)

PNG_RGB, PNG_RGBA = 2, 6  # IHDR colour types

try:
    import pyspng
except ImportError:  # pragma: no cover - an install without the wheel: OpenCV decodes every PNG
    pyspng = None


def png(data: bytes) -> np.ndarray | None:
    """BGR or BGRA pixels of an 8-bit RGB or RGBA PNG without a tRNS chunk or animation, else None."""
    if pyspng is None or len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    bit_depth, colour_type = data[24], data[25]
    if bit_depth != 8 or colour_type not in (PNG_RGB, PNG_RGBA):
        return None
    before = png_chunks_before_data(data)
    if b"acTL" in before or b"tRNS" in before:  # an animation, or transparency OpenCV turns into alpha
        return None
    try:
        img = pyspng.load(data)
    except Exception:  # noqa: BLE001 - damaged: OpenCV decides what it makes of it
        return None
    return cv2.cvtColor(img, cv2.COLOR_RGB2BGR if colour_type == PNG_RGB else cv2.COLOR_RGBA2BGRA)


class _Features(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("has_alpha", ctypes.c_int),
        ("has_animation", ctypes.c_int),
        ("format", ctypes.c_int),
        ("pad", ctypes.c_uint32 * 5),
    ]


class _RGBABuffer(ctypes.Structure):
    _fields_ = [("rgba", ctypes.c_void_p), ("stride", ctypes.c_int), ("size", ctypes.c_size_t)]


class _YUVABuffer(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("y", "u", "v", "a")),
        *((name, ctypes.c_int) for name in ("y_stride", "u_stride", "v_stride", "a_stride")),
        *((name, ctypes.c_size_t) for name in ("y_size", "u_size", "v_size", "a_size")),
    ]


class _Buffers(ctypes.Union):
    _fields_ = [("RGBA", _RGBABuffer), ("YUVA", _YUVABuffer)]


class _DecBuffer(ctypes.Structure):
    _fields_ = [
        ("colorspace", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("is_external_memory", ctypes.c_int),
        ("u", _Buffers),
        ("pad", ctypes.c_uint32 * 4),
        ("private_memory", ctypes.c_void_p),
    ]


class _Options(ctypes.Structure):
    _fields_ = [
        *(
            (name, ctypes.c_int)
            for name in (
                "bypass_filtering",
                "no_fancy_upsampling",
                "use_cropping",
                "crop_left",
                "crop_top",
                "crop_width",
                "crop_height",
                "use_scaling",
                "scaled_width",
                "scaled_height",
                "use_threads",
                "dithering_strength",
                "flip",
                "alpha_dithering_strength",
            )
        ),
        ("pad", ctypes.c_uint32 * 5),
    ]


class _Config(ctypes.Structure):
    _fields_ = [("input", _Features), ("output", _DecBuffer), ("options", _Options)]


def _libwebp():
    """The `webp` package's cffi module, when its WebPDecoderConfig is laid out as `_Config`."""
    try:
        import webp
    except ImportError:  # pragma: no cover - an install without the wheel: OpenCV decodes every WebP
        return None
    ffi = webp.ffi
    expected = [
        (ffi.sizeof("WebPDecoderConfig"), ctypes.sizeof(_Config)),
        (ffi.offsetof("WebPDecoderConfig", "output"), _Config.output.offset),
        (ffi.offsetof("WebPDecoderConfig", "options"), _Config.options.offset),
        (ffi.offsetof("WebPDecoderOptions", "use_threads"), _Options.use_threads.offset),
        (ffi.offsetof("WebPDecBuffer", "u"), _DecBuffer.u.offset),
    ]
    if any(theirs != ours for theirs, ours in expected):  # pragma: no cover - another libwebp ABI
        logger.warning("the webp package's WebPDecoderConfig differs from libwebp 1.x's: WebP decoded whole")
        return None
    return webp


_webp = _libwebp()
MODE_BGR, MODE_BGRA = 2, 3  # WEBP_CSP_MODE


def webp(data: bytes, size: tuple[int, int], whole: tuple[int, int]) -> np.ndarray | None:
    """BGR (BGRA when it has alpha, as OpenCV gives it) pixels of a still WebP of `whole` (width, height)
    pixels, scaled to `size` while decoding; None when libwebp cannot (an animation, damaged data) or the
    bitstream's size is not `whole`."""
    if _webp is None:
        return None
    ffi, lib = _webp.ffi, _webp.lib
    config = _Config()
    pointer = ffi.cast("WebPDecoderConfig *", ctypes.addressof(config))
    if not lib.WebPInitDecoderConfig(pointer):  # checks the library's ABI against the binding's
        return None
    source = ffi.from_buffer(data)
    if lib.WebPGetFeatures(source, len(data), ffi.addressof(pointer, "input")) != 0 or config.input.has_animation:
        return None
    if (config.input.width, config.input.height) != whole:
        return None
    width, height = size
    channels = 4 if config.input.has_alpha else 3
    out = np.empty((height, width, channels), np.uint8)
    config.options.use_scaling = 1
    config.options.scaled_width, config.options.scaled_height = width, height
    config.output.colorspace = MODE_BGRA if channels == 4 else MODE_BGR
    config.output.is_external_memory = 1  # libwebp writes into `out`, after checking that it fits
    config.output.u.RGBA = _RGBABuffer(out.ctypes.data, width * channels, out.nbytes)
    status = lib.WebPDecode(source, len(data), pointer)  # cffi lets go of the GIL meanwhile
    return out if status == 0 else None
