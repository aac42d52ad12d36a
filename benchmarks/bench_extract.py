"""Extraction end to end: the study's naive loop against `lookalike extract`, per model, on small and on 12-megapixel
JPEGs (issue 8).

naive     one image at a time, decoded in the main thread at full size, fp32 torch, default (NCHW)
          memory format — what the original study did.
pipeline  `lookalike.embed.extract.extract`, the code path of `lookalike extract`: batches, decode
          threads beside the model (JPEGs decoded at the smallest scale the resize needs), and
          the backend and precision its calibration measured fastest within cosine 0.999 of fp32
          torch. Its figure covers decode + calibration + embedding (`extract_seconds` +
          `calibration_seconds` of the manifest); model loading is excluded, as for the naive loop.

Both run in alternating rounds; figures are medians over rounds, the speed-up the median of
per-round ratios. Further tables: every backend × precision on pre-decoded tensors (throughput,
batch-1 latency, cosine to fp32 torch), and the decode of 4000×3000 JPEGs at full size against
the reduced (draft) decode, with the embedding cosine between the two.

Random weights (pretrained ones are unreachable here; speed does not depend on weight values)
and generated JPEGs: 64×64 like tiny-ImageNet's, and 4000×3000 phone-camera-sized ones
(upscaled generated images with added noise, a quarter of them with EXIF orientation 6).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    environment_markdown,
    load_watch,
    markdown_table,
    parser,
    should_write,
    wait_for_quiet,
    write_section,
)  # noqa: E402
from lookalike import runtime  # noqa: E402
from lookalike.data.datasets import load_collection  # noqa: E402
from lookalike.data.images import load_rgb  # noqa: E402
from lookalike.data.synthetic import generate_collection  # noqa: E402
from lookalike.embed.backends import Choice, map_batches  # noqa: E402
from lookalike.embed.extract import DEFAULT_BATCH_SIZE, ExtractConfig, extract  # noqa: E402
from lookalike.embed.models import MODELS, Embedder, load_model  # noqa: E402
from lookalike.embed.transforms import build_transform, normalise_pixels  # noqa: E402

SECTION = "Extraction (issue 8)"
RETIRED = ("Extraction (issue 2)",)
GOAL_SPEEDUP = 4.0
# Per input set and model: images the pipeline embeds per round, images the naive loop embeds per round.
# The pipeline job is large enough that its fixed costs (calibration) weigh as in a real collection.
IMAGES = {
    "64×64": {"resnet18": (1536, 48), "mobilenet": (1536, 64), "clip": (512, 16)},
    "4000×3000": {"resnet18": (320, 8), "mobilenet": (320, 8), "clip": (320, 8)},
}
QUICK_IMAGES = (24, 3)
LARGE = (4000, 3000)
CHOICES = (
    Choice("torch", "fp32"),
    Choice("torch", "bf16"),
    Choice("openvino", "fp32"),
    Choice("openvino", "bf16"),
    Choice("openvino", "int8"),
)
MODEL_ONLY_IMAGES = 32
MODEL_ONLY_BATCH = 32
MODEL_ONLY_PASSES = 4  # the images run 4 times per timed pass, so a throughput mode's streams overlap batches
LATENCY_REPEATS = 10


@dataclass(frozen=True)
class Row:
    model: str
    inputs: str
    naive_images_per_s: float
    naive_decode_ms: float
    naive_model_ms: float
    pipeline_images_per_s: float  # decode + calibration + embedding
    speedup: float
    choice: str
    split: str
    calibration_s: float
    cosine_min: float  # pipeline embedding vs naive fp32 embedding of the same image
    cosine_mean: float

    def cells(self) -> list[object]:
        goal = "✓" if self.speedup >= GOAL_SPEEDUP else "✗ missed"
        return [
            self.model,
            self.inputs,
            f"{self.naive_images_per_s:.1f}",
            f"{self.naive_decode_ms:.1f} / {self.naive_model_ms:.1f}",
            f"{self.pipeline_images_per_s:.1f}",
            f"**{self.speedup:.2f}×** {goal}",
            self.choice,
            self.split,
            f"{self.calibration_s:.1f}",
            f"{self.cosine_min:.5f} / {self.cosine_mean:.5f}",
        ]


HEADERS = [
    "model",
    "JPEGs",
    "naive img/s",
    "naive decode / model ms per img",
    "pipeline img/s",
    f"speed-up (goal ≥ {GOAL_SPEEDUP:g}×)",
    "backend, precision",
    "decode threads / inference threads (decode, model ms per img)",
    "calibration s",
    "cosine to naive fp32 min / mean",
]


def float_transform(p):
    """The study's own preprocessing: torchvision's float pipeline (resize, crop, to float, normalise) per image."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    return T.Compose(
        [
            T.PILToTensor(),
            T.Resize(p.resize_size, interpolation=InterpolationMode(p.interpolation), antialias=True),
            T.CenterCrop(p.image_size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(p.mean, p.std),
        ]
    )


