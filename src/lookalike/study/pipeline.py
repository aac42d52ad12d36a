"""`lookalike study`: the whole study in one resumable command, from the data to report.html.

Why one command: the dozen single commands (fetch, extract per model, index, bench, tradeoff, tune,
scale, report) must be typed in order with matching options, and one forgotten or interrupted leaves
results that no longer belong together. Here each step is a unit of work per model ("tradeoff clip"),
run in the issue's order: fetch → extract → index → bench (the timing table) → tradeoff (accuracy vs
speed) → tune (the tuner's pick) → scale → leakage → report.

A unit runs under a key: the hash of its configuration and of its inputs' fingerprints (the data's
listing and file stats for extract, the gallery's content fingerprint after it, the result files of
the units a report is built from). A rerun skips every unit whose key is unchanged and whose files
are there, so a changed folder or another model re-runs only what depends on it, and an unchanged
re-embedding (a `touch`) stops at extract. The state (study.json) is rewritten atomically after
each unit; a failing unit stops the run with one sentence and keeps what finished.

The experiments themselves are the single commands' own functions (run_bench, run_tradeoff, tune,
run_scale, check_leakage, report_markdown); this module only orders them, keys them and records them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runtime
from ..errors import LookalikeError
from . import estimate
from .estimate import Calibration, format_duration
from .state import (
    StudyError,
    StudyState,
    UnitRecord,
    files_sha256,
    key_of,
    now,
    read_state,
    write_state,
)

STEPS = ("fetch", "extract", "index", "bench", "tradeoff", "tune", "scale", "leakage", "report")
PER_MODEL = ("extract", "index", "bench", "tradeoff", "tune", "scale", "leakage")
STEP_HELP = {
    "fetch": "get the data (download tiny-ImageNet, or generate the demo collection)",
    "extract": "embed every image",
    "index": "build the IVF index over the study's database",
    "bench": "the timing table (Table 1)",
    "tradeoff": "accuracy vs speed of every index family",
    "tune": "the tuner's pick for the recall target",
    "scale": "latency as the gallery grows (synthetic rows above the collection's size)",
    "leakage": "held-out queries with a copy in the database",
    "report": "report.md and report.html",
}
SOURCES = ("tiny-imagenet", "demo")  # --data names that the fetch step makes; anything else is a folder or a file
DEFAULT_MODELS = ("resnet18", "mobilenet", "clip")
DEMO_IMAGES = 2000
INDEX_METHOD = "ivf"
TUNED_NAME = "tuned"  # the tuner's pick is saved in each gallery under this name (lookalike search --method tuned)
LOCK_FILE = ".study.lock"
REPORT_VERSION = 1  # bump when the report's content changes, so a rerun rebuilds it


@dataclass(frozen=True)
class StudyConfig:
    """What a study measures. `data` is a folder (any form `extract` reads), "tiny-imagenet" or "demo"."""

    data: str
    out: Path
    models: tuple[str, ...] = DEFAULT_MODELS
    sizes: tuple[int, ...] | None = None  # scale sizes; None: the power of ten at or below the collection, and 10×
    weights: str = "auto"  # auto (pretrained, else random, said loudly), pretrained, random (seeded) or a file
    k: int = 10
    target_recall: float = 0.95  # the tuner and the scale study tune approximate methods to this recall@k
    image_size: int | None = None
    backend: str = "auto"
    precision: str = "auto"
    seed: int = 0
    threads: int | None = None
    dest: str = "data"  # fetch: the folder tiny-imagenet-200/ goes in (as `lookalike fetch --dest`)

    @property
    def source(self) -> str:
        """The study's data identity: a named source, or the folder's absolute path."""
        return self.data if self.data in SOURCES else os.path.abspath(os.path.expanduser(self.data))

    @property
    def weights_label(self) -> str:
        return self.weights if self.weights in ("auto", "pretrained", "random") else os.path.abspath(self.weights)


@dataclass(frozen=True)
class Unit:
    step: str
    model: str | None = None

    @property
    def id(self) -> str:
        return self.step if self.model is None else f"{self.step} {self.model}"


@dataclass(frozen=True)
class PlanRow:
    unit: Unit
    action: str  # "skip" or "run"
    why: str  # done, new, inputs changed, forced by --only/--from, after a step it depends on
    seconds: float  # estimated (0 for skips)


@dataclass(frozen=True)
class DataInfo:
    """The collection as the extract step will see it: where, which splits, how many images, its fingerprint."""

    path: Path
    splits: tuple[str, ...] | None
    images: int
    held_out: int
    fingerprint: str
    synthetic: bool  # generated by lookalike.data.synthetic


@dataclass(frozen=True)
class StudyRun:
    """What a finished run did: the units it ran and skipped, in order, and where the report is."""

    out: Path
    ran: list[str]
    skipped: list[str]
    report_html: Path | None
    seconds: float = 0.0


# --- checking what was asked ---


def parse_models(text: str) -> tuple[str, ...]:
    from ..embed.registry import MODEL_NAMES

    models = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown or not models:
        raise StudyError(
            f"unknown model {unknown[0]!r}; use some of {', '.join(MODEL_NAMES)}"
            if unknown
            else f"--models is empty; use some of {', '.join(MODEL_NAMES)}"
        )
    return models


def check_step(name: str | None, option: str) -> str | None:
    if name is not None and name not in STEPS:
        raise StudyError(f"unknown step {name!r} for {option}; the steps are {', '.join(STEPS)}")
    return name


def auto_sizes(rows: int) -> tuple[int, ...]:
    """The power of ten at or below the database, and ten times it: 100k and 1M for tiny-ImageNet's 100k, the study's
    question (ii); a small collection gets small sizes, so its study stays minutes long (--sizes overrides)."""
    low = 10 ** int(math.floor(math.log10(max(rows, 10))))
    return (low, 10 * low)


# --- the run ---


class Study:
    """One run of a study over --out: plans the units, skips the finished ones, runs the rest in order."""

    def __init__(self, config: StudyConfig, only: str | None = None, start: str | None = None, echo=print):
        self.config = config
        self.out = Path(config.out)
        self.only = check_step(only, "--only")
        self.start = check_step(start, "--from")
        if self.only and self.start:
            raise StudyError("--only and --from cannot be combined; give one of them")
        if not 0 < config.target_recall <= 1 or config.k < 1:
            raise StudyError(
                f"--k must be at least 1 and --target-recall in (0, 1], got {config.k} and {config.target_recall}"
            )
        self.echo = echo
        self.tty = sys.stderr.isatty()
        self.fetching = config.data in SOURCES
        if not self.fetching and os.path.isdir(config.source) and self.out.resolve().is_relative_to(config.source):
            raise StudyError(
                f"--out {self.out} is inside --data {config.source}: the study's own files would be listed as images;"
                " put it elsewhere"
            )
        if self.only == "fetch" and not self.fetching:
            raise StudyError(f"there is no fetch step when --data is a folder ({config.source}); use another step")
        self.units = [
            *([Unit("fetch")] if self.fetching else []),
            *(Unit(step, model) for step in PER_MODEL for model in config.models),
            Unit("report"),
        ]
        self.state = self._open_state()
        self._data: DataInfo | None = None
        self.calibration: Calibration | None = None

    # -- the study an --out holds --

    def _open_state(self) -> StudyState:
        c = self.config
        state = read_state(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise StudyError(f"--out {self.out} is a file; give a folder for the study")
        if state is None:
            if self.out.exists() and any(p.name != LOCK_FILE for p in self.out.iterdir()):
                raise StudyError(
                    f"{self.out} is not empty and holds no study ({self.out / 'study.json'} is missing); choose an"
                    " empty or new --out, so that nothing in it is overwritten"
                )
            return StudyState(c.source, c.weights_label, c.models, created=now())
        if (state.source, state.weights) != (c.source, c.weights_label):
            if not state.units:  # nothing finished under the other identity: nothing to lose, start this study
                return StudyState(c.source, c.weights_label, c.models, created=now())
            raise StudyError(
                f"{self.out} holds another study (data {state.source}, weights {state.weights}, models"
                f" {', '.join(state.models)}), not one of {c.source} with weights {c.weights_label}; choose another"
                " --out, or delete that folder to start over"
            )
        return state

    # -- the data --

    def data_path(self) -> Path:
        c = self.config
        if c.data == "tiny-imagenet":
            from ..data.fetch import TINY_IMAGENET_DIRNAME

            return Path(os.path.abspath(os.path.expanduser(c.dest))) / TINY_IMAGENET_DIRNAME
        if c.data == "demo":
            return self.out / "data"
        return Path(c.source)

    def data(self) -> DataInfo:
        """List the collection once per run and fingerprint it: paths, labels, splits, sizes and mtimes."""
        if self._data is None:
            import numpy as np

            from ..data.datasets import file_stat, load_collection
            from ..gallery import records_digest

            path = self.data_path()
            collection = load_collection(path)
            counts = collection.split_counts()
            splits = None
            if collection.kind == "tiny-imagenet" and "train" in counts and "val" in counts:
                splits = ("train", "val")  # test has no labels: the study's database is train, its queries val
            records = tuple(r for r in collection.records if splits is None or r.split in splits)
            stats = np.array([file_stat(r.path) for r in records], dtype=np.int64).reshape(-1, 2)  # size, mtime
            fingerprint = key_of(
                records_digest([r.path for r in records], [r.label for r in records], [r.split for r in records]),
                files_digest(stats[:, 0], stats[:, 1]),
            )
            held_out = counts.get("val", 0) if splits or "val" in counts else min(1000, len(records) // 10)
            self._data = DataInfo(path, splits, len(records), held_out, fingerprint, collection.synthetic is not None)
        return self._data

    def sizes(self) -> tuple[int, ...]:
        if self.config.sizes:
            return tuple(self.config.sizes)
        info = self.data()
        return auto_sizes(info.images - info.held_out)

    # -- keys --

    def upstream(self, unit: Unit) -> list[Unit]:
        m = unit.model
        if unit.step == "fetch":
            return []
        if unit.step == "extract":
            return [Unit("fetch")] if self.fetching else []
        if unit.step == "bench":
            return [Unit("extract", m), Unit("index", m)]
        if unit.step == "report":
            return [
                Unit(s, model)
                for model in self.config.models
                for s in ("bench", "tradeoff", "tune", "scale", "leakage")
            ]
        return [Unit("extract", m)]

    def key(self, unit: Unit) -> str:
        """The hash a unit runs under: its configuration and the outputs of the units it reads."""
        c = self.config
        inputs = [self.state.units[u.id].output for u in self.upstream(unit)]
        own: list = [unit.id]
        if unit.step == "fetch":
            own += [c.source, str(self.data_path())] + ([DEMO_IMAGES] if c.data == "demo" else [])
        elif unit.step == "extract":
            info = self.data()
            own += [info.fingerprint, info.splits, c.weights_label, c.image_size, c.backend, c.precision, c.seed]
        elif unit.step == "index":
            own += [INDEX_METHOD, "heldout"]
        elif unit.step in ("bench", "tradeoff"):
            own += [c.k]
        elif unit.step == "tune":
            own += [c.k, c.target_recall, TUNED_NAME]
        elif unit.step == "scale":
            own += [c.k, c.target_recall, list(self.sizes())]
        elif unit.step == "report":
            own += [REPORT_VERSION, list(c.models), c.k, c.target_recall, list(self.sizes())]
        return key_of(own, inputs)

    def current(self, unit: Unit) -> UnitRecord | None:
        """The unit's record when it is finished on these very inputs, its files there and its output still true."""
        record = self.state.done(unit.id, self.out)
        if record is None or any(self.state.done(u.id, self.out) is None for u in self.upstream(unit)):
            return None
        if unit.step == "fetch" and not self._fetched():
            return None
        if unit.step == "extract" and not self._gallery_is(unit.model, record.output):
            return None
        try:
            return record if record.key == self.key(unit) else None
        except LookalikeError:
            return None  # the data cannot be listed (yet): the unit runs, and says why if it still cannot

    def _fetched(self) -> bool:
        path = self.data_path()
        return (path / "wnids.txt").is_file() if self.config.data == "tiny-imagenet" else path.is_dir()

    def _gallery_is(self, model: str, fingerprint: str) -> bool:
        import json

        manifest = self.gallery_path(model) / "manifest.json"
        try:
            return json.loads(manifest.read_text()).get("fingerprint") == fingerprint
        except (OSError, ValueError):
            return False

    def gallery_path(self, model: str) -> Path:
        return self.out / "galleries" / model

    # -- the plan --

    def forced(self, unit: Unit) -> bool:
        if self.only:
            return unit.step == self.only
        return bool(self.start) and STEPS.index(unit.step) >= STEPS.index(self.start)

    def selected(self, unit: Unit) -> bool:
        return self.only is None or unit.step == self.only

    def plan(self) -> list[PlanRow]:
        if not self.fetching or self._fetched():
            self.data()  # a missing or empty collection is one sentence now, before anything is written
        rows: list[PlanRow] = []
        running: set[str] = set()
        for unit in self.units:
            if not self.selected(unit):
                continue
            if self.forced(unit):
                why = f"forced by --{'only' if self.only else 'from'}"
            elif unit.id not in self.state.units:
                why = "new"
            elif any(u.id in running for u in self.upstream(unit)):
                why = "after a step it depends on"
            elif self.current(unit) is not None:
                rows.append(PlanRow(unit, "skip", "done", 0.0))
                continue
            else:
                why = "inputs changed"
            running.add(unit.id)
            rows.append(PlanRow(unit, "run", why, 0.0))
        for row in rows if self.only else []:
            missing = [u.id for u in self.upstream(row.unit) if self.state.done(u.id, self.out) is None]
            if missing:
                raise StudyError(
                    f"--only {self.only}: {row.unit.id} needs {missing[0]}, which has not finished; run the study"
                    " without --only first"
                )
        if any(r.action == "run" for r in rows):
            self.calibration = estimate.calibrate()
            rows = [r if r.action == "skip" else PlanRow(r.unit, r.action, r.why, self.estimate(r.unit)) for r in rows]
        return rows

    def estimate(self, unit: Unit) -> float:
        from ..embed.registry import MODELS

        c, cal = self.config, self.calibration or estimate.REFERENCE
        if unit.step == "fetch":
            return cal.factor * estimate.fetch_seconds(c.data)
        if unit.step == "report":
            return estimate.step_seconds("report", 0, 0, cal)
        images, held_out = self._expected_images()
        dim = MODELS[unit.model].dim
        if unit.step == "extract":
            return estimate.extract_seconds(unit.model, images, c.image_size, c.backend, cal)
        if unit.step == "scale":
            return estimate.scale_seconds(self._expected_sizes(images - held_out), dim, cal)
        return estimate.step_seconds(unit.step, images - held_out, dim, cal)

    def _expected_images(self) -> tuple[int, int]:
        """Images and held-out queries: listed when the data is there, else what the fetch step will bring."""
        if self.fetching and not self._fetched():
            return (110_000, 10_000) if self.config.data == "tiny-imagenet" else (DEMO_IMAGES, DEMO_IMAGES // 10)
        info = self.data()
        return info.images, info.held_out

    def _expected_sizes(self, rows: int) -> tuple[int, ...]:
        return tuple(self.config.sizes) if self.config.sizes else auto_sizes(rows)

    def print_plan(self, rows: list[PlanRow]) -> None:
        c = self.config
        total = sum(r.seconds for r in rows)
        todo = [r for r in rows if r.action == "run"]
        self.echo(
            f"lookalike study of {c.source} with {', '.join(c.models)} ({c.weights_label} weights) in {self.out}:"
            f" {len(todo)} of {len(rows)} steps to run"
            + (f", about {format_duration(total)}" if todo else "; everything is done")
        )
        if self.calibration is not None:
            self.echo(f"  estimates: {self.calibration.describe()}")
        width = max(len(r.unit.id) for r in rows)
        for n, r in enumerate(rows, 1):
            what = f"~{format_duration(r.seconds):>7}  ({r.why})" if r.action == "run" else f"{'skip':>8}  (done)"
            self.echo(f"  {n:2}. {r.unit.id:<{width}}  {what}  {STEP_HELP[r.unit.step]}")

    # -- running --

    def run(self) -> StudyRun:
        started = time.perf_counter()
        rows = self.plan()
        self.print_plan(rows)
        self.out.mkdir(parents=True, exist_ok=True)
        with locked(self.out):
            result = self._run(rows)
        return dataclasses.replace(result, seconds=time.perf_counter() - started)

    def _run(self, rows: list[PlanRow]) -> StudyRun:
        ran: list[str] = []
        skipped: list[str] = []
        self.state = StudyState(
            self.state.source, self.state.weights, self.config.models, self.state.units, created=self.state.created
        )
        write_state(self.out, self.state)
        runtime.set_threads(self.config.threads)
        todo = [r for r in rows if r.action == "run"]
        left = sum(r.seconds for r in todo)
        position = 0
        for row in rows:
            unit = row.unit
            if row.action == "skip":
                skipped.append(unit.id)
                continue
            position += 1
            missing = [u.id for u in self.upstream(unit) if self.state.done(u.id, self.out) is None]
            if missing:
                raise StudyError(
                    f"{unit.id} needs {missing[0]}, which has not finished; run the study without --only first"
                )
            if not self.forced(unit) and self.current(unit) is not None:
                # its inputs were re-made identical (e.g. a touched folder re-embedded to the same gallery)
                self.echo(f"[{position}/{len(todo)}] {unit.id}: inputs unchanged after all, skipped")
                skipped.append(unit.id)
                left -= row.seconds
                continue
            self.run_unit(unit, f"[{position}/{len(todo)}, ~{format_duration(left)} left]", row.seconds)
            left -= row.seconds
            ran.append(unit.id)
        report = self.out / "report.html"
        return StudyRun(self.out, ran, skipped, report if report.is_file() else None)

    def run_unit(self, unit: Unit, progress: str, seconds: float) -> None:
        label = f"{progress} {unit.id}"
        self.echo(f"{label}: {STEP_HELP[unit.step]} (~{format_duration(seconds)}) …")
        t = time.perf_counter()
        try:
            with self.step_bar(unit, seconds), self.log(unit) as log:
                files, output = STEP_RUNNERS[unit.step](self, unit, log)
            key = self.key(unit)  # after the run: extract's needs the data, which fetch may just have brought
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure stops the run with one sentence; finished units stay
            kept = len(self.state.units)
            cause = first_line(exc)
            if not isinstance(exc, LookalikeError):
                self._write_traceback(unit)
                cause = f"{type(exc).__name__}: {cause} (traceback in {self.log_path(unit)})"
            raise StudyError(
                f"step {unit.id} failed: {cause}; the {kept} finished step(s) are kept in {self.out}, and rerunning"
                " the same command continues from here"
            ) from exc
        elapsed = time.perf_counter() - t
        record = UnitRecord(unit.id, key, output, tuple(files), round(elapsed, 2), now())
        self.state = self.state.with_unit(record)
        write_state(self.out, self.state)
        self.echo(f"{label}: done in {format_duration(elapsed)}")

    # -- progress and logs --

    @contextlib.contextmanager
    def step_bar(self, unit: Unit, seconds: float) -> Iterator[None]:
        """On a terminal, the current step's own bar: elapsed against the estimate (extract draws its own, by image)."""
        if not self.tty or unit.step == "extract":
            yield
            return
        from tqdm import tqdm

        total = max(1, round(seconds))
        terminal = os.fdopen(os.dup(2), "w")  # the terminal itself: the step's own stderr goes to its log (`log`)
        bar = tqdm(
            total=total,
            desc=unit.id,
            unit="s",
            leave=False,
            file=terminal,
            bar_format="{desc}: {bar} {elapsed} of ~{total}s",
        )
        done = threading.Event()

        def tick() -> None:
            start = time.perf_counter()
            while not done.wait(0.5):
                bar.n = min(total - 1, int(time.perf_counter() - start)) if total > 1 else 0
                bar.refresh()

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            bar.close()
            terminal.close()

    def log_path(self, unit: Unit) -> Path:
        return self.out / "logs" / f"{unit.id.replace(' ', '-')}.log"

    @contextlib.contextmanager
    def log(self, unit: Unit) -> Iterator[Callable[[str], None]]:
        """The step's own chatter goes to logs/<step>-<model>.log, so the terminal shows the study's progress."""
        path = self.log_path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh, stderr_into(fh, unit.step != "extract"):
            yield lambda line: (fh.write(str(line) + "\n"), fh.flush())

    def _write_traceback(self, unit: Unit) -> None:
        with open(self.log_path(unit), "a", encoding="utf-8") as fh:
            fh.write(traceback.format_exc())


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One run at a time per study folder: a second would interleave steps and state writes."""
    import fcntl

    with open(out / LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(
                f"{out} is in use by another `lookalike study` run; wait for it to finish, or use another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def stderr_into(fh, active: bool = True) -> Iterator[None]:
    """Send what a step writes to stderr — FAISS's C++ warnings too, which bypass Python — to its log file, so the
    terminal shows the study's progress; extract keeps the terminal for its own bar."""
    try:
        saved = os.dup(2) if active else None
    except OSError:  # no stderr to redirect
        saved = None
    if saved is None:
        yield
        return
    sys.stderr.flush()
    os.dup2(fh.fileno(), 2)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].rstrip(".")


