"""Every image mode we meet in real collections decodes to 8-bit RGB; bad files raise BadImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from lookalike.data.images import IMAGE_EXTENSIONS, decode_image_bytes, is_image_path, load_rgb, load_rgb_bytes
from lookalike.errors import BadImageError, LookalikeError
from lookalike.testing import make_bad_images


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    out = load_rgb_bytes(data)
    assert out.mode == "RGB"
    arr = np.asarray(out)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def _grey16(value: int, mode: str = "I;16") -> Image.Image:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    im = Image.new(mode, (4, 3))
    im.frombytes(np.full((3, 4), value, dtype).tobytes())
    return im


def test_extensions_match_any_case():
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".webp", ".bmp")
    assert is_image_path("a/b/n01443537_0.JPEG") and is_image_path("x.Png")
    assert not is_image_path("words.txt") and not is_image_path("jpg")


def test_rgb_png_is_returned_unchanged(tmp_path):
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    out = load_rgb(path)
    assert out.size == (5, 4)
    assert np.array_equal(np.asarray(out), pixels)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 200, (200, 200, 200)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ],
)
def test_plain_modes(mode, colour, expected):
    data = _encode(Image.new(mode, (3, 2), colour), "TIFF")
    assert tuple(_rgb(data)[0, 0]) == expected


def test_cmyk_jpeg():
    arr = _rgb(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert arr[0, 0, 0] > 240 and arr[0, 0, 1] < 15 and arr[0, 0, 2] < 15


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    arr = _rgb(_encode(rgba, "PNG"))
    assert tuple(arr[0, 0]) == (255, 255, 255)  # fully transparent red -> white
    assert tuple(arr[0, 1]) == (0, 0, 255)  # opaque blue stays blue

    half = _rgb(_encode(Image.new("LA", (1, 1), (0, 128)), "PNG"))  # half-transparent black
    assert 120 <= half[0, 0, 0] <= 135


def test_palette_with_and_without_transparency():
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    assert _rgb(_encode(pal, "PNG")).tolist() == [[[255, 0, 0], [0, 255, 0]]]
    assert _rgb(_encode(pal, "PNG", transparency=0)).tolist() == [[[255, 255, 255], [0, 255, 0]]]
    gif = _rgb(_encode(pal, "GIF", transparency=1))
    assert gif.tolist() == [[[255, 0, 0], [255, 255, 255]]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (0, 0), (32768, 128), (40000, 156)])
def test_16_bit_is_scaled_not_clipped(mode, value, expected):
    data = _encode(_grey16(value, mode), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    assert tuple(_rgb(data)[0, 0]) == (expected,) * 3


def test_16_bit_png_white_stays_white():
    im = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert _rgb(_encode(im, "PNG")).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_32_bit_integer_and_float():
    as_i = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert as_i.mode == "I"
    assert _rgb(_encode(as_i, "TIFF"))[0, :, 0].tolist() == [0, 255]

    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert _rgb(_encode(unit, "TIFF"))[0, :, 0].tolist() == [0, 128, 255]

    wide = Image.fromarray(np.array([[-10.0, 990.0]], dtype=np.float32))
    assert _rgb(_encode(wide, "TIFF"))[0, :, 0].tolist() == [0, 255]


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (4, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_rgb_bytes(_encode(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (2, 4)


@pytest.mark.parametrize(
    ("orientation", "upright"), [(1, (400, 240)), (3, (400, 240)), (6, (240, 400)), (8, (240, 400))]
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decoding_reports_the_files_full_upright_size(orientation, upright, fmt):
    """What a gallery records as width and height: the file's picture as displayed, even when decoding reduced it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.new("RGB", (400, 240), (10, 120, 200)), fmt, exif=exif.tobytes())
    decoded = decode_image_bytes(data, min_side=32)
    assert (decoded.width, decoded.height) == upright
    assert max(decoded.image.size) < 400  # reduced while decoding (JPEG draft, PNG box reduce)
    assert (decoded.image.width > decoded.image.height) == (upright[0] > upright[1])  # and turned upright
    assert decode_image_bytes(data).image.size == upright


def test_webp_and_bmp_with_upper_case_names(tmp_path):
    for name, options in (("a.WEBP", {"lossless": True}), ("a.BMP", {})):
        path = tmp_path / name
        Image.new("RGB", (6, 6), (0, 200, 0)).save(path, **options)
        assert tuple(np.asarray(load_rgb(path))[0, 0]) == (0, 200, 0)


def test_result_is_detached_from_the_file(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8), "blue").save(path)
    out = load_rgb(str(path))
    path.unlink()
    assert out.getpixel((0, 0))[2] > 200  # pixels were loaded before the file went away


def test_bad_files_name_the_path(tmp_path):
    for path in make_bad_images(tmp_path / "bad"):
        with pytest.raises(BadImageError) as info:
            load_rgb(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, LookalikeError)


def test_truncated_jpeg_says_truncated(tmp_path):
    truncated = make_bad_images(tmp_path)[1]
    with pytest.raises(BadImageError, match="truncated"):
        load_rgb(truncated)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        load_rgb(tmp_path / "nope.jpg")
    with pytest.raises(BadImageError, match="directory"):
        load_rgb(tmp_path)


