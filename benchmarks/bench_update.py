"""Incremental update against full extraction: adding 1% new images to a 20k-image gallery (issue 13).

Goal: the update costs at most 3% of the full extraction's wall time, scanning included.

Measured on one generated collection (lookalike.data.synthetic, 200 classes × (99 train + 1 val)
= 20,000 JPEGs of 64×64 px, tiny-ImageNet's layout and size), resnet18 with random weights
(speed does not depend on weight values) at its own 224-px input:
    full      `lookalike.embed.extract.extract` of the whole collection into an empty folder
    update    the same call after 1% new images (200, from another seed) were copied into the
              class folders, on a copy of the full gallery holding saved flat and ivf indexes,
              so the update also updates them; repeated on fresh copies, median reported
    scan      `prepare` alone on the changed folder: listing, stat of every file, the plan
    no-op     the same call once more with nothing changed (a scan that finds nothing to do)
Wall times are the whole call as a user sees it (model loading and the final writes included).
The update's gallery is checked against the full extraction: every kept row's embedding is the
one the full run wrote.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment_markdown, load_watch, markdown_table, parser, should_write, write_section  # noqa: E402
from lookalike import build_index, runtime  # noqa: E402
from lookalike.data.synthetic import generate_collection  # noqa: E402
from lookalike.embed.extract import ExtractConfig, extract, prepare  # noqa: E402

SECTION = "Incremental update (issue 13)"
GOAL_RATIO = 0.03
MODEL = "resnet18"
FULL = {"n_classes": 200, "train_per_class": 99, "val_per_class": 1, "image_size": 64}  # 20,000 images
QUICK = {"n_classes": 4, "train_per_class": 24, "val_per_class": 1, "image_size": 32}  # 100 images
ADDED_FRACTION = 0.01


def config(data: Path, out: Path, args) -> ExtractConfig:
    return ExtractConfig(
        data=str(data),
        out=str(out),
        model=MODEL,
        weights="random",
        image_size=args.image_size,
        batch_size=args.bs,
        threads=args.threads,
    )


def add_images(data: Path, donor: Path, count: int) -> int:
    """Copy `count` donor images into the collection's class folders, round robin; returns how many."""
    classes = sorted((data / "train").iterdir())
    sources = sorted(donor.glob("train/*/images/*.JPEG"))[:count]
    for i, src in enumerate(sources):
        shutil.copyfile(src, classes[i % len(classes)] / "images" / f"added_{i:05d}.JPEG")
    return len(sources)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="updates timed, each on a fresh copy of the full gallery")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument(
        "--image-size", type=int, default=None, help="model input (default: the model's own, 224; --quick: 32)"
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    sizes = QUICK if args.quick else FULL
    args.image_size = args.image_size or (32 if args.quick else None)
    threads = runtime.set_threads(args.threads)
    n = sizes["n_classes"] * (sizes["train_per_class"] + sizes["val_per_class"])
    n_added = max(1, round(ADDED_FRACTION * n))

    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp, load_watch() as load:
        root = Path(tmp)
        data = generate_collection(root / "data", seed=0, **sizes)
        donor = generate_collection(
            root / "donor",
            n_classes=sizes["n_classes"],
            train_per_class=-(-n_added // sizes["n_classes"]),
            val_per_class=0,
            image_size=sizes["image_size"],
            seed=1,
        )
        full, full_s = timed(lambda: extract(config(data, root / "full", args), progress=False))
        build_index(full, "flat")
        build_index(full, "ivf")
        added = add_images(data, donor, n_added)

        _, scan_s = timed(lambda: prepare(config(data, root / "full", args)))
        update_s, embed_s = [], []
        for r in range(args.rounds):
            out = root / f"update-{r}"
            shutil.copytree(root / "full", out)
            gallery, seconds = timed(lambda out=out: extract(config(data, out, args), progress=False))
            update_s.append(seconds)
            embed_s.append(gallery.manifest.timings["extract_seconds"])
        _, noop_s = timed(lambda: extract(config(data, root / f"update-{args.rounds - 1}", args), progress=False))

        info = gallery.manifest.update
        kept = np.flatnonzero(np.load(out / info.id_map) >= 0)
        same = np.array_equal(
            np.asarray(gallery.embeddings)[np.load(out / info.id_map)[kept]], np.asarray(full.embeddings)[kept]
        )
        assert info.added == added and same, "the update's kept rows differ from the full extraction's"

    update_median = statistics.median(update_s)
    ratio = update_median / full_s
    rows = [
        ["full extraction", f"{n:,}", f"{full_s:.1f}", "100%", ""],
        [
            "update (+1%)",
            f"{added:,}",
            f"{update_median:.2f}",
            f"{100 * ratio:.2f}%",
            "✓" if ratio <= GOAL_RATIO else "✗ missed",
        ],
        [
            "  of which embedding",
            f"{added:,}",
            f"{statistics.median(embed_s):.2f}",
            f"{100 * statistics.median(embed_s) / full_s:.2f}%",
            "",
        ],
        ["  scan + plan alone", f"{n + added:,}", f"{scan_s:.2f}", f"{100 * scan_s / full_s:.2f}%", ""],
        ["no-op re-run", "0", f"{noop_s:.2f}", f"{100 * noop_s / full_s:.2f}%", ""],
    ]
    table = markdown_table(["run", "images embedded", "wall s", "of full", f"goal ≤ {GOAL_RATIO:.0%}"], rows)
    print(table)
    print(f"index updates: {info.indexes}")
    intro = (
        f"Adding {ADDED_FRACTION:.0%} new images to a {n:,}-image gallery ({MODEL}, RANDOM weights, GENERATED"
        f" {sizes['image_size']}-px JPEGs, input {args.image_size or 224} px, batch {args.bs}, {threads} threads): the"
        f" update's wall time against the full extraction's, median of {args.rounds} updates on fresh copies of the"
        " gallery (with saved flat and ivf indexes, which it updates)."
    )
    body = "\n".join(
        [
            intro,
            "",
            table,
            "",
            f"Index updates in the last round: {', '.join(f'{k} {v}' for k, v in (info.indexes or {}).items())}.",
            "",
            environment_markdown(load, args.quick),
        ]
    )
    if should_write(args):
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