def files_digest(sizes, mtimes) -> str:
    import hashlib

    digest = hashlib.sha256()
    digest.update(sizes.astype("<i8").tobytes())
    digest.update(mtimes.astype("<i8").tobytes())
    return digest.hexdigest()[:32]


# --- the steps: each returns its files (relative to --out) and the fingerprint of its output ---


def rel(study: Study, path: Path) -> str:
    return Path(path).resolve().relative_to(study.out.resolve()).as_posix()


def step_fetch(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    c = study.config
    if c.data == "tiny-imagenet":
        from ..data.fetch import fetch_tiny_imagenet

        path = fetch_tiny_imagenet(c.dest, progress=study.tty)
    else:
        from .demo import demo_collection

        path = demo_collection(study.data_path(), DEMO_IMAGES)
    log(f"data ready at {path}")
    return [], key_of(str(path))


def open_model_gallery(study: Study, model: str):
    from ..gallery import open_gallery

    return open_gallery(study.gallery_path(model))


def step_extract(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    from ..embed.extract import ExtractConfig, extract

    c, info = study.config, study.data()
    config = ExtractConfig(
        data=str(info.path),
        out=str(study.gallery_path(unit.model)),
        model=unit.model,
        weights=c.weights,
        image_size=c.image_size,
        backend=c.backend,
        precision=c.precision,
        seed=c.seed,
        splits=info.splits,
        threads=c.threads,
        overwrite=True,  # the study's own gallery: updated when made with these arguments, re-extracted when not
    )
    if c.weights == "auto":
        gallery = extract_auto(study, unit, config)
    else:
        gallery = extract(config, progress=study.tty)
    log(gallery.provenance())
    if gallery.manifest.weights.kind == "random":
        study.echo(f"  ⚠ {unit.model}: RANDOM weights — timings are real, retrieval quality is NOT")
    return [rel(study, gallery.path / "manifest.json")], gallery.fingerprint


def extract_auto(study: Study, unit: Unit, config):
    """--weights auto: pretrained where cached or downloadable, else seeded random weights, said loudly; a gallery
    that fell back once stays random, so a rerun never re-embeds everything because the network came back."""
    import json
    import logging
    from dataclasses import replace

    from ..embed.extract import extract
    from ..errors import WeightsUnavailableError

    manifest = study.gallery_path(unit.model) / "manifest.json"
    try:
        kind = json.loads(manifest.read_text())["model"]["weights"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        kind = None
    if kind != "random":
        try:
            return extract(replace(config, weights="pretrained"), progress=study.tty)
        except WeightsUnavailableError as exc:
            logging.getLogger(__name__).info("pretrained weights for %s unavailable: %s", unit.model, exc)
            study.echo(
                f"  ⚠ {unit.model}: pretrained weights unavailable ({first_line(exc)}) — falling back to RANDOM"
                " weights; its results are NOT real"
            )
    return extract(replace(config, weights="random"), progress=study.tty)


def step_index(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    """The IVF index over the study's database (held-out queries left out), saved in the gallery: bench times it,
    and `lookalike search --method ivf --database heldout` searches it."""
    from ..search import build_dir, database_rows, database_vectors, make_method, method_dir, save_method

    runtime.configure_faiss()
    gallery = open_model_gallery(study, unit.model)
    rows = database_rows(gallery, "heldout")
    method = make_method(INDEX_METHOD, len(rows), gallery.dim)
    method.workdir = build_dir(gallery, method.name, method.metric)
    method.build(database_vectors(gallery, rows), rows)
    save_method(gallery, method)
    log(f"{method.name} {method.params()} over {method.ntotal} vectors")
    files = [rel(study, method_dir(gallery, method.name) / "method.json")]
    return files, files_sha256(study.out, files)


def result_files(study: Study, paths: dict[str, Path]) -> tuple[list[str], str]:
    """The files a step wrote, and the sha256 of its JSON (what the report reads)."""
    files = [rel(study, p) for p in paths.values()]
    return files, files_sha256(study.out, [rel(study, paths["json"])])


def step_bench(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    from .bench import run_bench, write_bench

    result = run_bench(open_model_gallery(study, unit.model), k=study.config.k)
    log(result.to_markdown())
    return result_files(study, write_bench(result, study.out / unit.model))


def step_tradeoff(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    from .tradeoff import TradeoffConfig, run_tradeoff, write_tradeoff

    result = run_tradeoff(open_model_gallery(study, unit.model), TradeoffConfig(k=study.config.k), progress=False)
    log(result.to_markdown())
    return result_files(study, write_tradeoff(result, study.out / unit.model / "tradeoff"))


def step_tune(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    from .tune import TuneConfig, tune, write_tune

    c = study.config
    result = tune(
        open_model_gallery(study, unit.model), TuneConfig(target_recall=c.target_recall, k=c.k, save_as=TUNED_NAME)
    )
    log(result.to_markdown())
    return result_files(study, write_tune(result, study.out / unit.model / "tune"))


def step_scale(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    from .scale import ScaleConfig, run_scale, write_scale

    c = study.config
    folder = study.out / unit.model / "scale"
    config = ScaleConfig(sizes=study.sizes(), k=c.k, target_recall=c.target_recall, work=str(folder / "work"))
    result = run_scale(open_model_gallery(study, unit.model), config, progress=log)
    return result_files(study, write_scale(result, folder))


def step_leakage(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    from ..fileio import atomic_write_bytes, atomic_write_json
    from .leakage import check_leakage, leakage_markdown

    leak = check_leakage(open_model_gallery(study, unit.model))
    folder = study.out / unit.model
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "leakage.json", "md": folder / "leakage.md"}
    atomic_write_json(paths["json"], leak.to_dict())
    atomic_write_bytes(paths["md"], "\n".join(leakage_markdown([leak])).encode())
    return result_files(study, paths)


def step_report(study: Study, unit: Unit, log) -> tuple[list[str], str]:
    from .htmlreport import write_study_report

    paths = write_study_report(study)
    files = [rel(study, p) for p in paths]
    return files, files_sha256(study.out, [f for f in files if f.endswith(".json")])


STEP_RUNNERS: dict[str, Callable[[Study, Unit, Callable[[str], None]], tuple[list[str], str]]] = {
    "fetch": step_fetch,
    "extract": step_extract,
    "index": step_index,
    "bench": step_bench,
    "tradeoff": step_tradeoff,
    "tune": step_tune,
    "scale": step_scale,
    "leakage": step_leakage,
    "report": step_report,
}


def run_study(config: StudyConfig, only: str | None = None, start: str | None = None, echo=print) -> StudyRun:
    """Plan, print the plan, and run every unit that is not already done (see the module docstring)."""
    return Study(config, only=only, start=start, echo=echo).run()


def study(
    data: str | os.PathLike,
    out: str | os.PathLike = "runs/study",
    models: str | Sequence[str] = DEFAULT_MODELS,
    sizes: str | Sequence[int] | None = None,
    weights: str | os.PathLike = "auto",
    *,
    only: str | None = None,
    start: str | None = None,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> StudyRun:
    """The whole study over `data` into `out`, like `lookalike study`; returns what ran (ran, skipped, report_html).

    `data` is a folder of images (any form `extract` reads), "tiny-imagenet" (downloaded into
    `dest`) or "demo" (the built-in generated collection). Rerunning with the same arguments skips
    every finished step; a changed folder or another model re-runs only what depends on it.
    `sizes` are the scale step's gallery sizes ("100k,1M" or [100_000, 1_000_000]; None or "auto":
    the power of ten at or below the collection, and ten times it). `only` re-runs one step, `start`
    one step and every later one. `options` are StudyConfig fields: k, target_recall, image_size,
    backend, precision, seed, threads, dest.
    """
    from .scale import parse_sizes

    names = parse_models(models if isinstance(models, str) else ",".join(models))
    if isinstance(sizes, str):
        sizes = None if sizes.strip() == "auto" else parse_sizes(sizes)
    elif sizes is not None:
        sizes = parse_sizes(",".join(str(int(size)) for size in sizes))
    try:
        config = StudyConfig(
            data=os.fspath(data), out=Path(out), models=names, sizes=sizes, weights=os.fspath(weights), **options
        )
    except TypeError as exc:
        raise StudyError(f"lookalike.study: {exc}; see StudyConfig for the accepted options") from None
    return run_study(config, only=only, start=start, echo=echo)