def test_bad_bytes_name_the_upload():
    with pytest.raises(BadImageError, match="upload"):
        load_rgb_bytes(b"definitely not an image")
    with pytest.raises(BadImageError, match="empty"):
        load_rgb_bytes(b"")
    with pytest.raises(BadImageError, match="query.png"):
        load_rgb_bytes(b"\x89PNG\r\n\x1a\n", name="query.png")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    with pytest.raises(BadImageError, match="--max-pixels"):
        load_rgb(path, max_pixels=9_999)
    assert load_rgb(path, max_pixels=10_000).size == (100, 100)
    with pytest.raises(BadImageError, match="upload"):
        load_rgb_bytes(path.read_bytes(), max_pixels=100)


# --- large images are reduced as they decode (min_side), and the limit names its option ---


def _gradient(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 255 // width), (y * 255 // height), ((x + y) % 256)], axis=-1).astype(np.uint8)


def test_large_png_is_box_reduced_to_twice_the_resize_side():
    pixels = _gradient(2000, 1000)
    out = load_rgb_bytes(_encode(Image.fromarray(pixels), "PNG"), min_side=100)
    # short side 1000 // (2 × 100) = factor 5: the independent box mean of 5×5 blocks.
    want = pixels.reshape(200, 5, 400, 5, 3).astype(np.float64).mean(axis=(1, 3))
    assert out.size == (400, 200)
    assert np.abs(np.asarray(out).astype(np.float64) - want).max() <= 1.0
    # Without min_side (or when it would not halve the image) nothing is reduced.
    assert load_rgb_bytes(_encode(Image.fromarray(pixels), "PNG")).size == (2000, 1000)
    assert load_rgb_bytes(_encode(Image.fromarray(pixels), "PNG"), min_side=300).size == (2000, 1000)


def test_large_16bit_png_is_reduced_and_scaled():
    im = Image.fromarray(np.full((1000, 1600), 257 * 77, dtype=np.uint16))
    out = load_rgb_bytes(_encode(im, "PNG"), min_side=50)
    assert out.size == (160, 100)  # factor 1000 // 100 = 10
    assert np.all(np.asarray(out) == 77)


def test_large_jpeg_decodes_at_reduced_scale_and_keeps_its_orientation():
    im = Image.fromarray(_gradient(1600, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    data = _encode(im, "JPEG", quality=90, exif=exif)
    full = load_rgb_bytes(data)
    assert full.size == (800, 1600)  # exif_transpose applied
    small = load_rgb_bytes(data, min_side=200)
    assert small.size == (200, 400)  # DCT scaling 1/4 (the smallest that keeps 800 ≥ 200), then the same rotation
    assert load_rgb_bytes(data, min_side=100).size == (100, 200)  # 1/8 keeps 100
    # Same picture: the full decode box-reduced by 4 matches the draft decode closely.
    ref = np.asarray(full).astype(np.float64).reshape(400, 4, 200, 4, 3).mean(axis=(1, 3))
    assert np.abs(np.asarray(small).astype(np.float64) - ref).mean() < 4.0


@pytest.mark.slow
def test_pixel_limit_is_checked_on_what_is_decoded_and_can_be_raised():
    data = _encode(Image.fromarray(_gradient(1600, 800)), "JPEG")
    with pytest.raises(BadImageError, match="--max-pixels"):
        load_rgb_bytes(data, max_pixels=1_000_000)
    assert load_rgb_bytes(data, max_pixels=1_280_000).size == (1600, 800)
    assert load_rgb_bytes(data, max_pixels=100_000, min_side=200).size == (400, 200)  # decoded at 1/4: 80,000 px
    big = _encode(Image.new("L", (15000, 13000)), "PNG")  # 195 Mpx: over PIL's own hard limit of 2 × 89.5 Mpx
    with pytest.raises(BadImageError, match="--max-pixels"):
        load_rgb_bytes(big)
    assert load_rgb_bytes(big, max_pixels=200_000_000, min_side=1000).size == (2500, 2167)  # factor 13000 // 2000 = 6


def test_cap_aspect_keeps_ordinary_images_and_cuts_long_ones_around_their_centre():
    from lookalike.embed.models import MODELS
    from lookalike.embed.transforms import build_transform, cap_aspect

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (10, 100, 3), dtype=np.uint8)
    cut = cap_aspect(Image.fromarray(wide))
    assert cut.size == (40, 10) and np.array_equal(np.asarray(cut), wide[:, 30:70])
    tall = rng.integers(0, 256, (101, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(cap_aspect(Image.fromarray(tall))), tall[40:60])
    ordinary = Image.fromarray(wide[:, :40])
    assert cap_aspect(ordinary) is ordinary  # 4:1 and squarer: untouched, so embeddings do not change
    # arrays (what the decoder gives the transform) are cut the same way, as views
    assert np.array_equal(cap_aspect(wide), wide[:, 30:70]) and np.array_equal(cap_aspect(tall), tall[40:60])
    assert cap_aspect(wide[:, :40]).shape == (10, 40, 3)
    # A 1×65000 strip becomes a 256×1024 resize, then the usual 224² crop, as uint8 pixels (H, W, 3).
    tensor = build_transform(MODELS["resnet18"].preprocess)(Image.new("RGB", (1, 65000), (9, 9, 9)))
    assert tuple(tensor.shape) == (224, 224, 3) and tensor.dtype == torch.uint8 and int(tensor.min()) == 9


@pytest.mark.parametrize("model", ["resnet18", "clip"])
def test_the_transform_crops_uint8_and_the_model_side_normalises_as_the_formula_does(model):
    """The transform keeps the resized, centre-cropped uint8 pixels (H, W, 3); `normalise_pixels` (torch's half of
    the model input) gives (x / 255 − mean) / std per channel, computed here in float64, in NCHW."""
    from lookalike.embed.models import MODELS
    from lookalike.embed.transforms import build_transform, normalise_pixels

    p = MODELS[model].preprocess
    rng = np.random.default_rng(1)
    # the resize's size already: it keeps it
    array = rng.integers(0, 256, (p.resize_size, p.resize_size, 3), dtype=np.uint8)
    top = round((p.resize_size - p.image_size) / 2)  # the centre crop
    crop = array[top : top + p.image_size, top : top + p.image_size]
    for image in (Image.fromarray(array), array):
        got = build_transform(p)(image)
        assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), crop)
    expected = (crop.astype(np.float64).transpose(2, 0, 1) / 255 - np.array(p.mean)[:, None, None]) / np.array(p.std)[
        :, None, None
    ]
    for channels_last in (False, True):
        normalised = normalise_pixels(torch.from_numpy(crop.copy())[None], p, channels_last)
        assert normalised.dtype == torch.float32 and tuple(normalised.shape) == (1, *expected.shape)
        assert normalised.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        np.testing.assert_allclose(normalised[0].numpy(), expected, atol=2e-6)


def _jpeg(array: np.ndarray, orientation: int = 1, **save) -> bytes:
    image = Image.fromarray(array)
    exif = image.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, exif=exif.tobytes(), **save)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("min_side", [None, 40, 37, 150])
