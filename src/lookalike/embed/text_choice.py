"""The text tower's backend and precision for a gallery: measured once where its queries run, and recorded beside it.

A text query spends most of its time in CLIP's text tower, so the tower runs on what a measurement
chose, as the image tower does: `calibrate_text` hands the text embedder to `embed.calibrate.calibrate`,
the images' own function, with the same candidates (torch and OpenVINO × fp32 and bf16, and OpenVINO
int8 once the text tower is quantised, see INT8_NOT_TRIED), the same rules (kept only within cosine
MIN_COSINE of fp32 torch, NaN or inf rejected with the reason recorded, the fastest kept one wins)
and the same request: the backend and precision the gallery was extracted with (`--backend torch
--precision fp32` pins its text tower too).

What differs: the inputs are SAMPLE_TEXTS, tokenized; and each candidate embeds them one text at a
time, as queries arrive, so its rate is 1 / its query latency (OpenVINO runs its latency mode).

Why measured at the first text query and not at extraction: the choice belongs to the machine that
answers the queries (a server, often not the extraction's machine), and galleries extracted before
this existed get one too. The result is written to the gallery's `cache/` folder
(`text-inference-<fingerprint>.json`, this module's format), so later queries, CLI runs and servers
reuse it without measuring; it is measured again only when the machine, the thread count, the
libraries or the gallery's content differ from the record's. A gallery folder that cannot be written
keeps its record in the converted-model cache (LOOKALIKE_CACHE) instead.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fileio import atomic_write_json
from ..gallery import CACHE
from ..gallery.manifest import Candidate, Inference
from .backends import BackendUnavailable, Choice, NonFiniteEmbeddings
from .cache import cache_root
from .calibrate import INT8, REFERENCE, calibrate, non_finite_candidate

# Quantising CLIP's text tower (NNCF, generated texts) takes about 10 s on 2 cores, once per model and weights: a
# server pays it (it answers many queries; measured: int8 4.6 ms a query against OpenVINO bf16's 7.0, random weights,
# 2 cores), a CLI query does not, but tries an int8 model already on disk.
INT8_NOT_TRIED = (
    "not tried: the text tower is not quantised yet (`lookalike serve` quantises it, as does extracting with"
    " --precision int8, once per model and weights; later measurements then try it)"
)

if TYPE_CHECKING:
    import torch

    from ..gallery import Gallery
    from .text import TextEmbedder

log = logging.getLogger(__name__)

RECORD_VERSION = 1
# What the candidates embed: lengths from 1 to 20 words, the first 4 (whose cosine to fp32 torch is checked,
# calibrate.REFERENCE_IMAGES) short and long, as queries typed into the page are.
SAMPLE_TEXTS = (
    "a photo of a dog",
    "an old stone bridge over a river in autumn, with yellow leaves floating on the dark water below",
    "sunset",
    "a red car parked on a wet street at night",
    "two children playing football on a sandy beach under a cloudy sky",
    "a bowl of fruit",
    "a black and white portrait of a man wearing a hat",
    "a cat",
)


@dataclass(frozen=True)
class TextInference:
    """The record: the text tower's measured choice (`inference`, candidates and all) and what it was measured under.

    `conditions` is what the measurement depends on besides the model (the gallery's content, the
    extraction's request, the machine, the threads, the library versions); a record whose conditions
    differ from the present ones is measured again. `inference` is the manifest's own type, so its
    candidates read as the image ones do: their `images_per_second` and `images` count texts here.
    """

    conditions: dict[str, Any]
    inference: Inference
    created: str = ""
    version: int = RECORD_VERSION
    notes: tuple[str, ...] = field(default=())  # what happened after the measurement (a query that gave NaN)

    @property
    def choice(self) -> Choice:
        return Choice(self.inference.backend, self.inference.precision)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created": self.created,
            "conditions": self.conditions,
            "inference": self.inference.to_dict(),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextInference:
        return cls(
            conditions=dict(d["conditions"]),
            inference=Inference.from_dict(d["inference"]),
            created=str(d.get("created", "")),
            version=int(d.get("version", RECORD_VERSION)),
            notes=tuple(d.get("notes") or ()),
        )


def requested(gallery: Gallery) -> tuple[str, str]:
    """(backend, precision) the gallery's extraction asked for ("auto" where it asked nothing, or has no record)."""
    identity = (gallery.manifest.extract or {}).get("identity") or {}
    return str(identity.get("backend") or "auto"), str(identity.get("precision") or "auto")


def conditions(gallery: Gallery, threads: int | None) -> dict[str, Any]:
    """What a text measurement depends on besides the model (whose weights the fingerprint's rows depend on)."""
    import torch

    backend, precision = requested(gallery)
    return {
        "fingerprint": gallery.fingerprint,
        "model": gallery.model,
        "requested": {"backend": backend, "precision": precision},
        "machine": _cpu_name(),
        "cores": runtime_cores(),
        "threads": threads or torch.get_num_threads(),  # what runs: a server's --threads, else torch's own count
        "versions": {"torch": torch.__version__.split("+")[0], "openvino": _version("openvino")},
    }


def _version(package: str) -> str | None:
    """A package's installed version from its metadata (importing openvino only to ask would cost ~0.3 s)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime_cores() -> int:
    from ..runtime import default_threads

    return default_threads()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()


def record_paths(gallery: Gallery) -> tuple[Path, Path]:
    """Where the record is kept: the gallery's cache folder, else (not writable) the converted-model cache."""
    name = f"text-inference-{gallery.fingerprint}.json"
    return Path(gallery.path) / CACHE / name, cache_root() / "text-inference" / name


def read_record(gallery: Gallery) -> TextInference | None:
    """The gallery's record, wherever it was written; None when there is none or it cannot be read."""
    import json

    for path in record_paths(gallery):
        if path.is_file():
            try:
                return TextInference.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring the unreadable text-tower record %s (%s); measuring again", path, exc)
    return None


def write_record(gallery: Gallery, record: TextInference) -> Path | None:
    """Save the record beside the gallery, or in the converted-model cache when the gallery folder is read-only."""
    for path in record_paths(gallery):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, record.to_dict())
            return path
        except OSError as exc:
            log.info("cannot write the text-tower record to %s (%s)", path, exc)
    log.warning("the text tower's measured choice could not be saved; it is measured again next time")
    return None


