"""Choose the inference backend and precision by measuring them on the job's own images.

Every candidate (torch and OpenVINO, fp32 and bf16, fp16 on CUDA) embeds the same calibration
images. fp32 torch is the reference: a candidate is kept only if each image's embedding stays
within MIN_COSINE of it and every output is finite, and the fastest kept candidate wins. Nothing is
assumed from the hardware: on one CPU bf16 autocast doubles ResNet-18's speed and slows CLIP down, and on
an Intel Xeon with AMX OpenVINO bf16 returned all-NaN CLIP embeddings for one seed of random weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ..gallery.manifest import Candidate
from .backends import BACKENDS, BackendUnavailable, Choice, NonFiniteEmbeddings
from .quantise import int8_note

if TYPE_CHECKING:
    import torch

    from .models import Embedder

log = logging.getLogger(__name__)

MIN_COSINE = 0.999  # below this a backend or precision changes rankings: it is not kept
# a candidate's rate is timed on these: fewer are noisy, more would cost a 128-photo CLIP job a third of its time
CALIBRATION_IMAGES = 8
# The reference embeds only the first 4, its warm-up call giving the first: fp32 torch is the slowest
# candidate (it took 60% of a calibration on all 8: 0.4 of 0.7 s for ResNet-18, 0.8-1.3 of 2.4 s for CLIP),
# and an embedding's bf16 error is the same on every image, so 4 images bound the cosine as 8 do.
REFERENCE_IMAGES = 4
WARMUP_IMAGES = 1  # the first call pays one-off costs (graph compilation, allocator growth): run it untimed
# A candidate this much slower than the best so far on a one-image probe (the warm-up's shape, so no candidate
# pays a new shape's first-call costs, or a slow batched path, only to be found slow) is not timed further.
# Measured: torch bf16 CLIP took 1.5–1.9 s for any batch of 2 or more (0.06 s for one image), a third of the
# calibration, only to be dropped at 5 img/s against OpenVINO's 40. One image underrates a batched rate (it
# runs on one of OpenVINO's streams; torch's batch-1 resnet18 runs at 0.6× its batch-8 rate), which the
# factor covers; and OpenVINO's candidates, measured first, only ever meet the reference and each other.
PROBE_IMAGES = 1
PRUNE_FACTOR = 2.0
RETIME_WITHIN = 1.5  # the two leaders are timed again when the second is within this factor of the first
# int8 is tried only where quantising (once per model and weights, cached) can pay for itself: measured on 2 cores it
# takes 4 s for ResNet-18 and 18 s for CLIP and saves 4 and 11 ms per image, so a job of fewer images than this,
# whose model is not quantised yet, skips it (--precision int8 quantises anyway; later jobs then try it for free).
QUANTISE_MIN_IMAGES = 2000
# The batch sizes extraction may run, measured for the chosen backend in the mode extraction runs it (OpenVINO's
# streams side by side, each on a whole batch): AMX favours larger batches per stream than AVX-512 alone, and a GPU
# larger ones still.
BATCH_SIZES = {"cpu": (8, 16, 32, 64), "cuda": (32, 64, 128)}
SUSTAINED_ROUNDS = 3  # timed rounds of one batch per stream, after one untimed round (a new shape's first call)
SUSTAINED_SHARE = 0.05  # measuring batch sizes may cost at most this share of the job's images
BATCH_WITHIN = 0.97  # the smallest batch within this share of the best rate wins: finer pipelining, less memory
INT8 = Choice("openvino", "int8")
REFERENCE = Choice("torch", "fp32")
REFERENCE_NOTE = "reference (timed on the images after its warm-up)"


def candidates(device: str, backend: str = "auto", precision: str = "auto") -> list[Choice]:
    """The backend × precision pairs a job may use on this device, given the user's requests."""
    backends = BACKENDS if backend == "auto" else (backend,)
    precisions = ("fp32", "bf16", "fp16") if device.startswith("cuda") else ("fp32", "bf16", "int8")
    if precision != "auto":
        precisions = (precision,)

    def runs_here(b: str, p: str) -> bool:  # OpenVINO: CPU only, no fp16; int8: OpenVINO only
        return (device.startswith("cpu") and p != "fp16") if b == "openvino" else p != "int8"

    out = [Choice(b, p) for b in backends for p in precisions if runs_here(b, p)]
    # Measuring order only: a likely-fast candidate first lets the probe drop the slow ones early. The choice is
    # measured.
    return sorted(out, key=lambda c: (c.backend != "openvino", ("int8", "bf16", "fp16", "fp32").index(c.precision)))