def test_simplejpeg_decodes_the_pixels_pil_does_upright_and_at_the_same_reduced_scale(orientation, min_side):
    """The fast decoder gives PIL's pixels exactly (both are libjpeg-turbo), for every EXIF orientation, at full size
    and DCT-reduced, with the file's full upright size; PIL is the independent reference here."""
    from lookalike.data.images import decode_pixels

    rng = np.random.default_rng(orientation)
    array = np.kron(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 240×400
    data = _jpeg(array, orientation)
    fast = decode_pixels(data, min_side=min_side)
    assert fast.decoder == "simplejpeg"
    with Image.open(io.BytesIO(data)) as im:
        if min_side:
            im.draft("RGB", (min_side, min_side))
        expected = np.asarray(ImageOps.exif_transpose(im.convert("RGB")))
    swapped = orientation in (5, 6, 7, 8)
    assert (fast.width, fast.height) == ((240, 400) if swapped else (400, 240))
    assert fast.array.dtype == np.uint8 and fast.array.shape == expected.shape
    assert np.array_equal(fast.array, expected)
    assert min(fast.array.shape[:2]) >= (min_side or 0)


def test_jpegs_simplejpeg_cannot_take_go_to_pil_with_its_errors():
    """Greyscale and progressive JPEGs decode fast and equal PIL's; a CMYK JPEG goes to PIL; a truncated or corrupt
    one gets PIL's clear error; the pixel limit is checked from the header, before decoding."""
    from lookalike.data.images import decode_pixels

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG")
    fast = decode_pixels(buffer.getvalue())
    assert fast.decoder == "simplejpeg" and fast.array.shape == (64, 48, 3)
    assert np.array_equal(fast.array, np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    # a 64 px JPEG for a 37 px resize: PIL's draft keeps full size, where libjpeg-turbo alone would pick its 5/8 scale
    small = _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert np.array_equal(
        decode_pixels(small, min_side=37).array, decode_pixels(small, min_side=37, decoder="pil").array
    )
    progressive = _jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), progressive=True)
    assert decode_pixels(progressive).decoder == "simplejpeg"
    buffer = io.BytesIO()
    Image.new("CMYK", (20, 10), (0, 255, 0, 0)).save(buffer, "JPEG")
    cmyk = decode_pixels(buffer.getvalue())
    assert cmyk.decoder == "pil" and cmyk.array.shape == (10, 20, 3)
    assert np.array_equal(cmyk.array, np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    whole = _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for broken in (whole[: len(whole) // 2], whole[:200] + b"\x00" * 300):
        with pytest.raises(BadImageError, match="corrupt or truncated|cannot read image"):
            decode_pixels(broken, name="broken.jpg")
    with pytest.raises(BadImageError, match="--max-pixels"):
        decode_pixels(whole, max_pixels=1000)
    png = _encode(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), "PNG")
    assert decode_pixels(png).decoder == "pil" and decode_pixels(whole, decoder="pil").decoder == "pil"
