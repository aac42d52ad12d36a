"""`lookalike demo`: the whole pipeline on a generated collection, ending in the study's combined table.

It uses pretrained weights where they are cached or downloadable and random weights
otherwise, and says which on every line that could be mistaken for a real result.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .. import runtime
from ..data.synthetic import generate_collection
from ..embed.extract import ExtractConfig, extract
from ..errors import WeightsUnavailableError
from ..gallery import atomic_write_bytes
from ..search import make_method, save_method
from .bench import combined_table, run_bench, write_bench

CLASSES = 20
VAL_SHARE = 0.1


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("runs/demo")
    images: int = 2000
    models: tuple[str, ...] = ("resnet18", "mobilenet", "clip")
    weights: str = "auto"  # "auto" | "pretrained" | "random"
    image_size: int | None = None
    threads: int | None = None


def banner(text: str) -> None:
    line = "!" * min(100, len(text) + 8)
    print(f"{line}\n!!! {text} !!!\n{line}", flush=True)


def demo_collection(folder: Path, images: int = 2000) -> Path:
    """The built-in generated collection (`lookalike demo`, `lookalike study --data demo`): about `images` images in
    20 classes, a tenth of each class held out as the val split; the same arguments give the same files."""
    per_class = max(2, round(images / CLASSES))
    val = max(1, round(per_class * VAL_SHARE))
    return generate_collection(folder, n_classes=CLASSES, train_per_class=per_class - val, val_per_class=val, seed=0)


def run_demo(config: DemoConfig) -> str:
    runtime.set_threads(config.threads)
    per_class = max(2, round(config.images / CLASSES))
    data = demo_collection(config.out / "data", config.images)
    print(
        f"generated {CLASSES * per_class} images in {CLASSES} classes at {data} (GENERATED data, not real photographs)",
        flush=True,
    )
    results = []
    for model in config.models:
        weights = "pretrained" if config.weights in ("auto", "pretrained") else "random"
        cfg = ExtractConfig(
            data=str(data),
            out=str(config.out / "galleries" / model),
            model=model,
            weights=weights,
            image_size=config.image_size,
            threads=config.threads,
            overwrite=True,
        )
        try:
            gallery = extract(cfg)
        except WeightsUnavailableError as exc:
            if config.weights == "pretrained":
                raise
            banner(
                f"{model}: pretrained weights unavailable — falling back to RANDOM weights; results below are NOT real"
            )
            print(f"(why: {exc})", flush=True)
            gallery = extract(ExtractConfig(**{**cfg.__dict__, "weights": "random"}))
        if gallery.manifest.weights.kind == "random":
            banner(f"{model}: RANDOM weights — timings are real, retrieval quality is not")
        partition = gallery.partition()
        ivf = make_method("ivf", len(partition.database_ids), gallery.dim)
        ivf.build(gallery.embeddings[partition.database_ids], partition.database_ids)
        save_method(gallery, ivf)
        result = run_bench(gallery)
        write_bench(result, gallery.path)
        results.append(result)
        print(f"{model}: {gallery.provenance()}", flush=True)
    table = combined_table(results)
    real = all(r.real for r in results)
    title = "# lookalike demo — combined timing table\n\n" + (
        "" if real else "**⚠ Generated data and/or RANDOM weights: timings are real, accuracy figures are not.**\n\n"
    )
    atomic_write_bytes(config.out / "demo.md", (title + table).encode())
    if not real:
        banner("GENERATED data / RANDOM weights: the table's timings are real, its accuracy is NOT")
    print(table, flush=True)
    print(f"written to {config.out / 'demo.md'}; galleries in {config.out / 'galleries'}", file=sys.stderr)
    return table
