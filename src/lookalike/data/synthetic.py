"""Small labelled image collections made on the spot, for tests, demos and smoke runs.

Real data (tiny-ImageNet-200, 250 MB) is not always at hand, and tests must not download
anything. `generate_collection` writes a collection in the tiny-ImageNet-200 layout whose
classes are easy to tell apart (each has its own shape, colours, texture and orientation)
while images within a class still vary (position, size, rotation, colour, brightness).
A `SYNTHETIC.json` marker at the root keeps anyone from mistaking it for photographs:
`lookalike.data.datasets.load_collection` reads it into `Collection.synthetic`.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lookalike.data.datasets import SYNTHETIC_MARKER
from lookalike.errors import DataError
from lookalike.fileio import json_text

__all__ = ["GENERATOR", "VERSION", "ClassStyle", "class_style", "generate_collection"]

GENERATOR = (  # the marker's format id, kept from before the package layout so old collections still open
    "lookalike.synthetic"
)
#: Bump when the same parameters would produce different pixels.
VERSION = 1

_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon")
_PLURALS = {"cross": "crosses"}
# Sizes 8, 9, 5 and 11 are pairwise coprime, so class i < 3960 has a unique combination
# (Chinese remainder theorem) and neighbouring classes differ in every attribute.
_FOREGROUNDS = (
    ("red", (220, 40, 40)),
    ("green", (40, 180, 60)),
    ("blue", (40, 80, 230)),
    ("yellow", (245, 220, 40)),
    ("magenta", (215, 60, 205)),
    ("cyan", (40, 215, 225)),
    ("orange", (250, 140, 30)),
    ("white", (248, 248, 248)),
    ("black", (18, 18, 18)),
)
_TEXTURES = ("stripes", "checks", "noise", "gradient", "waves")
_BACKGROUNDS = (
    ("grey", (128, 128, 128)),
    ("sand", (225, 205, 160)),
    ("navy", (30, 40, 95)),
    ("olive", (115, 115, 40)),
    ("maroon", (105, 30, 45)),
    ("lavender", (195, 180, 232)),
    ("teal", (25, 105, 110)),
    ("brown", (120, 75, 35)),
    ("sky", (135, 190, 235)),
    ("mint", (170, 225, 190)),
    ("rose", (230, 150, 165)),
)
MAX_CLASSES = len(_SHAPES) * len(_FOREGROUNDS) * len(_TEXTURES) * len(_BACKGROUNDS)  # 3960

_SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges at little cost
_JPEG_QUALITY = 90
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ClassStyle:
    """What every image of one synthetic class shares."""

    wnid: str  # fake WordNet-like id, e.g. "s0000003"
    name: str  # e.g. "yellow stars on olive checks"
    shape: str
    foreground: tuple[int, int, int]  # RGB 0..255
    background: tuple[int, int, int]  # RGB 0..255
    texture: str
    orientation_deg: float  # base rotation of the shape and the texture, degrees


def class_style(index: int) -> ClassStyle:
    """The style of class `index` (0 <= index < MAX_CLASSES); it does not depend on the seed."""
    if not 0 <= index < MAX_CLASSES:
        raise DataError(
            f"class index {index} is out of range; synthetic collections have at most {MAX_CLASSES} classes"
        )
    shape = _SHAPES[index % len(_SHAPES)]
    fg_name, fg = _FOREGROUNDS[index % len(_FOREGROUNDS)]
    texture = _TEXTURES[index % len(_TEXTURES)]
    bg_name, bg = _BACKGROUNDS[index % len(_BACKGROUNDS)]
    orientation = float((index * 7) % 12) * 15.0  # 0..165 degrees in 15-degree steps
    name = f"{fg_name} {_PLURALS.get(shape, shape + 's')} on {bg_name} {texture}"
    return ClassStyle(f"s{index:07d}", name, shape, fg, bg, texture, orientation)


def generate_collection(
    root: str | os.PathLike,
    n_classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 10,
    test_count: int = 0,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a synthetic tiny-ImageNet-style collection at `root` and return `root`.

    The same parameters give byte-identical files. Running again with the same parameters
    into the same folder returns at once; a non-empty folder holding anything else is
    refused. The collection appears atomically: it is written to a sibling temp folder and
    renamed, so an interrupted run never leaves a half-written collection at `root`.
    `image_size` is in pixels (square images).
    """
    params = _check_params(n_classes, train_per_class, val_per_class, test_count, image_size, seed)
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if _existing_matches(root, params):
        return root

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_collection(tmp, params)
        if root.is_dir():
            root.rmdir()  # empty, checked above; rename() cannot replace it otherwise on all systems
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished first; fine if it made the same collection.
            if _existing_matches(root, params):
                return root
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# --- parameters and the marker --------------------------------------------------------