def sample_tokens(text: TextEmbedder) -> torch.Tensor:
    """SAMPLE_TEXTS as (n, context) token ids, as queries are tokenized."""
    import torch

    return torch.cat([text.tokenize(t) for t in SAMPLE_TEXTS])


class OneAtATime:
    """The text embedder as the calibration sees it: each backend embeds a batch one text at a time, as queries come,
    so a candidate's rate is the inverse of its query latency.

    Each backend first embeds every sample text once, untimed: a sequence length's first call costs
    more (measured on 2 cores: OpenVINO bf16 130 ms for its first 1-token text, then 8-12 ms for
    any), and a server pays that once per length, so the rate timed is the steady one.
    """

    def __init__(self, text: TextEmbedder, tokens: torch.Tensor):
        self.text, self.device, self.tokens = text, text.device, tokens
        self.warm: set[tuple[Choice, int | None]] = set()

    def backend(self, choice: Choice, threads: int | None = None, streams: int | None = None):
        run = _Rows(self.text.backend(choice, threads))
        if (choice, threads) not in self.warm:
            run(self.tokens)
            self.warm.add((choice, threads))
        return run

    def int8_cached(self) -> bool:
        return self.text.int8_cached()


class _Rows:
    def __init__(self, run):
        self.run, self.choice = run, run.choice

    def __call__(self, tokens: torch.Tensor) -> np.ndarray:
        return np.concatenate([self.run(tokens[i : i + 1]) for i in range(len(tokens))])