def calibrate(
    embedder: Embedder,
    images: torch.Tensor,
    backend: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    job_images: int | None = None,
    exclude: tuple[Choice, ...] = (),
    unit: str = "images",
) -> tuple[Choice, list[Candidate], str]:
    """Measure the candidates on `images`; return the choice, every measurement, and why it was chosen.

    fp32 torch always runs, as the reference. A candidate that cannot run (OpenVINO missing, a
    failed conversion) is recorded with its reason, and if no requested candidate can run, the
    torch ones are measured instead: the run never stops for a backend that is missing. An explicit
    `precision` is honoured even below MIN_COSINE, with a warning; with "auto" precision is never assumed.
    A candidate whose output holds NaN or inf is never kept, requested or not; when that leaves nothing
    requested, NonFiniteEmbeddings says so and names the working alternative.
    `job_images`: how many images the job embeds, which decides whether int8 is worth quantising for.
    `exclude`: candidates this job already saw give NaN or inf; they are not tried again (the reference always is).
    `embedder` is anything with `device`, `backend(choice, threads, streams)` and `int8_cached()`: the text tower
    (embed.text_choice) is measured by this same function, on token ids instead of pixels; `unit` names its rows
    ("images", "texts") in the notes and the reason.
    """
    reference_note = REFERENCE_NOTE.replace("images", unit)
    x = images[:CALIBRATION_IMAGES]
    wanted = [c for c in candidates(embedder.device, backend, precision) if c not in exclude or c == REFERENCE]
    skipped = []
    if (
        INT8 in wanted
        and precision == "auto"
        and job_images is not None
        and job_images < QUANTISE_MIN_IMAGES
        and not embedder.int8_cached()
    ):
        wanted.remove(INT8)
        note = (
            f"not tried: the model is not quantised yet, and quantising pays off only past {QUANTISE_MIN_IMAGES} images"
            f" (this job: {job_images}; --precision int8 quantises it)"
        )
        skipped.append(Candidate(INT8.backend, INT8.precision, note=note))
    reference, reference_rate = _reference(embedder.backend(REFERENCE, threads), x[:REFERENCE_IMAGES])
    measured = [
        _measure(REFERENCE, reference, reference, reference_rate, kept=REFERENCE in wanted, note=reference_note),
        *skipped,
    ]

    refused: list[NonFiniteEmbeddings] = []  # requested candidates whose output held NaN or inf

    def measure(choices: list[Choice]) -> None:
        for choice in choices:
            if choice == REFERENCE:
                measured[0] = _measure(REFERENCE, reference, reference, reference_rate, kept=True, note=reference_note)
                continue
            best = max((c.images_per_second or 0.0 for c in measured if c.kept), default=0.0)
            try:
                # OpenVINO as extraction runs it: its throughput mode
                run = embedder.backend(choice, threads, streams=None)
                run(x[:WARMUP_IMAGES])
                probe_rate = _time(run, x[:PROBE_IMAGES])[1]
                if probe_rate * PRUNE_FACTOR < best:
                    note = f"not timed further: under 1/{PRUNE_FACTOR:g} of the best rate on {PROBE_IMAGES} {unit}"
                    measured.append(
                        Candidate(
                            choice.backend,
                            choice.precision,
                            round(probe_rate, 2),
                            images=min(PROBE_IMAGES, len(x)),
                            note=note,
                        )
                    )
                    continue
                out, rate = _time(run, x)
            except BackendUnavailable as exc:
                log.warning("%s cannot run here: %s; going on without it", choice, exc)
                measured.append(Candidate(choice.backend, choice.precision, note=f"unavailable: {exc}"))
                continue
            except NonFiniteEmbeddings as exc:
                log.warning("%s is not used: %s", choice, exc)
                measured.append(non_finite_candidate(choice, exc))
                refused.append(exc)
                continue
            found = _measure(choice, out, reference, rate, kept=True, note=int8_note() if choice == INT8 else "")
            if found.cosine_min < MIN_COSINE:
                if precision != "auto":
                    log.warning(
                        "%s keeps embeddings only within cosine %.5f of fp32 torch (< %s); using it because it was"
                        " requested",
                        choice,
                        found.cosine_min,
                        MIN_COSINE,
                    )
                note = f"cosine min {found.cosine_min:.5f} < {MIN_COSINE}" + (
                    " (kept: precision requested)" if precision != "auto" else ""
                )
                found = replace(found, kept=precision != "auto", note=note)
            measured.append(found)

    measure(wanted)
    if refused and not any(c.kept for c in measured):
        # what was asked for runs here but gives NaN or inf: stop rather than embed with something else unasked
        raise NonFiniteEmbeddings(
            refused[0].choice,
            refused[0].bad_rows,
            refused[0].rows,
            advice=f"it was requested (backend {backend}, precision {precision}), and torch fp32 gives finite"
            " embeddings here: pass --backend torch --precision fp32, or --backend auto --precision auto to let"
            " lookalike measure the candidates and skip it",
            unit=refused[0].unit,
        )
    prefix = ""
    if not any(c.kept for c in measured):
        log.warning("no %s backend could run here, so torch runs instead", backend)
        measure(candidates(embedder.device, "torch", precision))
        prefix = f"{backend} could not run; "
    _retime_leaders(embedder, x, measured, threads)
    kept = [c for c in measured if c.kept]
    if not kept:  # nothing requested can run (say fp16 on a CPU): the reference always can
        measured[0] = replace(measured[0], kept=True)
        kept, prefix = [measured[0]], f"nothing requested could run; {prefix}"
    winner = max(kept, key=lambda c: c.images_per_second or 0.0)
    if len(kept) == 1:
        # with the prefix: a requested backend that could not run leaves torch the only candidate, not a requested one
        reason = prefix + "the only candidate " + ("requested" if backend != "auto" and precision != "auto" else "kept")
    else:
        reason = (
            f"{prefix}fastest measured within cosine {MIN_COSINE} of fp32 torch: {winner.images_per_second:.1f}"
            f" {'img' if unit == 'images' else unit}/s"
            f" among {len(kept)}"
        )
    return Choice(winner.backend, winner.precision), measured, reason