def naive_loop(module: torch.nn.Module, transform, paths: list[str]) -> tuple[np.ndarray, float, float]:
    """The study's loop (full-size decode, fp32, batch 1); returns (embeddings, decode seconds, model seconds)."""
    embeddings, decode_s, model_s = [], 0.0, 0.0
    with torch.no_grad():
        for path in paths:
            t0 = time.perf_counter()
            x = transform(load_rgb(path))[None]
            t1 = time.perf_counter()
            out = module(x).flatten(1)
            embeddings.append((out / out.norm(dim=1, keepdim=True))[0].numpy())
            model_s += time.perf_counter() - t1
            decode_s += t1 - t0
    return np.stack(embeddings), decode_s, model_s


def pipeline_run(listing: Path, out: Path, model: str, args) -> tuple:
    """One `lookalike extract` into a fresh folder; returns (manifest, path → embedding)."""
    shutil.rmtree(out, ignore_errors=True)
    config = ExtractConfig(
        data=str(listing),
        out=str(out),
        model=model,
        weights="random",
        image_size=args.image_size,
        batch_size=args.bs,
        threads=args.threads,
    )
    gallery = extract(config, progress=False)
    by_path = dict(zip(gallery.paths, np.asarray(gallery.embeddings)))
    return gallery.manifest, by_path


def bench_model(name: str, inputs: str, data: Path, work: Path, args) -> Row:
    n_pipeline, n_naive = QUICK_IMAGES if args.quick else IMAGES[inputs][name]
    records = load_collection(data).records[:n_pipeline]
    listing = work / f"{name}-{inputs}.txt"  # the pipeline reads exactly these images
    listing.write_text("".join(r.path + "\n" for r in records))
    embedder = load_model(name, "random", args.image_size, "cpu")
    for choice in CHOICES:  # conversion and compilation are paid once per model, not per job: fill the caches first
        # (every mode a run may compile: queries', the calibration's, each thread split's)
        if choice.backend == "openvino":
            for threads, streams in (
                (None, 1),
                (None, None),
                *((t, None) for t in range(1, runtime.default_threads() + 1)),
            ):
                embedder.backend(choice, threads, streams)
    naive_module = embedder.module.to(memory_format=torch.contiguous_format)
    transform = float_transform(embedder.preprocess)
    naive_rate, pipe_rate, ratios, decode_ms, model_ms, cosines, calibration = [], [], [], [], [], [], []
    for r in range(args.rounds):
        paths = [rec.path for rec in records[(r * n_naive) % len(records) :][:n_naive]]
        runtime.set_threads(args.threads)  # the naive loop always gets every core, whatever the last pipeline run chose
        started = time.perf_counter()
        fp32, decode_s, model_s = naive_loop(naive_module, transform, paths)
        naive_rate.append(len(paths) / (time.perf_counter() - started))
        decode_ms.append(1000 * decode_s / len(paths))
        model_ms.append(1000 * model_s / len(paths))
        manifest, by_path = pipeline_run(listing, work / f"{name}-{r}", name, args)
        t = manifest.timings
        seconds = t["extract_seconds"] + t["calibration_seconds"]
        pipe_rate.append(len(records) / seconds)
        calibration.append(t["calibration_seconds"])
        ratios.append(pipe_rate[-1] / naive_rate[-1])
        inference = manifest.model.inference
        cosines.extend((np.stack([by_path[p] for p in paths]) * fp32).sum(axis=1).tolist())
        print(
            f"  {name} {inputs} round {r + 1}: naive {naive_rate[-1]:.1f} img/s, pipeline {pipe_rate[-1]:.1f} img/s"
            f" ({inference.backend} {inference.precision}), ratio {ratios[-1]:.2f}",
            flush=True,
        )
        shutil.rmtree(work / f"{name}-{r}", ignore_errors=True)
    streams = f" × {inference.streams} streams" if (inference.streams or 1) > 1 else ""
    split = (
        f"{inference.decode_threads} / {inference.threads}{streams} ({inference.decode_ms_per_image:.1f},"
        f" {inference.model_ms_per_image:.1f})"
    )
    return Row(
        name,
        inputs,
        statistics.median(naive_rate),
        statistics.median(decode_ms),
        statistics.median(model_ms),
        statistics.median(pipe_rate),
        statistics.median(ratios),
        f"{inference.backend} {inference.precision}",
        split,
        statistics.median(calibration),
        float(np.min(cosines)),
        float(np.mean(cosines)),
    )


