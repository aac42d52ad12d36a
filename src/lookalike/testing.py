"""Fixtures for tests and benchmarks: files a careless or hostile user may hand lookalike.

Why a module of its own: these exist to break the product, so the product never imports them
(tests/test_imports.py checks); tests and benchmarks/bench_server.py do.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_bad_images", "hostile_uploads"]


def make_bad_images(folder: str | os.PathLike) -> list[Path]:
    """Write four undecodable "images" into `folder` (for tests) and return their paths.

    They are: random bytes named .jpg, a JPEG cut in half, a zero-byte .png and a text
    file named .jpg.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12345)

    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\x00\x01junk" + rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())

    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])

    empty = folder / "empty.png"
    empty.write_bytes(b"")

    text = folder / "not_an_image.jpg"
    text.write_text("this is a text file, not an image\n", encoding="utf-8")
    return [corrupt, truncated, empty, text]


def hostile_uploads() -> dict[str, bytes]:
    """The hostile uploads of issue 10, by file name: what a careless or malicious client may send.

    Extreme aspect ratios (1×65000 …), an empty file, a truncated JPEG, PNGs whose header
    declares 100k×100k or 4096² with no body, a 1,000-frame GIF, a 30-page TIFF, a CMYK JPEG,
    16-bit and RGBA PNGs of 4096² (the server's pixel limit), a 48 Mpx JPEG, text named .jpg
    and an SVG. Each fits a 10 MB upload limit. Used by the server's fuzz test and
    benchmarks/bench_server.py.
    """
    rng = np.random.default_rng(0)

    def encode(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    def png_declaring(width: int, height: int) -> bytes:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b"")
        )

    def gradient(width: int, height: int, dtype=np.uint8, top: int = 255) -> np.ndarray:
        """Pixel (y, x) is (x + y) · top // (width + height). Row y is ramp[y : y + width] of one ramp over x + y,
        so no int64 grid is made: a 48 Mpx grid and its temporaries took 9 s and 2 GB, this takes milliseconds."""
        ramp = (np.arange(width + height - 1) * top // (width + height)).astype(dtype)
        return np.lib.stride_tricks.sliding_window_view(ramp, width)[:height].copy()

    photo = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    frames = [Image.new("P", (64, 64), i % 256) for i in range(1000)]
    pages = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(30)]
    jpeg = encode(photo, "JPEG", quality=90)
    return {
        "1x65000.png": encode(Image.new("RGB", (1, 65000), (200, 10, 10)), "PNG"),
        "65000x1.png": encode(Image.new("RGB", (65000, 1), (10, 200, 10)), "PNG"),
        "2x60000.jpg": encode(Image.new("RGB", (2, 60000), (10, 10, 200)), "JPEG"),
        "60000x2.jpg": encode(Image.new("L", (60000, 2), 90), "JPEG"),
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "declares-100kx100k.png": png_declaring(100_000, 100_000),
        "declares-4096x4096.png": png_declaring(4096, 4096),
        "animated-1000-frames.gif": encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0
        ),
        "multi-page.tiff": encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]),
        "cmyk.jpg": encode(
            Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).convert("CMYK"), "JPEG"
        ),
        "16-bit-4096x4096.png": encode(Image.fromarray(gradient(4096, 4096, np.uint16, 65535)), "PNG"),
        "rgba-4096x4096.png": encode(Image.fromarray(np.dstack([gradient(4096, 4096)] * 4)), "PNG"),
        "48-megapixel.jpg": encode(Image.fromarray(np.dstack([gradient(8000, 6000)] * 3)), "JPEG", quality=80),
        "text.jpg": b"this is not an image, only text with a .jpg name\n" * 20,
        "drawing.svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><rect width="100%"'
            b' height="100%"/></svg>'
        ),
    }
