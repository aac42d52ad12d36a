"""Robust image decoding: any file PIL can read becomes a fully-decoded 8-bit RGB image.

Collections in the wild hold greyscale scans, palette GIFs, transparent PNGs, CMYK JPEGs
and 16-bit TIFFs next to ordinary photos. Extractors need one thing: RGB pixels in 0..255.
Everything that cannot give that raises `BadImageError`, so a caller can skip and report
the file instead of crashing half-way through a 100k-image run.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lookalike.errors import BadImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "Decoded",
    "Pixels",
    "decode_image_bytes",
    "decode_pixels",
    "is_image_path",
    "is_jpeg",
    "load_rgb",
    "load_rgb_bytes",
    "read_image_bytes",
    "unreadable",
]

#: Extensions we treat as images when scanning folders (compare lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

#: PIL's own default decompression-bomb threshold, in pixels (width * height).
DEFAULT_MAX_PIXELS = 89_478_485
#: Decoding is the one step whose cost grows with the pixel count; callers that shrink images
#: afterwards pass `min_side`. A JPEG decodes at the smallest DCT scale (1/2..1/8, `draft`) that
#: keeps min_side: the scaled IDCT is itself a proper low-pass (at 1/8, each 8×8 block's mean),
#: and on 4000×3000 photos it costs 18% less than keeping twice min_side, at the same embedding
#: (bench_extract's decode table). Other formats are box-reduced right after decoding, keeping
#: REDUCE_HEADROOM × min_side, since the box is the cruder filter.
JPEG_HEADROOM = 1
REDUCE_HEADROOM = 2

_WHITE = (255, 255, 255)

# Every size is checked here against max_pixels, so PIL's warning above its own threshold is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter: width and height trade places


@dataclass(frozen=True)
class Decoded:
    """A decoded image and the full size of the picture in the file, upright (EXIF applied).

    `image` may be smaller (reduced while decoding, see `min_side`); `width` × `height` is what
    the file holds, which the gallery records so a duplicate group can keep its largest copy.
    """

    image: Image.Image
    width: int
    height: int


@dataclass(frozen=True)
class Pixels:
    """A decoded image as an (H, W, 3) uint8 RGB array, upright, and the full size of the picture in the file.

    What extraction and queries feed their transform: no PIL image in between, so a JPEG that libjpeg-turbo
    decodes directly (`decoder` "simplejpeg") never passes through PIL's 4-bytes-per-pixel buffers.
    `array` may be smaller than `width` × `height` (reduced while decoding, see `min_side`).
    """

    array: np.ndarray
    width: int
    height: int
    decoder: str  # "simplejpeg" or "pil"


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name ends in one of IMAGE_EXTENSIONS (any case, e.g. `.JPEG`)."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a record's image: the file at `path`, or the tar member a webdataset path `<shard>.tar#<key>` names.

    OSError (FileNotFoundError when nothing is there) for the caller to report like any unreadable file.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        from .webdataset import read_member, split_member_path

        if split_member_path(name) is None:
            raise
        return read_member(name)


def load_rgb(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode the image at `path` into a new, fully loaded 8-bit RGB image.

    EXIF orientation is applied, transparency is composited on white and 16-bit data is
    scaled (not clipped) to 8 bits. Images over `max_pixels` (width * height, as decoded) are
    refused before their pixels are decoded. With `min_side` (the short side the caller will
    resize to), large images are reduced while or right after they decode, keeping a short side
    of at least min_side (JPEG) or REDUCE_HEADROOM × min_side (other formats). Only the first
    frame of an animated or multi-page file is read. Any failure raises BadImageError naming the path.
    """
    name = os.fspath(path)
    try:
        # Open the file ourselves so a missing or unreadable file gets a clear reason.
        with open(name, "rb") as fh:
            return _decode(fh, name, max_pixels, min_side).image
    except BadImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes one error type
        raise BadImageError(_message(name, _reason(exc))) from exc


def load_rgb_bytes(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "upload",
    min_side: int | None = None,
) -> Image.Image:
    """Decode an in-memory image (e.g. an HTTP upload) like `load_rgb`; `name` is used in error messages."""
    return decode_image_bytes(data, max_pixels=max_pixels, name=name, min_side=min_side).image