def model_only(embedder: Embedder, images: torch.Tensor, bs: int, rounds: int, work: Path) -> list[list[object]]:
    """Every backend × precision on pre-decoded tensors: img/s at batch `bs`, batch-1 ms, cosine to fp32 torch."""
    reference = embedder.backend(Choice("torch", "fp32"))(images)
    rows = []
    for choice in CHOICES:
        # OpenVINO in both its modes: latency (one stream over every core: queries) and throughput (streams side by
        # side: extraction)
        for streams in (1, None) if choice.backend == "openvino" else (1,):
            try:
                run = embedder.backend(choice, None, streams)
            except Exception as exc:  # noqa: BLE001 - a backend missing here is reported, not fatal
                rows.append([embedder.spec.name, str(choice), "–", "–", f"unavailable: {exc}"])
                break
            label = (
                str(choice)
                if choice.backend == "torch"
                else (
                    f"{choice}, {run.streams} stream{'s' if run.streams > 1 else ''}"
                    f" ({'latency' if streams == 1 else 'throughput'} mode)"
                )
            )
            if choice.precision == "int8" and streams == 1:
                label += f"; quantised once in {quantise_seconds(embedder, work):.1f} s"
            rows.append([embedder.spec.name, label, *_rate_latency_cosine(run, images, bs, rounds, reference)])
            print(f"  model only {rows[-1]}", flush=True)
    rows.append(onnxruntime_row(embedder, images, bs, rounds, reference, work))
    print(f"  model only {rows[-1]}", flush=True)
    return rows


def quantise_seconds(embedder: Embedder, work: Path) -> float:
    """What making the int8 model costs once (conversion excluded): timed into an empty cache, the real one left as it
    is."""
    from lookalike.embed.backends import openvino_model
    from lookalike.embed.cache import CACHE_ENV
    from lookalike.embed.quantise import int8_model

    xml = openvino_model(embedder.module, embedder.identity)
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(work / f"quantise-{embedder.spec.name}")
    try:
        started = time.perf_counter()
        int8_model(embedder.identity, xml)
        return time.perf_counter() - started
    finally:
        os.environ[CACHE_ENV] = before if before is not None else ""
        if before is None:
            del os.environ[CACHE_ENV]


