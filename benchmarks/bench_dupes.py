"""Near-duplicates: `lookalike dupes` beside imagededup's hashes on generated copies, and its speed (issue 23).

The set follows imagededup's protocol on images this script draws: each original (a generated
scene: two in three photograph-like — sky and ground with 1/f textures, shaded textured objects,
blur, vignetting, sensor noise, JPEG — and one in three drawing-like — ink outlines, flat fills and
hatching on paper, PNG) gets eight copies: an exact copy (the same bytes), resized to 50%, JPEG
re-encoded at quality 30, a centre crop of 90%, brightness +25%, rotated 4°, mirrored, and a text
overlay (PIL's default font). Distractors are drawn the same way and have no copy. Every pair inside
a family (the original and its copies) is a duplicate pair; every other pair is not.

Each model (ResNet-18, MobileNet-V2, CLIP ViT-B/32, all with RANDOM weights) embeds the images,
and `find_duplicates` runs at each preset and across a fine sweep of thresholds on the normalised
score. Pairwise precision, recall and F1 count the pairs inside the reported groups; per transform,
the recall of the original↔copy pairs of that transform. imagededup's PHash, DHash, WHash and
AHash run on the same files with their default threshold (Hamming distance ≤ 10) and are scored by
their own duplicate maps, and at their F1-maximising distance. imagededup's CNN needs weights
downloaded from its model hub, which this machine cannot reach, so it is not run.

Speed: `find_duplicates` at the `near` preset on 100k generated rows (clustered and bunched, each
with 1% planted copies) and on 1M bunched rows (IVF, with its pair recall against the exact scan on
a sample), with the peak memory the call added.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lookalike  # noqa: E402
from common import (
    BUNCHED_LABEL,
    GENERATOR,
    bunched_line,
    environment_markdown,
    generator_line,
    load_watch,
    markdown_table,
    parser,
    should_write,
    wait_for_quiet,
    write_section,
)  # noqa: E402
from lookalike import runtime  # noqa: E402
from lookalike.data.datasets import SYNTHETIC_MARKER  # noqa: E402
from lookalike.data.vectors import bunched_cluster_model, random_cluster_model  # noqa: E402
from lookalike.fileio import json_text  # noqa: E402
from lookalike.gallery import Gallery  # noqa: E402
from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery  # noqa: E402
from lookalike.search import dupes  # noqa: E402

SECTION = "Near-duplicates"
TRANSFORMS = ("exact", "resize50", "jpeg30", "crop90", "bright125", "rotate4", "mirror", "text")
MODELS = ("resnet18", "mobilenet", "clip")
HASHES = ("PHash", "DHash", "WHash", "AHash")
HASH_DEFAULT = 10  # imagededup's default max_distance_threshold (Hamming distance of 64-bit hashes)
SIZES = ((320, 240), (256, 256), (240, 320), (288, 216), (320, 200))  # width, height of a generated scene
DRAWING_SHARE = 1 / 3
NEAR_F1_SLACK = 0.02  # `near` may give up this much F1 from the peak for precision (see `recommended`)
MAX_PAIR_FACTOR = 20  # a sweep threshold giving more pairs than this × the true pairs (precision < 5%) is not grouped
PLANTED_SHARE = 0.01  # rows of a speed gallery replaced by copies of other rows
SPEED_DIM = 512
DEFAULT = {"originals": 200, "distractors": 1200, "sweep_step": 0.02, "rows": 100_000, "million": 1_000_000}
QUICK = {"originals": 12, "distractors": 36, "sweep_step": 0.1, "rows": 5_000, "million": 20_000}


# --- the images ---


def fractal_noise(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-variance noise whose power falls as 1/f^beta: natural images sit near beta = 2."""
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** (beta / 2)
    spectrum[0, 0] = 0
    x = np.fft.irfft2(spectrum, s=(h, w))
    return ((x - x.mean()) / (x.std() + 1e-9)).astype(np.float32)