def _retime_leaders(embedder: Embedder, x: torch.Tensor, measured: list[Candidate], threads: int | None) -> None:
    """Time the two fastest kept candidates once more, in turn, and keep each one's better rate (when they are close).

    One timed call each is noisy on a shared machine (±20% here), and the two leaders are often
    closer than that: on 2 cores resnet18's torch bf16 was seen to beat OpenVINO bf16 in a
    calibration and then run the job 25% slower. Best of two halves the chance of such a flip.
    """
    leaders = sorted(
        (i for i, c in enumerate(measured) if c.kept and c.images_per_second),
        key=lambda i: -measured[i].images_per_second,
    )[:2]
    if (
        len(leaders) < 2
        or measured[leaders[1]].images_per_second * RETIME_WITHIN < measured[leaders[0]].images_per_second
    ):
        return
    for i in leaders:
        c = measured[i]
        choice = Choice(c.backend, c.precision)
        try:
            rate = _time(embedder.backend(choice, threads, streams=None), x)[1]
        except NonFiniteEmbeddings as exc:  # finite once is not enough: a candidate is dropped at its first NaN
            measured[i] = non_finite_candidate(choice, exc)
            continue
        if rate > c.images_per_second:
            measured[i] = replace(c, images_per_second=round(rate, 2))