def onnxruntime_row(
    embedder: Embedder, images: torch.Tensor, bs: int, rounds: int, reference: np.ndarray, work: Path
) -> list[object]:
    """onnxruntime's CPU provider (fp32; it has no bf16 CPU kernels), measured like the backends: issue 8 adds it only
    if it wins somewhere."""
    try:
        import onnxruntime as ort
    except ImportError:
        return [embedder.spec.name, "onnxruntime fp32", "–", "–", "unavailable: pip install '.[bench]'"]
    path = work / f"{embedder.spec.name}.onnx"
    size = images.shape[1]  # (n, S, S, 3) uint8 pixels
    torch.onnx.export(
        embedder.module.eval(),
        (torch.zeros(1, 3, size, size),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}},
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.default_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> np.ndarray:
        out = session.run(None, {"x": normalise_pixels(x, embedder.preprocess).numpy()})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return [
        embedder.spec.name,
        "onnxruntime fp32 (benchmark only)",
        *_rate_latency_cosine(run, images, bs, rounds, reference),
    ]


def _rate_latency_cosine(run, images: torch.Tensor, bs: int, rounds: int, reference: np.ndarray) -> list[str]:
    """Throughput over MODEL_ONLY_PASSES passes of the images in batches of `bs`, fed as extraction feeds them
    (`map_batches`: OpenVINO's throughput mode keeps its streams busy with whole batches), batch-1 latency, cosine."""
    run(images[:2])
    batches = [images[i : i + bs] for i in range(0, len(images), bs)] * MODEL_ONLY_PASSES
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        out = np.concatenate([embedded for _, embedded in map_batches(run, enumerate(batches))])[: len(images)]
        rates.append(sum(len(b) for b in batches) / (time.perf_counter() - started))
    single = []
    for i in range(LATENCY_REPEATS + 1):
        started = time.perf_counter()
        run(images[i % len(images)][None])
        single.append(1000 * (time.perf_counter() - started))
    cosine = (out * reference).sum(axis=1)
    return [
        f"{statistics.median(rates):.1f}",
        f"{statistics.median(single[1:]):.1f}",
        f"{cosine.min():.6f} / {cosine.mean():.6f}",
    ]


def decode_table(data: Path, args) -> tuple[list[object], float]:
    """4000×3000 JPEGs: full-size decode against the reduced decode, and the embedding cosine between them (resnet18,
    fp32 torch)."""
    embedder = load_model("resnet18", "random", args.image_size, "cpu")
    transform = build_transform(embedder.preprocess)
    paths = [r.path for r in load_collection(data).records[: 4 if args.quick else 16]]
    full_ms, reduced_ms, full, reduced = [], [], [], []
    for path in paths:
        started = time.perf_counter()
        full.append(transform(load_rgb(path)))
        full_ms.append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        reduced.append(transform(load_rgb(path, min_side=embedder.preprocess.resize_size)))
        reduced_ms.append(1000 * (time.perf_counter() - started))
    cosine = (embedder.embed(torch.stack(full)) * embedder.embed(torch.stack(reduced))).sum(axis=1)
    row = [
        len(paths),
        f"{statistics.median(full_ms):.1f}",
        f"{statistics.median(reduced_ms):.1f}",
        f"{statistics.median(full_ms) / statistics.median(reduced_ms):.1f}×",
        f"{cosine.min():.5f} / {cosine.mean():.5f}",
    ]
    return row, float(cosine.min())


def _large_jpeg(args: tuple[Path, Path, int]) -> None:
    """A 4000×3000 JPEG from a small generated image: upscaled, with noise so it compresses like a photo."""
    from PIL import Image

    source, target, i = args
    rng = np.random.default_rng(i)
    image = Image.open(source).convert("RGB").resize(LARGE, Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (LARGE[1], LARGE[0], 3)).astype(np.int16)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if i % 4 == 0:
        exif[0x0112] = 6  # shown rotated: the pipeline must still apply it
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, "JPEG", quality=90, exif=exif)