def random_colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.05, 0.7)) -> np.ndarray:
    """An RGB colour (0..255) from a random hue, a muted saturation and a value, as photographs mostly have."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(0.15, 0.95)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32) * 255


def paint_object(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """`img` with one soft-edged object on it (a blob, a post, a rock or a branch), shaded and textured."""
    h, w = img.shape[:2]
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = rng.uniform(0, w), rng.uniform(0.15 * h, h), rng.uniform(0.06, 0.3) * min(w, h)
    kind = rng.integers(4)
    if kind == 0:
        draw.ellipse((cx - r, cy - r * rng.uniform(0.4, 1.2), cx + r, cy + r * rng.uniform(0.4, 1.2)), fill=255)
    elif kind == 1:
        half = r * rng.uniform(0.3, 1)
        draw.rectangle((cx - half, cy - r * rng.uniform(0.5, 2), cx + half, h), fill=255)
    elif kind == 2:
        n = int(rng.integers(3, 9))
        angles, radii = np.sort(rng.uniform(0, 2 * np.pi, n)), r * rng.uniform(0.4, 1.0, n)
        draw.polygon([(cx + a * math.cos(t), cy + a * math.sin(t)) for a, t in zip(radii, angles)], fill=255)
    else:
        points = [(cx, cy)]
        for _ in range(rng.integers(3, 7)):
            points.append((points[-1][0] + rng.normal(0, r), points[-1][1] + rng.normal(0, r)))
        draw.line(points, fill=255, width=int(rng.uniform(2, 0.25 * r + 3)), joint="curve")
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2))), np.float32)[..., None] / 255
    ramp = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.9, 1.3), w if rng.random() < 0.5 else h, dtype=np.float32)
    light = ramp[None, :, None] if len(ramp) == w else ramp[:, None, None]
    fill = random_colour(rng) * light + fractal_noise(rng, h, w, rng.uniform(1.6, 3.0))[..., None] * rng.uniform(4, 25)
    if rng.random() < 0.3:  # a striped surface
        period, angle = rng.uniform(4, 20), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
        fill = fill * (0.8 + 0.2 * stripes)[..., None]
    return img + alpha * (fill - img)


def photo_scene(rng: np.random.Generator) -> Image.Image:
    """A photograph-like scene: sky over ground with a rough horizon, textures at two scales, objects, blur, noise."""
    w, h = SIZES[rng.integers(len(SIZES))]
    ys = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :, None]
    horizon = rng.uniform(0.25, 0.75)
    top, top2, ground, ground2 = (random_colour(rng) for _ in range(4))
    sky = top + (top2 - top) * np.clip(ys / horizon, 0, 1)
    land = ground + (ground2 - ground) * np.clip((ys - horizon) / (1 - horizon), 0, 1)
    ridge = fractal_noise(rng, 1, w, 2.2)[0][None, :, None] * rng.uniform(0.01, 0.08)
    img = np.where(ys > horizon + rng.uniform(-0.15, 0.15) * xs + ridge, land, sky) + np.zeros((h, w, 3), np.float32)
    img += fractal_noise(rng, h, w, rng.uniform(2.6, 3.4))[..., None] * rng.uniform(10, 30)
    img += fractal_noise(rng, h, w, rng.uniform(1.4, 2.0))[..., None] * rng.uniform(2, 10)
    img += np.stack([fractal_noise(rng, h, w, 3.0) for _ in range(3)], -1) * rng.uniform(3, 10)
    for _ in range(rng.integers(3, 9)):
        img = paint_object(rng, img)
    blurred = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))
    )
    out = np.asarray(blurred, np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out *= (1 - rng.uniform(0, 0.6) * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2))[..., None]
    out += rng.standard_normal(out.shape).astype(np.float32) * rng.uniform(1, 5)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def drawing_scene(rng: np.random.Generator) -> Image.Image:
    """A drawing-like scene: ink outlines, some flat fills, strokes and hatching on slightly uneven paper."""
    w, h = SIZES[rng.integers(len(SIZES))]
    paper = rng.uniform(230, 255) - rng.uniform(0, 15, 3).astype(np.float32)
    ground = paper + np.zeros((h, w, 3), np.float32) + fractal_noise(rng, h, w, 1.5)[..., None] * 3
    pil = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    ink = tuple(int(c) for c in random_colour(rng) * rng.uniform(0.1, 0.5))
    for _ in range(rng.integers(4, 12)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.35) * min(w, h)
        kind = rng.integers(4)
        fill = tuple(int(c) for c in random_colour(rng, (0.1, 0.9))) if rng.random() < 0.5 else None
        width = int(rng.integers(1, 5))
        if kind == 0:
            box = (cx - r, cy - r * rng.uniform(0.5, 1.2), cx + r, cy + r * rng.uniform(0.5, 1.2))
            draw.ellipse(box, fill=fill, outline=ink, width=width)
        elif kind == 1:
            box = (cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r * rng.uniform(0.3, 1))
            draw.rectangle(box, fill=fill, outline=ink, width=width)
        elif kind == 2:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
            corners = [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in angles]
            draw.polygon(corners, fill=fill, outline=ink, width=width)
        else:
            points = [(cx, cy)]
            for _ in range(rng.integers(3, 12)):
                points.append((points[-1][0] + rng.normal(0, r / 2), points[-1][1] + rng.normal(0, r / 2)))
            draw.line(points, fill=ink, width=width, joint="curve")
    for _ in range(rng.integers(0, 3)):  # hatching
        x0, y0, step, size = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 8), rng.uniform(20, 80)
        for k in range(int(size / step)):
            draw.line((x0 + k * step, y0, x0 + k * step + size * 0.4, y0 + size), fill=ink, width=1)
    return pil.filter(ImageFilter.GaussianBlur(0.4))


def text_overlay(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """`img` with a caption in PIL's default font near its bottom, white with a dark outline, as a watermark is."""
    out = img.copy()
    w, h = out.size
    font = ImageFont.load_default(size=max(10, h // 12))
    words = ("holiday 2019", "© lookalike", "DSC_0412", "sample", "best day ever", "draft v2")
    text = words[int(rng.integers(len(words)))]
    ImageDraw.Draw(out).text(
        (int(w * rng.uniform(0.03, 0.3)), int(h * rng.uniform(0.75, 0.85))),
        text,
        font=font,
        fill=(255, 255, 255),
        stroke_width=1,
        stroke_fill=(0, 0, 0),
    )
    return out


def copies_of(img: Image.Image, rng: np.random.Generator) -> dict[str, Image.Image]:
    """The seven transformed copies of `img` (the exact copy is a file copy, made by `write_set`)."""
    w, h = img.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    return {
        "resize50": img.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "jpeg30": img,  # re-encoded at quality 30 when saved
        "crop90": img.crop((dx, dy, w - dx, h - dy)),
        "bright125": ImageEnhance.Brightness(img).enhance(1.25),
        "rotate4": img.rotate(4, resample=Image.Resampling.BICUBIC),
        "mirror": ImageOps.mirror(img),
        "text": text_overlay(img, rng),
    }


def save(img: Image.Image, path: Path, quality: int = 92) -> None:
    if path.suffix == ".png":
        img.save(path, "PNG")
    else:
        img.save(path, "JPEG", quality=quality)


def write_set(root: Path, originals: int, distractors: int, seed: int = 0) -> Path:
    """Write the originals with their copies (f<family>_<transform>) and the distractors (x<n>_distractor) into
    root/images, with a SYNTHETIC.json marker, and return root. Copies keep the original's format (JPEG or PNG)
    except the quality-30 one."""
    folder = root / "images"
    folder.mkdir(parents=True)
    for family in range(originals + distractors):
        rng = np.random.default_rng([seed, family])
        drawing = rng.random() < DRAWING_SHARE
        img, suffix = (drawing_scene(rng), ".png") if drawing else (photo_scene(rng), ".jpg")
        if family >= originals:
            save(img, folder / f"x{family:04d}_distractor{suffix}")
            continue
        original = folder / f"f{family:04d}_original{suffix}"
        save(img, original)
        shutil.copyfile(original, folder / f"f{family:04d}_exact{suffix}")
        for name, copy in copies_of(img, rng).items():
            if name == "jpeg30":
                save(copy, folder / f"f{family:04d}_{name}.jpg", quality=30)
            else:
                save(copy, folder / f"f{family:04d}_{name}{suffix}")
    marker = {
        "generator": "lookalike.synthetic",
        "drawn_by": "benchmarks/bench_dupes.py",
        "originals": originals,
        "distractors": distractors,
        "seed": seed,
        "note": "generated data, not real photographs",
    }
    (root / SYNTHETIC_MARKER).write_text(json_text(marker, sort_keys=True), encoding="utf-8")
    return root


# --- scoring pairs ---

Pair = tuple[int, int]


@dataclass(frozen=True)
class Truth:
    """What each row is: its family (-1: a distractor) and its role ("original", a transform, "distractor")."""

    family: np.ndarray
    role: tuple[str, ...]

    @classmethod
    def from_paths(cls, paths: Sequence[str]) -> Truth:
        stems = [Path(p).stem.split("_", 1) for p in paths]
        family = np.array([int(head[1:]) if head.startswith("f") else -1 for head, _ in stems])
        return cls(family, tuple(role for _, role in stems))

    def pairs(self) -> set[Pair]:
        """Every pair inside a family: the duplicate pairs."""
        rows: dict[int, list[int]] = {}
        for row, family in enumerate(self.family.tolist()):
            if family >= 0:
                rows.setdefault(family, []).append(row)
        return {pair for members in rows.values() for pair in itertools.combinations(sorted(members), 2)}

    def transform_pairs(self, transform: str) -> set[Pair]:
        """The (original, copy) pairs of one transform."""
        original = {int(f): row for row, (f, r) in enumerate(zip(self.family, self.role)) if r == "original"}
        return {
            tuple(sorted((original[int(f)], row)))
            for row, (f, r) in enumerate(zip(self.family, self.role))
            if r == transform
        }


@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    f1: float
    found: int  # pairs reported
    by_transform: tuple[float, ...]  # recall of the original↔copy pairs of each of TRANSFORMS


def score(found: set[Pair], truth: Truth, true_pairs: set[Pair]) -> Scores:
    hits = len(found & true_pairs)
    precision = hits / len(found) if found else 1.0
    recall = hits / len(true_pairs)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    by_transform = tuple(len(found & (t := truth.transform_pairs(name))) / len(t) for name in TRANSFORMS)
    return Scores(precision, recall, f1, len(found), by_transform)


def group_pairs(report: dupes.DuplicateReport) -> set[Pair]:
    """Every pair of rows inside one reported group."""
    return {pair for g in report.groups for pair in itertools.combinations(sorted(m.id for m in g.members), 2)}


# --- lookalike ---


@dataclass(frozen=True)
class Identical:
    """The identical-content tier on files with the same bytes (hashed here, independently of the gallery)."""

    grouped: int  # identical pairs found inside one group
    total: int  # identical pairs in the set
    marked: int  # pairs reported with reason "identical content" (against their keeper)
    marked_right: int  # of those, pairs whose bytes are the same

    @property
    def perfect(self) -> bool:
        return self.grouped == self.total and self.marked_right == self.marked


def identical_check(report: dupes.DuplicateReport, digests: Sequence[str]) -> Identical:
    rows: dict[str, list[int]] = {}
    for row, digest in enumerate(digests):
        rows.setdefault(digest, []).append(row)
    same = {pair for members in rows.values() for pair in itertools.combinations(sorted(members), 2)}
    marked = {
        tuple(sorted((g.keep, m.id))) for g in report.groups for m in g.members if m.reason == "identical content"
    }
    return Identical(len(same & group_pairs(report)), len(same), len(marked), len(marked & same))


@dataclass(frozen=True)
class ModelResult:
    model: str
    provenance: str
    extract_s: float
    median_r: float  # the median over rows of r, each row's neighbourhood statistic behind the normalised score
    presets: dict[str, Scores]
    identical: dict[str, Identical]  # per preset
    sweep: dict[float, Scores]  # thresholds too low to group (see MAX_PAIR_FACTOR) are left out

    def best(self) -> tuple[float, Scores]:
        return max(self.sweep.items(), key=lambda item: (item[1].f1, item[0]))


def run_model(model: str, root: Path, out: Path, thresholds: Sequence[float], threads: int) -> ModelResult:
    """Embed the set with `model` at random weights, then score `find_duplicates` at each preset and threshold."""
    t = time.perf_counter()
    gallery = lookalike.extract(root, out, model=model, weights="random", threads=threads)
    extract_s = time.perf_counter() - t
    truth = Truth.from_paths(gallery.paths)
    true_pairs = truth.pairs()
    digests = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in gallery.paths]
    presets, identical = {}, {}
    for preset in dupes.PRESETS:
        report = gallery.duplicates(preset=preset, method="exact")
        presets[preset] = score(group_pairs(report), truth, true_pairs)
        identical[preset] = identical_check(report, digests)
    sweep = {}
    for threshold in sorted(thresholds, reverse=True):  # stop where grouping would only report noise
        found = group_pairs(gallery.duplicates(threshold=threshold, method="exact"))
        if len(found) > MAX_PAIR_FACTOR * len(true_pairs):
            break
        sweep[threshold] = score(found, truth, true_pairs)
    print(f"  {model}: extracted in {extract_s:.1f} s; best F1 {max(s.f1 for s in sweep.values()):.3f}", flush=True)
    return ModelResult(model, gallery.provenance(), extract_s, report.scoring.median, presets, identical, sweep)


# --- imagededup ---


@dataclass(frozen=True)
class HashResult:
    name: str
    default: Scores  # at imagededup's default distance, from its own duplicate map
    best_distance: int
    best: Scores  # at the distance maximising F1 on this set


def run_hash(name: str, folder: Path, truth: Truth, row_of: dict[str, int], workers: int) -> HashResult:
    """One imagededup hash on the set: its duplicate map at the default distance, and a sweep of distances."""
    from imagededup import methods

    for logger in [n for n in logging.root.manager.loggerDict if n.startswith("imagededup")]:
        logging.getLogger(logger).setLevel(logging.WARNING)  # it logs every step at INFO
    hasher = getattr(methods, name)(verbose=False)
    codes = {k: v for k, v in hasher.encode_images(image_dir=folder, num_enc_workers=workers).items() if v}
    with warnings.catch_warnings():  # it warns that num_enc_workers is unused whenever encodings are given
        warnings.simplefilter("ignore", RuntimeWarning)
        duplicate_map = hasher.find_duplicates(
            encoding_map=codes, max_distance_threshold=HASH_DEFAULT, num_dist_workers=workers
        )
    true_pairs = truth.pairs()
    mapped = {tuple(sorted((row_of[a], row_of[b]))) for a, found in duplicate_map.items() for b in found}
    names = sorted(codes)
    rows = np.array([row_of[n] for n in names])
    bits = np.stack([np.unpackbits(np.frombuffer(bytes.fromhex(codes[n]), np.uint8)) for n in names]).astype(np.int32)
    distance = bits @ (1 - bits).T + (1 - bits) @ bits.T
    i, j = np.triu_indices(len(names), 1)
    by_distance = {}
    for d in range(0, 33):
        keep = distance[i, j] <= d
        a, b = rows[i[keep]], rows[j[keep]]
        by_distance[d] = {(int(x), int(y)) for x, y in zip(np.minimum(a, b), np.maximum(a, b))}
    if by_distance[HASH_DEFAULT] != mapped:  # the map is what imagededup reports; the sweep must agree with it
        print(f"  warning: {name}'s duplicate map differs from the Hamming sweep at {HASH_DEFAULT}", flush=True)
    scored = {d: score(found, truth, true_pairs) for d, found in by_distance.items()}
    best = max(scored, key=lambda d: (scored[d].f1, -d))
    print(f"  {name}: F1 {scored[HASH_DEFAULT].f1:.3f} at {HASH_DEFAULT}, {scored[best].f1:.3f} at {best}", flush=True)
    return HashResult(name, score(mapped, truth, true_pairs), best, scored[best])


# --- speed ---


@dataclass(frozen=True)
class SpeedRow:
    data: str
    rows: int
    method: str
    seconds: float
    groups: int
    pairs: int
    planted_found: float  # share of the planted copy pairs inside one group
    pair_recall: float | None
    peak_mib: float  # resident memory the call added at its peak


@contextmanager
def peak_rss() -> Iterator[dict]:
    """The process's resident memory at the start and its peak while the block runs (polled every 20 ms)."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    info = {"start": rss(), "peak": 0}
    info["peak"] = info["start"]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.02):
            info["peak"] = max(info["peak"], rss())

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield info
    finally:
        stop.set()
        thread.join()
        info["peak"] = max(info["peak"], rss())


def plant_copies(x: np.ndarray, share: float, seed: int) -> set[Pair]:
    """Overwrite `share` of the rows of `x` with copies of other rows and return the (source, copy) pairs.

    Each copy is its source moved by 1–20% of the squared distance to the source's nearest row in a
    sample of 20,000 others: much closer than any other row, as a re-encoded copy is.
    """
    rng = np.random.default_rng([seed, 23])
    n, d = x.shape
    rows = rng.choice(n, 3 * int(n * share), replace=False)
    sources, targets, others = np.split(rows, 3)
    sample = np.setdiff1d(rng.choice(n, min(n, 20_000), replace=False), rows)
    nearest = dupes.nearest_exact(x[sources], x[sample], 1).sims[:, 0]
    step = np.sqrt(rng.uniform(0.01, 0.2, len(sources)) * 2 * (1 - nearest)).astype(np.float32)[:, None]
    noise = rng.standard_normal((len(sources), d)).astype(np.float32)
    noise -= np.einsum("nd,nd->n", noise, x[sources])[:, None] * x[sources]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = x[sources] + step * noise
    x[targets] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    del others  # drawn only so that no sampled row is a source or a copy
    return {(int(min(s, t)), int(max(s, t))) for s, t in zip(sources, targets)}


def speed_gallery(path: Path, bunched: bool, n: int, seed: int = 0) -> tuple[Gallery, set[Pair]]:
    """A generated gallery (clustered, or GENERATED-bunched) of `n` rows with PLANTED_SHARE planted copies."""
    make = bunched_cluster_model if bunched else random_cluster_model
    model = make(SPEED_DIM, seed, **asdict(GENERATOR))
    x, clusters = model.sample(n, seed + 1)
    planted = plant_copies(x, PLANTED_SHARE, seed)
    label = BUNCHED_LABEL if bunched else "GENERATED"
    how = f"{model.how['method']}, {len(planted)} rows overwritten by planted copies of others"
    gallery = write_array_gallery(
        path,
        x,
        np.asarray(model.labels, dtype=object)[clusters],
        segments=[Segment("generated", 0, n, True, how, model.describe())],
        model=generated_model_block(SPEED_DIM, seed),
        data={"kind": "generated", "generator": model.describe(), "summary": f"{label} embeddings with planted copies"},
        overwrite=True,
    )
    return gallery, planted


def timed_dedup(gallery: Gallery, label: str, method: str, planted: set[Pair]) -> SpeedRow:
    with peak_rss() as memory:
        t = time.perf_counter()
        report = gallery.duplicates(preset="near", method=method)
        seconds = time.perf_counter() - t
    found = group_pairs(report)
    row = SpeedRow(
        label,
        gallery.count,
        f"auto → {report.method}" if method == "auto" else method,
        seconds,
        len(report.groups),
        len(found),
        len(found & planted) / len(planted),
        report.pair_recall,
        (memory["peak"] - memory["start"]) / 2**20,
    )
    print(f"  {label} {gallery.count} rows, {method}: {seconds:.1f} s, {row.peak_mib:.0f} MiB added", flush=True)
    return row


# --- the section ---


def f3(x: float) -> str:
    return f"{x:.3f}"


def quality_table(models: Sequence[ModelResult], hashes: Sequence[HashResult]) -> str:
    rows = []
    for m in models:
        for preset, s in m.presets.items():
            threshold = f"{dupes.PRESETS[preset]:g}"
            rows.append([m.model, f"`{preset}`", threshold, s.found, f3(s.precision), f3(s.recall), f"**{f3(s.f1)}**"])
            rows[-1] += [f"{r:.2f}" for r in s.by_transform]
    for h in hashes:
        for label, distance, s in (("default", HASH_DEFAULT, h.default), ("best here", h.best_distance, h.best)):
            rows.append([f"imagededup {h.name}", label, f"≤ {distance}", s.found, f3(s.precision), f3(s.recall)])
            rows[-1] += [f"**{f3(s.f1)}**", *(f"{r:.2f}" for r in s.by_transform)]
    headers = ["method", "preset", "threshold", "pairs", "precision", "recall", "F1", *TRANSFORMS]
    return markdown_table(headers, rows)


def sweep_table(models: Sequence[ModelResult]) -> str:
    thresholds = sorted({t for m in models for t in m.sweep}, reverse=True)
    best = {m.model: m.best()[0] for m in models}
    rows = []
    for t in thresholds:
        cells = [f"{t:.2f}"]
        for m in models:
            s = m.sweep.get(t)
            mark = "**" if best[m.model] == t else ""
            cells.append(f"{mark}{f3(s.f1)}{mark} ({s.precision:.2f} / {s.recall:.2f})" if s else "—")
        rows.append(cells)
    return markdown_table(["threshold", *(f"{m.model}: F1 (P / R)" for m in models)], rows)


def recommended(model: ModelResult) -> dict[str, float | None]:
    """The presets a model's sweep points to (the rules PRESETS were chosen by, on ResNet-18):

    - `similar`: the F1-maximising threshold;
    - `near`: the highest threshold whose F1 is within NEAR_F1_SLACK of that peak: the top of the F1 curve is flat,
      and its high end keeps precision as high as it allows (galleries with fewer copies than this set need it);
    - `exact`: the lowest threshold at which the groups take under 10% of the geometric copies (crop, rotation,
      mirror): re-encodes, resizes and light edits only.
    """
    peak, best = model.best()
    geometric = [TRANSFORMS.index(t) for t in ("crop90", "rotate4", "mirror")]
    return {
        "exact": min(
            (t for t, s in model.sweep.items() if np.mean([s.by_transform[g] for g in geometric]) < 0.1),
            default=None,
        ),
        "near": max(t for t, s in model.sweep.items() if s.f1 >= best.f1 - NEAR_F1_SLACK),
        "similar": peak,
    }


def common_near(models: Sequence[ModelResult]) -> float:
    """The `near` that suits every model: the lowest of their own `near` thresholds."""
    return min(recommended(m)["near"] for m in models)


def recommendation(model: ModelResult) -> str:
    peak, best = model.best()
    picks = recommended(model)
    near = model.sweep[picks["near"]]
    shown = ", ".join(f"`{k}` {'–' if v is None else f'{v:.2f}'}" for k, v in picks.items())
    return (
        f"- **{model.model}** (median r {model.median_r:.4f}): F1 peaks at **{best.f1:.3f}** at threshold {peak:.2f}"
        f" (precision {best.precision:.3f}, recall {best.recall:.3f}); within {NEAR_F1_SLACK} of it up to"
        f" {picks['near']:.2f} (F1 {near.f1:.3f}, precision {near.precision:.3f}). By the rules below: {shown}."
    )


def speed_table(rows: Sequence[SpeedRow]) -> str:
    return markdown_table(
        [
            "data",
            "rows",
            "method",
            "seconds",
            "groups",
            "pairs",
            "planted copies found",
            "pair recall",
            "peak RSS added",
        ],
        [
            [
                r.data,
                f"{r.rows:,}",
                r.method,
                f"{r.seconds:.1f}",
                f"{r.groups:,}",
                f"{r.pairs:,}",
                f"{r.planted_found:.3f}",
                "exact" if r.pair_recall is None else f"{r.pair_recall:.3f}",
                f"{r.peak_mib:,.0f} MiB",
            ]
            for r in rows
        ],
    )


def quality_markdown(
    models: Sequence[ModelResult], hashes: Sequence[HashResult], originals: int, distractors: int
) -> str:
    files = originals * (1 + len(TRANSFORMS)) + distractors
    default = next((m for m in models if m.model == "resnet18"), models[0])
    best_hash = max(hashes, key=lambda h: h.default.f1)
    best_tuned = max(hashes, key=lambda h: h.best.f1)
    ours = default.presets["near"].f1
    margin = ours - best_hash.default.f1
    identical = [
        f"{m.model} `{p}` {i.grouped}/{i.total} grouped, {i.marked_right}/{i.marked} marked right"
        for m in models
        for p, i in m.identical.items()
        if not i.perfect
    ]
    lines = [
        "**NOT a real result: GENERATED images, models with RANDOM weights.** "
        f"{originals} originals × (1 + {len(TRANSFORMS)} copies) + {distractors} distractors = {files} files,"
        f" {originals * math.comb(1 + len(TRANSFORMS), 2)} duplicate pairs. Galleries: "
        + "; ".join(f"`{m.provenance}` (extracted in {m.extract_s:.0f} s)" for m in models)
        + ".",
        "",
        "- Identical files (the exact copies) through the sha256 tier, at every preset and model: "
        + ("precision and recall **1** ✓." if not identical else "**not perfect** ✗: " + "; ".join(identical) + "."),
        f"- Goal (at the default preset `near`, ResNet-18 random weights, F1 above the best imagededup hash by ≥ 0.05):"
        f" {default.model} `near` F1 **{ours:.3f}** against {best_hash.name}'s **{best_hash.default.f1:.3f}** at its"
        f" default distance: margin **{margin:+.3f}** {'✓' if margin >= 0.05 else '✗'} on these generated images"
        f" (the best hash at its best distance here: {best_tuned.name} ≤ {best_tuned.best_distance},"
        f" F1 {best_tuned.best.f1:.3f}). The check on real photographs and drawings is held out.",
        "- imagededup's CNN method needs weights downloaded from its model hub, which this machine cannot reach: not"
        " run.",
        "",
        "### Precision, recall and F1 of the pairs, per preset and beside the hashes",
        "",
        "Pairs: every pair inside a reported group (lookalike) or a duplicate map's entry (imagededup). Per transform:"
        " the share of original↔copy pairs of that transform found. `threshold` is on lookalike's normalised score,"
        " or imagededup's Hamming distance.",
        "",
        quality_table(models, hashes),
        "",
        "### Where each preset sits: the threshold sweep",
        "",
        f"F1 (precision / recall) of `find_duplicates(threshold=t)` per model; **bold**: each model's best. Lower"
        f" thresholds, whose groups would hold more than {MAX_PAIR_FACTOR}× the true pairs (precision under"
        f" {1 / MAX_PAIR_FACTOR:.0%}), are not run.",
        "",
        sweep_table(models),
        "",
        *[recommendation(m) for m in models],
        "",
        "Rules (`recommended`): `similar` = the F1-maximising threshold; `near` = the highest threshold whose F1 is"
        f" within {NEAR_F1_SLACK} of that peak (the top of the curve is flat; its high end keeps precision, which"
        " galleries with fewer copies than this set need); `exact` = the lowest threshold whose groups take under 10%"
        " of the geometric copies (crop, rotation, mirror). One preset serves every model (scores are whitened per"
        " gallery so that it can): the library's `near` is the highest threshold within the slack of the peak for"
        f" every model, here {common_near(models):.2f}. The library's presets, "
        + ", ".join(f"`{k}` {v:g}" for k, v in dupes.PRESETS.items())
        + ", were set by these rules on this script's full run (200 originals, 1200 distractors).",
    ]
    return "\n".join(lines)


def speed_markdown(rows: Sequence[SpeedRow], million: bool, quick: bool) -> str:
    n2 = max(r.rows for r in rows) ** 2 * 4 / 2**30
    return "\n".join(
        [
            "### Speed",
            "",
            f'`find_duplicates(preset="near")` on generated galleries ({SPEED_DIM}-d, no images) in which'
            f" {PLANTED_SHARE:.0%} of the rows were overwritten by copies of other rows, each moved from its source by"
            " 1–20% of the squared distance to the source's nearest row (in a 20,000-row sample). `auto` is what"
            " `lookalike dupes` runs (exact up to"
            f" {dupes.EXACT_MAX_ROWS:,} rows, IVF above); the IVF method states its pair recall against the exact"
            f" scan on {dupes.RECALL_SAMPLE_ROWS} sampled rows. Peak RSS added: the resident memory the call added at"
            f" its peak, against {n2:,.0f} GiB for one N×N float32 matrix of the largest gallery; the search holds"
            f" one block of {dupes.BLOCK_BYTES / 2**20:.0f} MiB of similarities and {dupes.NEIGHBOUR_K} neighbours per"
            " row.",
            "",
            speed_table(rows),
            "",
            generator_line(GENERATOR, 0, None),
            bunched_line(GENERATOR, 0),
            f"- Pairs beyond the planted copies (one per {1 / PLANTED_SHARE:.0f} rows) are chance pairs: the"
            " generator's cluster-mates whose score reaches `near` relative to their own neighbourhoods. Scores"
            " relative to each row's neighbourhood flag such pairs wherever copies are few; this table counts them"
            " on generated vectors, not on images.",
            "- Goals: 100k rows in ≤ 30 s, 1M in ≤ 10 min, on 2 cores."
            + ("" if million or quick else " The 1M run was skipped in this run (`--no-million`)."),
        ]
    )


def check_disk(folder: str, need_gib: float) -> None:
    free = shutil.disk_usage(folder).free / 2**30
    if free < need_gib:
        raise SystemExit(f"{folder} has {free:.1f} GiB free; this run writes about {need_gib:.1f} GiB: free some space")


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--originals", type=int, default=None, help="originals with copies (default 200; --quick 12)")
    p.add_argument("--distractors", type=int, default=None, help="images without a copy (default 1200; --quick 36)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)})")
    p.add_argument("--no-speed", action="store_true", help="measure precision and recall only")
    p.add_argument("--no-million", action="store_true", help="skip the 1M-row speed run (minutes on 2 cores)")
    args = p.parse_args()
    sizes = QUICK if args.quick else DEFAULT
    originals = args.originals or sizes["originals"]
    distractors = sizes["distractors"] if args.distractors is None else args.distractors
    models = args.models.split(",")
    threads = runtime.set_threads(args.threads)
    steps = round(1 / sizes["sweep_step"])
    thresholds = [round(k / steps, 4) for k in range(1, steps + 1)]
    million = not (args.no_speed or args.no_million)
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-dupes-") as tmp:
        work = Path(tmp)
        check_disk(tmp, 0.5 + (sizes["million"] * SPEED_DIM * 4 * 1.1 / 2**30 if million else 0.0))
        with load_watch() as load:
            t = time.perf_counter()
            root = write_set(work / "set", originals, distractors)
            print(
                f"wrote {originals} originals with copies and {distractors} distractors in"
                f" {time.perf_counter() - t:.0f} s",
                flush=True,
            )
            results = [run_model(m, root, work / m, thresholds, threads) for m in models]
            truth = Truth.from_paths(sorted(str(p) for p in (root / "images").iterdir()))
            row_of = {p.name: i for i, p in enumerate(sorted((root / "images").iterdir()))}
            hashes = [run_hash(h, root / "images", truth, row_of, threads) for h in HASHES]
        parts = [
            __doc__.split("\n\n", 1)[1].strip(),
            quality_markdown(results, hashes, originals, distractors),
            environment_markdown(load, args.quick),
        ]
        shutil.rmtree(root)
        if not args.no_speed:
            if not args.quick:
                wait_for_quiet()  # extraction loaded the cores: let that pass before timing
            rows = []
            with load_watch() as load:
                for bunched in (False, True):
                    gallery, planted = speed_gallery(work / "speed", bunched, sizes["rows"])
                    label = BUNCHED_LABEL if bunched else "GENERATED"
                    rows += [timed_dedup(gallery, label, method, planted) for method in ("auto", "exact")]
                if million:
                    gallery, planted = speed_gallery(work / "speed", True, sizes["million"])
                    rows.append(timed_dedup(gallery, BUNCHED_LABEL, "ivf", planted))
                shutil.rmtree(work / "speed")
            parts += [speed_markdown(rows, million, args.quick), environment_markdown(load, args.quick)]
    doc = "\n\n".join(parts)
    print(doc)
    if should_write(args):
        print(f"\nwrote section '{SECTION}' of {write_section(SECTION, doc)}")


if __name__ == "__main__":
    main()