def _check_params(
    n_classes: int, train_per_class: int, val_per_class: int, test_count: int, image_size: int, seed: int
) -> dict:
    ints = {
        "n_classes": n_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "test_count": test_count,
        "image_size": image_size,
        "seed": seed,
    }
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"{key} must be an integer, got {value!r}")
        if value < 0:
            raise DataError(f"{key} must be >= 0, got {value}")
    if not 1 <= n_classes <= MAX_CLASSES:
        raise DataError(f"n_classes must be between 1 and {MAX_CLASSES}, got {n_classes}")
    if not 16 <= image_size <= 1024:
        raise DataError(f"image_size must be between 16 and 1024 pixels, got {image_size}")
    if train_per_class + val_per_class + test_count == 0:
        raise DataError("train_per_class, val_per_class and test_count are all 0; ask for at least one image")
    return {
        "generator": GENERATOR,
        "version": VERSION,
        **{k: int(v) for k, v in ints.items()},
        "note": "generated data, not real photographs",
    }


def _read_marker(root: Path) -> dict | None:
    try:
        data = json.loads((root / SYNTHETIC_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _existing_matches(root: Path, params: dict) -> bool:
    """True when `root` already holds this exact collection; raise when it holds anything else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise DataError(f"{root} is a file; give generate_collection a folder path")
    if not any(root.iterdir()):
        return False
    marker = _read_marker(root)
    if marker is None or marker.get("generator") != GENERATOR:
        raise DataError(f"{root} is not empty and is not a synthetic collection; choose an empty or new folder")
    if any(marker.get(k) != v for k, v in params.items() if k != "note"):
        old = ", ".join(f"{k}={marker.get(k)}" for k in params if k not in ("generator", "note"))
        raise DataError(
            f"{root} already holds a synthetic collection made with other parameters ({old}); "
            "choose another folder or delete it"
        )
    return True


# --- writing --------------------------------------------------------------------------


def _write_collection(root: Path, params: dict) -> None:
    n, size, seed = params["n_classes"], params["image_size"], params["seed"]
    styles = [class_style(i) for i in range(n)]
    (root / "wnids.txt").write_text("".join(s.wnid + "\n" for s in styles), encoding="utf-8")
    (root / "words.txt").write_text("".join(f"{s.wnid}\t{s.name}\n" for s in styles), encoding="utf-8")
    grid = _Grid(size)

    if params["train_per_class"]:
        for ci, style in enumerate(styles):
            images = root / "train" / style.wnid / "images"
            images.mkdir(parents=True)
            boxes = []
            for i in range(params["train_per_class"]):
                name = f"{style.wnid}_{i}.JPEG"
                box = _write_image(images / name, style, grid, size, _rng(seed, "train", ci, i))
                boxes.append(f"{name}\t" + "\t".join(map(str, box)) + "\n")
            boxes_path = root / "train" / style.wnid / f"{style.wnid}_boxes.txt"
            boxes_path.write_text("".join(boxes), encoding="utf-8")

    order = np.random.default_rng([seed, 7]).permutation(np.repeat(np.arange(n), params["val_per_class"]))
    if len(order):
        (root / "val" / "images").mkdir(parents=True)
        lines = []
        for k, ci in enumerate(order):
            name = f"val_{k}.JPEG"
            style = styles[int(ci)]
            rng = _rng(seed, "val", int(ci), k)
            box = _write_image(root / "val" / "images" / name, style, grid, size, rng)
            lines.append(f"{name}\t{style.wnid}\t" + "\t".join(map(str, box)) + "\n")
        (root / "val" / "val_annotations.txt").write_text("".join(lines), encoding="utf-8")

    if params["test_count"]:
        (root / "test" / "images").mkdir(parents=True)
        test_classes = np.random.default_rng([seed, 8]).integers(0, n, params["test_count"])
        for k, ci in enumerate(test_classes):
            rng = _rng(seed, "test", int(ci), k)
            _write_image(root / "test" / "images" / f"test_{k}.JPEG", styles[int(ci)], grid, size, rng)

    # The marker goes last: its presence means the collection is complete.
    (root / SYNTHETIC_MARKER).write_text(json_text(params, sort_keys=True), encoding="utf-8")


def _rng(seed: int, split: str, class_index: int, image_index: int) -> np.random.Generator:
    """One generator per image, so each image depends only on its own identity, not on order."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], class_index, image_index])


class _Grid:
    """Pixel coordinates relative to the image centre, computed once per collection."""

    def __init__(self, size: int) -> None:
        self.size = size
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        self.x = xs - size / 2
        self.y = ys - size / 2


def _texture(style: ClassStyle, grid: _Grid, angle_rad: float, rng: np.random.Generator) -> np.ndarray:
    """Pattern in 0..1, shape (S, S): the class's texture at the image's angle and phase."""
    s = grid.size
    c, sn = math.cos(angle_rad), math.sin(angle_rad)
    u = grid.x * c + grid.y * sn
    period = s * rng.uniform(0.14, 0.2)
    phase = rng.uniform(0, period)
    if style.texture == "stripes":
        return (np.floor((u + phase) / period) % 2).astype(np.float32)
    if style.texture == "checks":
        v = -grid.x * sn + grid.y * c
        return ((np.floor((u + phase) / period) + np.floor(v / period)) % 2).astype(np.float32)
    if style.texture == "noise":
        block = max(1, s // 16)
        cells = rng.random((s // block + 1, s // block + 1), dtype=np.float32)
        return np.kron(cells, np.ones((block, block), np.float32))[:s, :s]
    if style.texture == "gradient":
        return (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    # waves
    v = -grid.x * sn + grid.y * c
    return 0.5 + 0.5 * np.sin(2 * np.pi * (u + phase) / period + 1.5 * np.sin(2 * np.pi * v / (2.5 * period)))


def _shape_points(shape: str, cx: float, cy: float, r: float, angle_rad: float) -> list[tuple[float, float]]:
    """Polygon vertices (canvas pixels) of `shape` centred at (cx, cy) with outer radius r."""
    if shape == "square":
        local = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * np.pi, 5)[:-1] + np.pi / 4]
    elif shape == "triangle":
        local = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * np.pi, 4)[:-1] - np.pi / 2]
    elif shape == "hexagon":
        local = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
    elif shape == "star":
        local = [
            ((1.0 if k % 2 == 0 else 0.42) * math.cos(a), (1.0 if k % 2 == 0 else 0.42) * math.sin(a))
            for k, a in enumerate(np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2)
        ]
    elif shape == "diamond":
        local = [(1.0, 0.0), (0.0, 0.55), (-1.0, 0.0), (0.0, -0.55)]
    elif shape == "cross":
        w = 0.33
        local = [
            (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1),
            (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1),
        ]  # fmt: skip
    else:
        raise ValueError(shape)
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in local]


def _write_image(
    path: Path, style: ClassStyle, grid: _Grid, size: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Render one jittered image of `style`, save it as JPEG and return its box (x0, y0, x1, y1), pixels."""
    angle = math.radians(style.orientation_deg + rng.uniform(-12, 12))

    # Background: the class colour, jittered, mixed with a lighter or darker shade by the texture.
    bg = np.asarray(style.background, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    shade = bg + np.float32(60.0 if sum(style.background) < 3 * 128 else -60.0)
    canvas = _texture(style, grid, angle, rng)[..., None] * (shade - bg) + bg

    # Shape: drawn as a mask at _SUPERSAMPLE x the size and reduced, for smooth edges.
    k = _SUPERSAMPLE
    s = size * k
    fg = np.clip(np.asarray(style.foreground, np.float32) + rng.normal(0, 12, 3).astype(np.float32), 0, 255)
    cx, cy = (s / 2 + rng.uniform(-0.12, 0.12) * s for _ in range(2))
    r = s * rng.uniform(0.22, 0.32)
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    if style.shape in ("circle", "ring"):
        box = (cx - r, cy - r, cx + r, cy + r)
        if style.shape == "circle":
            draw.ellipse(box, fill=255)
        else:
            draw.ellipse(box, outline=255, width=max(1, int(r * 0.32)))
    else:
        points = _shape_points(style.shape, cx, cy, r, angle)
        draw.polygon(points, fill=255)
        xs, ys = zip(*points)
        box = (min(xs), min(ys), max(xs), max(ys))
    if k > 1:
        mask = mask.reduce(k)
    alpha = np.asarray(mask, np.float32)[..., None] * np.float32(1 / 255)
    pixels = canvas + alpha * (fg - canvas)

    # Per-image brightness and sensor-like noise.
    pixels *= np.float32(rng.uniform(0.85, 1.15))
    pixels += rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(4.0)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=_JPEG_QUALITY)
    path.write_bytes(buf.getvalue())

    x0, y0, x1, y1 = (int(np.clip(round(v / k), 0, size - 1)) for v in box)
    return x0, y0, x1, y1