def large_collection(small: Path, root: Path, n: int) -> Path:
    """A class-folder collection of `n` 4000×3000 JPEGs made from the small collection's images."""
    sources = [Path(r.path) for r in load_collection(small).records[:n]]
    jobs = [(src, root / src.parent.parent.name / f"photo_{i:04d}.jpg", i) for i, src in enumerate(sources)]
    with ProcessPoolExecutor(runtime.default_threads()) as pool:
        list(pool.map(_large_jpeg, jobs))
    return root


LIMIT_SECTION = "Extraction at the pipeline's limit (issue 26)"
LIMIT_IMAGES = {"64×64": {"resnet18": 8192, "mobilenet": 8192, "clip": 8192}, "4000×3000": {m: 160 for m in MODELS}}
LIMIT_QUICK = {"64×64": 96, "4000×3000": 8}
GOAL_SHARE = 0.8
D_IMAGES = {"64×64": 512, "4000×3000": 24}  # images timed for d, one core


def decode_core_ms(paths: list[str], preprocess, decoder: str) -> tuple[float, float | None]:
    """(d, the Huffman-only floor) in ms per image on one core, median of 3 passes.

    d is the pipeline's decode side for one image: read, sha256, decode (DCT-scaled), crop into a batch row.
    The floor is libjpeg-turbo's decode alone at the smallest DCT scale (1/8): the entropy (Huffman) decoding no
    scaling avoids, measured on the file bytes in memory (None for a set without JPEGs or without simplejpeg)."""
    import simplejpeg

    from lookalike.data.datasets import ImageRecord
    from lookalike.data.images import read_image_bytes
    from lookalike.embed.extract import ImageListDataset, decode_into_batch

    torch.set_num_threads(1)
    records = tuple(ImageRecord(path, None, "train") for path in paths)
    dataset = ImageListDataset(records, build_transform(preprocess), min_side=preprocess.resize_size, decoder=decoder)
    passes, floor = [], []
    datas = [read_image_bytes(path) for path in paths]
    for _ in range(3):
        started = time.thread_time()
        for i in range(0, len(records), 16):
            decode_into_batch(dataset, list(range(i, min(i + 16, len(records)))), preprocess.image_size)
        passes.append(1000 * (time.thread_time() - started) / len(records))
        started = time.thread_time()
        for data in datas:
            simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=1, min_width=1)  # the 1/8 scale
        floor.append(1000 * (time.thread_time() - started) / len(datas))
    return statistics.median(passes), statistics.median(floor)


def limit_row(name: str, inputs: str, data: Path, work: Path, args) -> tuple[list[object], float, float]:
    """One model on one image set: the pipeline end to end against L = cores / (d + m); returns (cells, share of
    L, share of the Huffman cap)."""
    from lookalike.embed.calibrate import sustained_rates

    n = LIMIT_QUICK[inputs] if args.quick else LIMIT_IMAGES[inputs][name]
    records = load_collection(data).records[:n]
    listing = work / f"limit-{name}-{inputs}.txt"
    listing.write_text("".join(r.path + "\n" for r in records))
    cores = runtime.default_threads()
    rates, with_calibration = [], []
    for r in range(args.rounds):
        manifest, _ = pipeline_run(listing, work / f"limit-{name}-{r}", name, args)
        t = manifest.timings
        rates.append(t["images"] / t["extract_seconds"])
        with_calibration.append(t["images"] / (t["extract_seconds"] + t["calibration_seconds"]))
        print(f"  {name} {inputs} round {r + 1}: {rates[-1]:.1f} img/s ({with_calibration[-1]:.1f} with calibration)")
        shutil.rmtree(work / f"limit-{name}-{r}", ignore_errors=True)
    inference = manifest.model.inference
    embedder = load_model(name, "random", args.image_size, "cpu")
    paths = [r.path for r in records[: D_IMAGES[inputs]]]
    d, floor = decode_core_ms(paths, embedder.preprocess, inference.decoder or "pil")
    runtime.set_threads(args.threads)
    pixels = torch.stack([build_transform(embedder.preprocess)(load_rgb(p)) for p in paths[:8]])
    choice = Choice(inference.backend, inference.precision)
    batch = t["batch_size"]
    sustained = statistics.median(
        sustained_rates(embedder, pixels, choice, cores, (batch,))[0][batch] for _ in range(3)
    )
    m = cores * 1000 / sustained
    limit = cores * 1000 / (d + m)
    cap = cores * 1000 / (floor + m)
    e2e = statistics.median(rates)
    share, cap_share = e2e / limit, e2e / cap
    pace = t.get("decode_pace") or {}
    cells = [
        name,
        inputs,
        f"{inference.backend} {inference.precision}, batch {batch}, {inference.streams or 1} stream(s)",
        f"{d:.3f}",
        f"{floor:.3f}",
        f"{m:.2f} ({sustained:.0f} img/s)",
        f"{limit:.0f}",
        f"{e2e:.0f} ({statistics.median(with_calibration):.0f})",
        f"**{share:.0%}**",
        f"{cap_share:.0%}",
        f"{pace.get('start')}→{pace.get('final')} ({pace.get('min')}–{pace.get('max')})",
        inference.decoder or "pil",
    ]
    print(f"  limit {cells}", flush=True)
    return cells, share, cap_share