def decode_image_bytes(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "upload",
    min_side: int | None = None,
) -> Decoded:
    """`load_rgb_bytes`, with the file's full upright size beside the image (extraction records it)."""
    if not data:
        raise BadImageError(_message(name, "it is empty (0 bytes)"))
    try:
        return _decode(io.BytesIO(bytes(data)), name, max_pixels, min_side)
    except BadImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise BadImageError(_message(name, _reason(exc))) from exc


#: JPEG decoders `decode_pixels` may use: "auto" takes simplejpeg (libjpeg-turbo, scaled DCT decode straight into
#: a numpy array) when it is installed, PIL otherwise; extraction measures both and records the one it used.
JPEG_DECODERS = ("simplejpeg", "pil")
# JPEG colour spaces libjpeg-turbo converts to RGB itself; CMYK and YCCK files (print scans) go through PIL
_SIMPLEJPEG_COLOURS = ("RGB", "YCbCr", "Gray")
_EXIF_SCAN_BYTES = 1 << 16  # an APP1 Exif segment sits in the first 64 KiB of a JPEG, before the image data


def simplejpeg_version() -> str | None:
    """simplejpeg's version, None when it is not installed (then every image is decoded by PIL)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg.__version__


def decode_pixels(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "upload",
    min_side: int | None = None,
    decoder: str = "auto",
) -> Pixels:
    """An image file's bytes as upright RGB uint8 pixels, reduced while decoding as `decode_image_bytes` reduces.

    JPEGs go to libjpeg-turbo through simplejpeg (the same library PIL bundles, with the same DCT scaling and
    the same EXIF orientation applied), unless `decoder` is "pil"; every other format, a JPEG simplejpeg cannot
    convert to RGB (CMYK) and any JPEG it rejects go through PIL, whose errors name the problem.
    BadImageError as `load_rgb` raises it.
    """
    if decoder not in ("auto", *JPEG_DECODERS):
        raise ValueError(f"unknown JPEG decoder {decoder!r}; choose auto, {', '.join(JPEG_DECODERS)}")
    if decoder != "pil" and is_jpeg(data):
        fast = _simplejpeg_pixels(data, name, max_pixels, min_side)
        if fast is not None:
            return fast
    decoded = decode_image_bytes(data, max_pixels=max_pixels, name=name, min_side=min_side)
    return Pixels(np.asarray(decoded.image), decoded.width, decoded.height, "pil")


def _simplejpeg_pixels(data, name: str, max_pixels: int, min_side: int | None) -> Pixels | None:
    """The JPEG decoded by simplejpeg, or None when PIL should decode it (no simplejpeg, CMYK, or rejected bytes)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    side = JPEG_HEADROOM * min_side if min_side else 0
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
        if colour not in _SIMPLEJPEG_COLOURS or width <= 0 or height <= 0:
            return None
        _check_pixels(name, width, height, max_pixels)  # from the header, before any pixel is decoded
        # PIL's draft scales (1/2, 1/4, 1/8, as JpegImagePlugin picks them), not libjpeg-turbo's others (5/8, 3/4, ...):
        # the same pixels as PIL's path, so the decoder chosen never changes an embedding
        factor = _draft_factor(width, height, side) if side else 1
        array = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=-(-height // factor), min_width=-(-width // factor)
        )
    except ValueError:  # corrupt, truncated or unsupported: PIL decodes it or says what is wrong
        return None
    orientation = _jpeg_orientation(data)
    upright = (height, width) if orientation in SWAPPED_ORIENTATIONS else (width, height)
    return Pixels(_orient(array, orientation), *upright, "simplejpeg")