NON_FINITE_NOTE = "rejected: non-finite output (NaN or inf)"


def non_finite_candidate(choice: Choice, exc: NonFiniteEmbeddings) -> Candidate:
    """The manifest's record of a candidate whose output held NaN or inf: never kept, whatever was requested."""
    note = f"{NON_FINITE_NOTE} for {exc.bad_rows} of {exc.rows} {exc.unit}"
    return Candidate(choice.backend, choice.precision, images=exc.rows, kept=False, note=note)


def _measure(choice: Choice, out: np.ndarray, reference: np.ndarray, rate: float, kept: bool, note: str) -> Candidate:
    """The candidate's record: its rate (on all of `out`) and its cosine to the reference (on the images both
    embedded)."""
    cosine = (out[: len(reference)] * reference).sum(axis=1)
    return Candidate(
        choice.backend,
        choice.precision,
        round(rate, 2),
        round(float(cosine.min()), 6),
        round(float(cosine.mean()), 6),
        len(out),
        kept=kept,
        note=note,
    )


def _reference(run, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """The reference's embeddings of `x` (its warm-up call embeds the first image) and its images/s on the rest."""
    started = time.perf_counter()
    try:
        first = run(x[:1])
        if len(x) == 1:  # one decodable image: its only call is the rate, first-call costs and all
            return first, 1 / max(time.perf_counter() - started, 1e-9)
        rest, rate = _time(run, x[1:])
    except NonFiniteEmbeddings as exc:
        raise NonFiniteEmbeddings(
            None,
            exc.bad_rows,
            exc.rows,
            "even fp32 torch does, so the weights themselves are broken; check --weights",
            unit=exc.unit,
        ) from None
    return np.concatenate([first, rest]), rate


def _time(run, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """Embeddings of `x` and images/s of one timed call (the caller has warmed `run` up)."""
    started = time.perf_counter()
    out = run(x)
    return out, len(x) / max(time.perf_counter() - started, 1e-9)


def sustained_rates(
    embedder: Embedder,
    images: torch.Tensor,
    choice: Choice,
    threads: int | None,
    sizes: tuple[int, ...],
    job_images: int | None = None,
) -> tuple[dict[int, float], str]:
    """Images/s of `choice` at each batch size in `sizes`, sustained as extraction runs it, and a note.

    The calibration images are repeated to fill each batch (a rate does not depend on what the pixels show).
    Returns no rates, and says why, when measuring would cost more than SUSTAINED_SHARE of the job's images.
    """
    import torch

    from .backends import map_batches

    run = embedder.backend(choice, threads, streams=None)
    streams = getattr(run, "streams", 1) or 1
    cost = sum((SUSTAINED_ROUNDS + 1) * streams * size for size in sizes)
    if job_images is not None and cost > SUSTAINED_SHARE * job_images:
        return {}, (
            f"not measured: timing batches of {', '.join(map(str, sizes))} takes {cost} images, over"
            f" {SUSTAINED_SHARE:.0%} of this job's {job_images}"
        )
    rates = {}
    for size in sizes:
        batch = images[torch.arange(size) % len(images)].contiguous()
        for _ in map_batches(run, ((i, batch) for i in range(streams))):
            pass
        started = time.perf_counter()
        for _ in map_batches(run, ((i, batch) for i in range(SUSTAINED_ROUNDS * streams))):
            pass
        rates[size] = round(SUSTAINED_ROUNDS * streams * size / max(time.perf_counter() - started, 1e-9), 2)
    shown = ", ".join(f"{size}: {rate:.0f}" for size, rate in rates.items())
    return rates, f"{choice} sustained img/s by batch size ({streams} stream{'s' if streams != 1 else ''}): {shown}"


def choose_batch(rates: dict[int, float]) -> int:
    """The smallest batch size within BATCH_WITHIN of the best sustained rate."""
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= BATCH_WITHIN * best)