def limit_section(sets: dict[str, Path], work: Path, args, load: dict) -> str:
    from common import goal_mark

    rows = []
    for inputs in args.inputs:
        for name in args.models:
            cells, share, cap_share = limit_row(name, inputs, sets[inputs], work, args)
            goal = share if inputs == "64×64" else cap_share
            cells.append(goal_mark(goal >= GOAL_SHARE, load))
            rows.append(cells)
    headers = [
        "model",
        "JPEGs",
        "chosen (backend, batch, streams)",
        "d: decode side, core-ms/img",
        "Huffman floor (1/8-scale decode alone), core-ms/img",
        "m: model sustained, core-ms/img",
        "L = cores / (d + m), img/s",
        "end to end img/s (with calibration)",
        "share of L",
        "share of the Huffman cap cores / (floor + m)",
        "decode threads start→final (min–max)",
        "JPEG decoder",
        f"goal ≥ {GOAL_SHARE:.0%} (64 px: of L; 4000×3000: of the Huffman cap)",
    ]
    table = markdown_table(headers, rows)
    print("\n" + table)
    env = runtime.environment()["machine"]
    amx = "with AMX (amx_bf16, amx_int8)" if "amx" in " ".join(_cpu_flags()) else "without AMX"
    return "\n".join(
        [
            f"`benchmarks/bench_extract.py --limit-only` on {env['cpu']}, {env['cores']} cores, {amx}. **Random "
            "weights** and **generated data** (64×64 JPEGs from `lookalike.data.synthetic`; 4000×3000 JPEGs made "
            "from them, upscaled with noise, a quarter with EXIF orientation 6). *end to end*: `lookalike "
            "extract` with its defaults (backend, precision, batch size and core split measured by its "
            "calibration; decode threads following the stage times), images ÷ the manifest's `extract_seconds` "
            f"(decode + embed over the chunks), median of {args.rounds} runs; in brackets with the calibration's "
            "seconds added. *d*: the pipeline's decode side for one image on one core (read, sha256, decode at "
            "the DCT scale the resize needs, resize and crop in uint8, written into its batch row), median of 3 "
            f"passes. *m*: the chosen backend sustained at the run's batch size and streams on all {env['cores']} "
            "cores, in core-ms per image (cores × 1000 ÷ img/s), median of 3. *L* = cores ÷ (d + m): the rate if "
            "decode and model shared the cores with nothing lost. For 12-megapixel photos the entropy (Huffman) "
            "decoding of the whole file is the part no DCT scaling avoids: the *Huffman floor* is libjpeg-turbo's"
            " decode alone at 1/8 scale, and the cap cores ÷ (floor + m) is what those photos allow. Pixels go to"
            " the model as uint8; conversion and normalisation run inside it (OpenVINO's PrePostProcessor; torch "
            "on the model's device). No GPU was lent to this session, so the CUDA path (uint8 batches in pinned "
            "memory, normalised on the GPU, fp16 autocast) is tested on the CPU only and unmeasured.",
            "",
            table,
        ]
    )


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--inputs", nargs="+", default=list(IMAGES), choices=list(IMAGES))
    p.add_argument("--image-size", type=int, default=224, help="model input in pixels (default 224, as the study)")
    p.add_argument(
        "--bs",
        type=int,
        default=None,
        help=f"pipeline batch size (default: extract's, {DEFAULT_BATCH_SIZE['cpu']} on a CPU)",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating naive/pipeline rounds (default 3)")
    p.add_argument("--no-model-only", action="store_true", help="skip the backend × precision table")
    p.add_argument("--limit-only", action="store_true", help="only the table of end to end against the limit L")
    args = p.parse_args()
    if args.quick:
        args.rounds = 1
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    runtime.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-extract-") as tmp:
        work = Path(tmp)
        n_small = max(QUICK_IMAGES[0] if args.quick else n for n, _ in IMAGES["64×64"].values())
        if args.limit_only:
            n_small = LIMIT_QUICK["64×64"] if args.quick else max(LIMIT_IMAGES["64×64"].values())
        small = generate_collection(
            work / "small", n_classes=16, train_per_class=-(-n_small // 16), val_per_class=0, image_size=64
        )
        sets = {"64×64": small}
        if "4000×3000" in args.inputs:
            print("generating 4000×3000 JPEGs", flush=True)
            n_large = QUICK_IMAGES[0] if args.quick else max(n for n, _ in IMAGES["4000×3000"].values())
            if args.limit_only:
                n_large = LIMIT_QUICK["4000×3000"] if args.quick else max(LIMIT_IMAGES["4000×3000"].values())
            sets["4000×3000"] = large_collection(small, work / "large", n_large)
        if not args.quick:
            print(
                f"waiting for the load of the data generation to pass (1-minute load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            wait_for_quiet()
        if args.limit_only:
            with load_watch() as load:
                doc = limit_section(sets, work, args, load)
            doc += "\n\n" + environment_markdown(load, args.quick)
            if should_write(args):
                print(f"\nwrote section '{LIMIT_SECTION}' of {write_section(LIMIT_SECTION, doc)}")
            return
        with load_watch() as load:
            rows = [
                bench_model(name, inputs, sets[inputs], work, args) for inputs in args.inputs for name in args.models
            ]
            decode_row, decode_cosine = decode_table(sets["4000×3000"], args) if "4000×3000" in sets else (None, None)
            model_rows = []
            if not args.no_model_only:
                for name in args.models:
                    embedder = load_model(name, "random", args.image_size, "cpu")
                    transform = build_transform(embedder.preprocess)
                    n = 4 if args.quick else MODEL_ONLY_IMAGES
                    images = torch.stack([transform(load_rgb(r.path)) for r in load_collection(small).records[:n]])
                    model_rows += model_only(embedder, images, MODEL_ONLY_BATCH, 1 if args.quick else 3, work)
    table = markdown_table(HEADERS, [r.cells() for r in rows])
    print("\n" + table)
    doc = [
        f"Images/s at {args.image_size} px model input, CPU. **Random weights** (pretrained weights are unreachable"
        " from this machine; speed does not depend on weight values) and **generated data**"
        " (`lookalike.data.synthetic` 64×64 JPEGs like tiny-ImageNet's, and 4000×3000 JPEGs made from them: upscaled,"
        " with noise so they compress like photos, a quarter with EXIF orientation 6). *naive*: the study's loop — one"
        " image at a time, decoded at full size in the main thread, fp32 torch, NCHW. *pipeline*: `lookalike extract`"
        f" (`lookalike.embed.extract.extract`) with its defaults: batch size {args.bs or DEFAULT_BATCH_SIZE['cpu']},"
        " decode threads beside the model, JPEGs decoded at the smallest scale the resize needs, and the backend and"
        " precision its calibration measured fastest within cosine 0.999 of fp32 torch (chosen per run; the split of"
        " the cores between decoding and inference is measured too; OpenVINO runs in its throughput mode, its streams"
        " side by side). Its figure is decode + calibration + embedding (the manifest's `extract_seconds` +"
        " `calibration_seconds`); model loading is excluded for both, and OpenVINO's converted-model, int8-model and"
        " compiled-model caches are filled before the rounds (a conversion or a quantisation is paid once per model"
        " and weights, not per job: the model-only table says what quantising costs). Rounds alternate naive and"
        f" pipeline ({args.rounds} rounds); per round the pipeline embeds "
        + "; ".join(
            f"{inputs}: " + ", ".join(f"{n} ({m})" for m, (n, _) in IMAGES[inputs].items()) for inputs in args.inputs
        )
        + " images, the naive loop "
        + "; ".join(f"{inputs}: " + ", ".join(f"{k}" for _, (_, k) in IMAGES[inputs].items()) for inputs in args.inputs)
        + ". Figures are medians over rounds, the speed-up the median of per-round ratios. *cosine to naive fp32*:"
        " each "
        "image's pipeline embedding against its naive embedding (random weights; trained weights may differ).",
        "",
        table,
    ]
    if decode_row:
        decode = markdown_table(
            [
                "4000×3000 JPEGs",
                "full decode + preprocess ms/img",
                "reduced decode + preprocess ms/img",
                "faster",
                "embedding cosine reduced vs full, min / mean (goal ≥ 0.99)",
            ],
            [decode_row],
        )
        print("\n" + decode)
        doc += [
            "",
            (
                "Decoding large photos: `lookalike.data.images.load_rgb` with and without `min_side` (JPEG `draft`:"
                " DCT-domain scaling to the smallest scale that keeps the resize target), then the model's"
                " preprocessing; one core, median ms per image. The cosine compares resnet18 fp32 embeddings of the"
                f" two decodes (random weights): {'✓' if decode_cosine >= 0.99 else '✗'} goal ≥ 0.99."
            ),
            "",
            decode,
        ]
    if model_rows:
        model_table = markdown_table(
            [
                "model",
                "backend precision",
                f"img/s at batch {MODEL_ONLY_BATCH}",
                "batch-1 ms",
                "cosine to fp32 torch min / mean",
            ],
            model_rows,
        )
        print("\n" + model_table)
        doc += [
            "",
            (
                f"The model alone, every backend × precision, on {MODEL_ONLY_IMAGES} pre-decoded images (throughput:"
                f" {MODEL_ONLY_PASSES} × {MODEL_ONLY_IMAGES} images fed batch by batch as extraction feeds them, median"
                f" of 3 passes; batch-1: median of {LATENCY_REPEATS} single-image calls after one warm-up), all cores."
                " OpenVINO runs in both its modes: latency (one stream over every core; what a query uses) and"
                " throughput (streams side by side, each on its own part of a batch; what extraction uses, and what"
                " its calibration measures). int8: the OpenVINO model quantised post-training by NNCF, activation"
                " ranges from 64 generated images. Its cosine here is that of random weights and says little about"
                " trained ones: every job's calibration measures it on the job's own images and keeps int8 only at ≥"
                " 0.999. onnxruntime (CPU provider, fp32: it has no bf16 CPU kernels) is measured for the record only:"
                " lookalike would add it as a backend where it beat every other candidate. No GPU on this machine, so"
                " no CUDA rows."
            ),
            "",
            model_table,
        ]
    doc += ["", environment_markdown(load, args.quick)]
    if should_write(args):
        print(f"\nwrote section '{SECTION}' of {write_section(SECTION, chr(10).join(doc), retire=RETIRED)}")


if __name__ == "__main__":
    main()