def _draft_factor(width: int, height: int, side: int) -> int:
    """The DCT scale PIL's `draft` picks to keep both sides ≥ `side`: the largest of 1, 2, 4, 8 within the ratio."""
    ratio = min(width // side, height // side)
    return next(f for f in (8, 4, 2, 1) if ratio >= f or f == 1)


def _jpeg_orientation(data) -> int:
    """The EXIF orientation of a JPEG (1 when it has none), read by PIL from the headers alone."""
    if bytes(data[:_EXIF_SCAN_BYTES]).find(b"Exif\x00\x00") < 0:
        return 1
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block leaves the image as stored, as exif_transpose does
        return 1


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """`array` turned upright as PIL's exif_transpose turns an image with this EXIF orientation (a new array)."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return array if turned is None else np.ascontiguousarray(turned(array))


def unreadable(name: str, exc: OSError) -> BadImageError:
    """The error for a file that cannot be read at all, worded as `load_rgb` words it."""
    return BadImageError(_message(name, _reason(exc)))


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    """BadImageError for an image over `max_pixels` (a possible decompression bomb), saying how to raise the limit."""
    if width * height > max_pixels:
        raise BadImageError(
            _message(
                name,
                f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} pixels "
                "(possible decompression bomb); if the image is legitimate, raise the limit with --max-pixels",
            )
        )


def is_jpeg(data: bytes | bytearray | memoryview) -> bool:
    """Whether the bytes begin with a JPEG's signature (SOI and a marker)."""
    return bytes(data[:3]) == b"\xff\xd8\xff"


def _message(name: str, reason: str) -> str:
    return f"cannot read image {name}: {reason}; remove or replace the file"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb ({exc}); if the image is legitimate, raise the limit with --max-pixels"
    text = str(exc).strip() or type(exc).__name__
    return f"corrupt or truncated ({text})"


def _decode(fh: io.IOBase, name: str, max_pixels: int, min_side: int | None = None) -> Decoded:
    """Open, size-check, fully load (reduced when allowed) and convert; the returned image owns its pixels."""
    if fh.read(1) == b"":
        raise BadImageError(_message(name, "it is empty (0 bytes)"))
    fh.seek(0)
    _allow_pixels(max_pixels)
    with Image.open(fh) as im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise BadImageError(_message(name, f"it has no pixels ({width}x{height})"))
        orientation = im.getexif().get(0x0112, 1)
        upright = (height, width) if orientation in SWAPPED_ORIENTATIONS else (width, height)
        if min_side and im.format == "JPEG":
            im.draft(None, (JPEG_HEADROOM * min_side, JPEG_HEADROOM * min_side))  # DCT-domain 1/2..1/8 scaling
        w, h = im.size
        _check_pixels(name, w, h, max_pixels)
        # load() now, while the file is open: a truncated or corrupt body fails here, not later.
        # Only the first frame: seek() is never called, so animated/multi-page files cost one frame.
        im.load()
        reduced = _reduce(im, min_side) if min_side else im
        if reduced is im:
            return Decoded(_to_rgb8(ImageOps.exif_transpose(im) or im), *upright)
        # The reduced copy has lost TIFF tags, so take the orientation from the original.
        method = _TRANSPOSE.get(orientation)
        return Decoded(_to_rgb8(reduced.transpose(method) if method is not None else reduced), *upright)


_TRANSPOSE = {  # EXIF orientation → PIL transpose, as ImageOps.exif_transpose maps it
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _allow_pixels(max_pixels: int) -> None:
    """Let PIL open images up to our own limit: it would refuse above 2 × its threshold before we can say how to raise
    ours."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _reduce(im: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the short side ≥ REDUCE_HEADROOM × min_side."""
    factor = min(im.size) // (REDUCE_HEADROOM * min_side)
    if factor < 2:
        return im
    if im.mode.startswith("I;16"):
        im = im.convert("I")  # same values, a mode reduce() handles
    elif im.mode in ("P", "1"):
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    try:
        return im.reduce(factor)
    except ValueError:  # a mode reduce() does not support: convert at full size instead
        return im


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, returning a new image."""
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB", "1") and "transparency" in im.info):
        return _on_white(im.convert("RGBA"))
    if mode == "RGB":
        return im.copy()
    if mode.startswith("I") or mode == "F":
        return _scale_to_rgb8(im)
    # 1, L, P, CMYK, YCbCr, LAB, HSV: PIL knows how to reach RGB directly.
    return im.convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    """Composite on white: transparent logos and icons are meant to be seen on a page."""
    out = Image.new("RGB", rgba.size, _WHITE)
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _scale_to_rgb8(im: Image.Image) -> Image.Image:
    """Map integer (I;16*, I) or float (F) greyscale to 0..255 by its value range.

    16-bit data is divided by 257 (65535 -> 255) so brightness is kept; 32-bit "I" data in
    0..65535 (how PIL opens many 16-bit PNGs) is treated the same way. Floats in [0, 1]
    are multiplied by 255, floats in [0, 255] are kept; anything else (negative or
    larger values) is stretched from its min..max, the only scale we can infer.
    """
    arr = np.asarray(im).astype(np.float64)
    arr = np.where(np.isfinite(arr), arr, 0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    mode = im.mode
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        arr = arr / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        arr = arr * 255.0
    elif mode == "F" and lo >= 0 and hi <= 255.0:
        pass
    elif hi > lo:
        arr = (arr - lo) * (255.0 / (hi - lo))
    else:
        arr = np.zeros_like(arr)
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