def calibrate_text(
    text: TextEmbedder,
    backend: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    quantise: bool = False,
) -> Inference:
    """Measure the text tower's candidates on SAMPLE_TEXTS with the images' calibration; return the decision.

    Never stops a query for a backend: a requested one that cannot run or gives NaN or inf leaves
    torch fp32 (the reference) in its place, and the reason says so. Only a reference that gives NaN
    or inf (broken weights) raises NonFiniteEmbeddings. `quantise`: try int8 even when the text tower
    is not quantised yet (quantising it first: a server, which answers many queries, pays that once).
    """
    tokens = sample_tokens(text)
    skipped = []
    if (
        not quantise
        and precision == "auto"
        and backend in ("auto", INT8.backend)
        and text.device == "cpu"
        and not text.int8_cached()
    ):
        skipped.append(Candidate(INT8.backend, INT8.precision, note=INT8_NOT_TRIED))
    exclude = (INT8,) if skipped else ()
    try:
        choice, measured, reason = calibrate(
            OneAtATime(text, tokens), tokens, backend, precision, threads, exclude=exclude, unit="texts"
        )
    except NonFiniteEmbeddings as exc:
        if exc.choice in (None, REFERENCE):  # the reference itself: the weights are broken, no backend can help
            raise
        log.warning("%s; text queries use torch fp32", exc.what)
        choice, measured, _ = calibrate(OneAtATime(text, tokens), tokens, "torch", "fp32", threads, unit="texts")
        measured = [*measured, non_finite_candidate(exc.choice, exc)]
        reason = f"{exc.what}, so torch fp32 runs instead (requested: backend {backend}, precision {precision})"
    # the images' calibration notes an int8 candidate's quantisation with the image recipe's wording
    measured = [replace(c, note=_int8_text_note(c.note)) if c.precision == INT8.precision else c for c in measured]
    return Inference(choice.backend, choice.precision, reason, (*measured, *skipped), threads=threads)


def _int8_text_note(note: str) -> str:
    from .quantise import int8_note, text_int8_note

    return note.replace(int8_note(), text_int8_note())


def use_text_inference(
    gallery: Gallery,
    text: TextEmbedder,
    threads: int | None = None,
    remeasure: bool = False,
    quantise: bool = False,
) -> TextInference:
    """Make `text` run as the gallery's record says, measuring (and recording) first when there is no record for the
    present conditions (or `remeasure`). Returns the record in force.

    `quantise` (the server): int8 is tried, quantising the text tower once if need be; a record that
    left int8 untried for that reason (written by a CLI query) is measured again."""
    now = conditions(gallery, threads)
    record = None if remeasure else read_record(gallery)
    untried = record is not None and any(
        c.precision == INT8.precision and c.note.startswith("not tried") for c in record.inference.candidates
    )
    if record is None or record.conditions != now or (quantise and untried):
        backend, precision = requested(gallery)
        log.info("measuring the text tower's backends for %s (once; recorded in its cache folder)", gallery.path)
        inference = calibrate_text(text, backend, precision, threads, quantise)
        record = TextInference(now, inference, datetime.now(UTC).isoformat(timespec="seconds"))
        write_record(gallery, record)
    try:
        text.use(record.choice, threads)
    except BackendUnavailable as exc:  # measured here under these conditions, so only a broken install gets here
        log.warning("the text tower's recorded %s cannot run here (%s); text runs in torch fp32", record.choice, exc)
        text.use(REFERENCE)
    return record


def fall_back(gallery: Gallery, text: TextEmbedder, record: TextInference, exc: NonFiniteEmbeddings) -> TextInference:
    """A query gave NaN or inf on the recorded backend: torch fp32 from now on, and the record says why."""
    log.warning("%s for a text query; text queries use torch fp32 from now on", exc.what)
    text.use(REFERENCE)
    reason = f"{exc.what} for a query after it was chosen ({record.inference.reason}); torch fp32 runs instead"
    inference = replace(record.inference, backend=REFERENCE.backend, precision=REFERENCE.precision, reason=reason)
    updated = replace(record, inference=inference, notes=(*record.notes, reason))
    write_record(gallery, updated)
    return updated
