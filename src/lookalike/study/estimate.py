"""How long each step of `lookalike study` will take: the rates measured in docs/benchmarks.md, scaled to this
machine by a quick calibration.

Why this way: loading three models to time them would cost seconds before anything useful is done,
and a rerun that skips every step should not pay it. A float32 matrix product of the shape brute-force
search runs (0.1-0.3 s) measures this machine against the reference machine of docs/benchmarks.md
(AMD EPYC, 2 cores), and every reference figure is scaled by that ratio and by the step's size. The
figures are estimates: within a factor of two is what they are for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

# The reference machine's speed at the calibration product (GFLOP/s, float32, 2 threads). Derived from
# docs/benchmarks.md, "Scale 100k → 1M": brute force ran 1000 queries × 100k × 512 in 2.0 s per 1000 on one thread
# (≥ 51 GFLOP/s with its top-k); two threads give about twice the product alone. benchmarks/bench_study.py prints
# this machine's figure, so a run there checks it.
REFERENCE_GFLOPS = 100.0
# Extraction, images per second on the reference machine (docs/benchmarks.md, "Extraction (issue 8)", 64×64 JPEGs at
# 224 px): the pipeline with its calibrated backend, and torch fp32 (the model alone at batch 32) when the backend is
# pinned to it.
PIPELINE_IMAGES_PER_S = {"resnet18": 199.7, "mobilenet": 293.4, "clip": 54.9}
TORCH_FP32_IMAGES_PER_S = {"resnet18": 56.1, "mobilenet": 71.7, "clip": 15.1}
# Loading the model and the backend calibration, seconds (OpenVINO conversions are cached after the first run).
EXTRACT_OVERHEAD_S = {"resnet18": 3.0, "mobilenet": 3.0, "clip": 8.0}
MODEL_INPUT = 224
# Seconds on the reference machine for a database of REFERENCE_ROWS × 512 (docs/benchmarks.md: "Accuracy vs speed"
# sweep 744 s and tuning 142 s at 100k; "Scale 100k → 1M" 1.6 s to build ivf; bench and leakage from their parts).
REFERENCE_ROWS = 100_000
REFERENCE_S = {"index": 1.6, "bench": 25.0, "tradeoff": 744.0, "tune": 142.0, "leakage": 5.0}
# Scale: 360 s for the sizes 100k and 1M at 512-d (docs/benchmarks.md, "Scale 100k → 1M"): cost ∝ Σ size × d.
SCALE_REFERENCE = (360.0, 1_100_000 * 512)
FIXED_S = {"index": 0.5, "bench": 1.0, "tradeoff": 3.0, "tune": 2.0, "scale": 2.0, "leakage": 1.0, "report": 3.0}
TINY_IMAGENET_FETCH_S = 120.0  # 248 MB download and unpacking: the network decides
DEMO_FETCH_S = 5.0


@dataclass(frozen=True)
class Calibration:
    gflops: float  # this machine's float32 matrix product, GFLOP/s
    seconds: float  # what measuring it took

    @property
    def factor(self) -> float:
        """How much longer a step takes here than on the reference machine (clamped: a busy moment must not make an
        estimate absurd)."""
        return float(np.clip(REFERENCE_GFLOPS / max(self.gflops, 1e-3), 0.25, 20.0))

    def describe(self) -> str:
        return (
            f"this machine multiplies float32 matrices at {self.gflops:.0f} GFLOP/s, {1 / self.factor:.2f}× the"
            f" reference machine of docs/benchmarks.md (measured in {self.seconds:.1f} s)"
        )


REFERENCE = Calibration(REFERENCE_GFLOPS, 0.0)


def calibrate(rows: int = 8192, queries: int = 256, dim: int = 512, repeats: int = 3) -> Calibration:
    """Time the product brute-force search runs (queries × rows × dim), best of `repeats` after a warm-up."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((queries, dim), dtype=np.float32)
    b = rng.standard_normal((rows, dim), dtype=np.float32)
    a @ b.T
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - t)
    return Calibration(2 * queries * rows * dim / best / 1e9, time.perf_counter() - started)


def extract_seconds(
    model: str, images: int, image_size: int | None, backend: str, calibration: Calibration = REFERENCE
) -> float:
    rates = TORCH_FP32_IMAGES_PER_S if backend == "torch" else PIPELINE_IMAGES_PER_S
    pixels = ((image_size or MODEL_INPUT) / MODEL_INPUT) ** 2  # the model's cost follows its input's pixels
    per_image = max(pixels, 0.05) / rates.get(model, min(rates.values()))
    return calibration.factor * (EXTRACT_OVERHEAD_S.get(model, 5.0) + images * per_image)


def step_seconds(step: str, rows: int, dim: int, calibration: Calibration = REFERENCE) -> float:
    """index, bench, tradeoff, tune, leakage on `rows` × `dim`; report (constant)."""
    work = rows * dim / (REFERENCE_ROWS * 512)
    return calibration.factor * (FIXED_S.get(step, 1.0) + REFERENCE_S.get(step, 0.0) * work)


def scale_seconds(sizes: tuple[int, ...], dim: int, calibration: Calibration = REFERENCE) -> float:
    seconds, work = SCALE_REFERENCE
    return calibration.factor * (FIXED_S["scale"] + seconds * sum(sizes) * dim / work)


def fetch_seconds(source: str) -> float:
    return TINY_IMAGENET_FETCH_S if source == "tiny-imagenet" else DEMO_FETCH_S


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
