"""Images → embeddings → a gallery folder, resumably.

The record list is cut into fixed shards (a multiple of the batch size, so every batch is the
same whether a run is fresh or resumed). Each finished shard is written atomically to
`<out>/.partial/`; a killed run picks up at the first missing shard, and the committed gallery
is identical to an uninterrupted run. `commit` assembles the shards and writes the manifest
last. The Ray engine (`lookalike.distributed`) reuses `prepare`, the decoding, the shard format
(`embed.chunks`), `apply_inference`, `record_state` and `commit`; calibration is `embed.calibrate`'s.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from .. import runtime
from ..data.datasets import Collection, ImageRecord, load_collection
from ..data.images import (
    DEFAULT_MAX_PIXELS,
    JPEG_DECODERS,
    decode_pixels,
    is_jpeg,
    read_image_bytes,
    simplejpeg_version,
)
from ..errors import BadImageError, GalleryError
from ..fileio import require_free_disk
from ..gallery import (
    DEFAULT_SHARD_ROWS,
    MANIFEST,
    DataInfo,
    Gallery,
    GalleryWriter,
    ModelInfo,
    Rows,
    atomic_write_bytes,
    atomic_write_json,
    clear_gallery,
    open_gallery,
    records_digest,
)
from ..gallery.manifest import Inference
from . import incremental
from .backends import Backend, BackendUnavailable, Choice, NonFiniteEmbeddings, map_batches
from .calibrate import (
    BATCH_SIZES,
    BATCH_WITHIN,
    CALIBRATION_IMAGES,
    REFERENCE,
    calibrate,
    choose_batch,
    sustained_rates,
)
from .chunks import Shard, encode_shard, finished_chunks, read_chunks
from .models import Embedder, load_model
from .registry import MODELS
from .transforms import Preprocess, build_transform

log = logging.getLogger(__name__)

PARTIAL = ".partial"
# Images per batch when none is asked for. A batch is the unit that decoding and inference hand each other, so a
# run starts with one batch's decode and ends with one batch's inference, each with the other side idle. On 2
# CPU cores, batches of 16 against 64 embedded 192 12-megapixel photos with CLIP 20% faster and the 64 px runs
# as fast; a GPU wants larger batches to fill it.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 64}
STATE = "state.json"


@dataclass(frozen=True)
class ExtractConfig:
    data: str
    out: str
    model: str = "resnet18"
    weights: str = "pretrained"
    image_size: int | None = None
    # None: the gallery's own when updating or resuming, else measured by the calibration (`decide_batch`)
    batch_size: int | None = None
    chunk_size: int = 4096  # images per resumable chunk (`.partial/shard-*.npz`)
    shard_size: int = DEFAULT_SHARD_ROWS  # rows per gallery shard (layout only: not part of the identity)
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16" (CUDA)
    backend: str = "auto"  # "auto" | "torch" | "openvino"
    splits: tuple[str, ...] | None = None
    seed: int = 0
    decode_threads: int | None = None  # decode threads; None → split the cores by measurement
    device: str = "auto"
    threads: int | None = None
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped as possible decompression bombs (--max-pixels)
    # a gallery with this identity: None/True update it to the folder (True: it must be updatable), False: refuse a
    # changed folder
    update: bool | None = None

    def resolved(self) -> ExtractConfig:
        """This config with its batch size as far as it is decided: --batch-size, else the unfinished job's or the
        gallery's own in `out`; None for a new job, whose calibration measures it (`decide_batch`)."""
        return self if self.batch_size is not None else replace(self, batch_size=_recorded_batch_size(self))

    def identity(self) -> dict:
        """The arguments that determine the gallery's content; a resume or re-run must match them."""
        if self.batch_size is None and (recorded := _recorded_batch_size(self)) is not None:
            return replace(self, batch_size=recorded).identity()
        return {
            "data": str(Path(self.data).resolve()),
            "model": self.model,
            "weights": self.weights if self.weights in ("pretrained", "random") else str(Path(self.weights).resolve()),
            "image_size": self.image_size,
            "batch_size": self.batch_size,
            "chunk_size": self.effective_chunk_size,
            "precision": self.precision,
            **(
                {"backend": self.backend} if self.backend != "auto" else {}
            ),  # only when set: older identities still match
            "splits": list(self.splits) if self.splits else None,
            "seed": self.seed,
            # Only when raised or lowered: galleries made before the option existed keep their identity.
            **({"max_pixels": self.max_pixels} if self.max_pixels != DEFAULT_MAX_PIXELS else {}),
        }

    @property
    def effective_chunk_size(self) -> int:
        """Images per chunk: a multiple of a given batch size; as asked when the calibration measures the batch
        (batches never straddle a chunk, so a resumed run cuts the same batches either way)."""
        batch = self.resolved().batch_size
        return max(1, math.ceil(self.chunk_size / batch)) * batch if batch else max(1, self.chunk_size)


@dataclass
class Job:
    """Everything an engine needs to fill the missing shards of one extraction.

    `collection` holds the images this job embeds: the whole collection, or for an update of
    `base` only the new and changed ones (`whole` is then the folder's whole collection, and
    `plan` says which row of `base` every other record keeps).
    """

    config: ExtractConfig
    collection: Collection
    out: Path
    shards: list[Shard]
    state: dict = field(default_factory=dict)
    plan: incremental.Plan | None = None  # the scan of the whole collection (stats before reading), and the rows reused
    whole: Collection | None = None
    base: Gallery | None = None  # the gallery this job updates
    # records the calibration decoded, as ImageListDataset gives them
    decoded: dict[int, tuple] = field(default_factory=dict)

    @property
    def partial(self) -> Path:
        return self.out / PARTIAL

    @property
    def complete(self) -> bool:
        """The gallery at `out` already is what this job would write: nothing to do."""
        return self.base is None and (self.out / MANIFEST).is_file()

    def done(self, shard: Shard) -> bool:
        return (self.partial / shard.filename).is_file()

    def todo(self) -> list[Shard]:
        return [s for s in self.shards if not self.done(s)]


# --- decoding ---


class ImageListDataset:
    """Decodes one record (in a decode worker thread); a bad file becomes an error entry, never an exception.

    Each file is read once: its bytes are hashed (sha256, so a duplicate under another path or
    a symlink is recognised later, see Gallery.partition) and decoded from memory (`decode_pixels`: JPEGs by
    `decoder`), and its full (width, height) is kept (a duplicate group's suggested keeper is its largest copy).
    An item is (index, (S, S, 3) uint8 crop or None, error or None, sha256 or None, (width, height) or None).
    """

    def __init__(
        self,
        records: tuple[ImageRecord, ...],
        transform,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int | None = None,
        decoded: dict[int, tuple] | None = None,
        decoder: str = "auto",
    ):
        self.records = records
        self.transform = transform
        self.max_pixels = max_pixels
        self.min_side = min_side  # the resize target: large images are reduced as they decode
        self.decoder = decoder
        # items decoded earlier (the calibration's), each handed out once
        self.decoded = decoded if decoded is not None else {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        if index in self.decoded:
            return self.decoded.pop(index)
        path = self.records[index].path
        try:
            data = read_image_bytes(path)  # a file, or a webdataset tar member
        except OSError as exc:
            reason = f"cannot read image {path}: {exc.strerror or exc}; remove or replace the file"
            return index, None, reason, None, None
        return self.from_bytes(index, data)

    def from_bytes(self, index: int, data: bytes) -> tuple:
        """The item of record `index`, whose file holds `data`."""
        path = self.records[index].path
        try:
            pixels = decode_pixels(
                data, max_pixels=self.max_pixels, name=path, min_side=self.min_side, decoder=self.decoder
            )
            digest = hashlib.sha256(data).hexdigest()
            return index, self.transform(pixels.array), None, digest, (pixels.width, pixels.height)
        except BadImageError as exc:
            return index, None, str(exc), None, None
        except Exception as exc:  # a transform failing on a degenerate image must not kill the run
            return index, None, f"{path}: {type(exc).__name__}: {exc}", None, None


def decode_into_batch(dataset: ImageListDataset, batch: list[int], image_size: int, pin_memory: bool = False) -> tuple:
    """Decode `batch`'s records into one (n, S, S, 3) uint8 tensor: (record indices, tensor or None,
    [(index, reason)], content hashes and (width, height)s aligned with the indices).

    Each crop is written into its row of the batch as soon as it is made, the batch's rows in the order of the
    images that decoded (a bad file leaves no gap), so assembling a batch costs no stack and no second copy; with
    `pin_memory` (CUDA) the batch is allocated pinned, for an asynchronous copy to the GPU.
    """
    out = torch.empty((len(batch), image_size, image_size, 3), dtype=torch.uint8, pin_memory=pin_memory)
    indices, bad, hashes, sizes = [], [], [], []
    for i in batch:
        index, crop, error, digest, size = dataset[i]
        if crop is None:
            bad.append((index, error))
            continue
        out[len(indices)].copy_(crop)
        indices.append(index)
        hashes.append(digest)
        sizes.append(size)
    return indices, out[: len(indices)] if indices else None, bad, hashes, sizes


PREFETCH_PER_WORKER = 2  # batches each decode worker may run ahead of the model
# Decode threads follow the stage times: enough that decoding a batch (its CPU time, spread over the threads) keeps up
# with the model taking one, with this much to spare.
DECODE_HEADROOM = 1.25
PACE_SMOOTHING = 0.25  # weight of the newest batch in the moving averages of the two stage times


class DecodePace:
    """How many batches decode at once, following the measured stage times as the run goes.

    Starts at the calibration's split (`split_cores`), then after every batch sets the count to what keeps the
    model fed: ceil(DECODE_HEADROOM × decode CPU seconds per batch ÷ seconds the model takes per batch), between 1
    and `most` (the cores). Large photos among small ones, a cold page cache or a model slower than calibrated
    all move it. The count never changes an embedding: every batch decodes alike whichever thread takes it.
    """

    def __init__(self, start: int, most: int):
        self.threads = max(1, min(start, most))
        self.start, self.most = self.threads, most
        self.low = self.high = self.threads
        self.changes = 0
        self.decode_s: float | None = None
        self.model_s: float | None = None
        self._running = 0
        self._gate = threading.Condition()

    def observe(self, decode_cpu_s: float, model_s: float) -> None:
        """One batch's decode CPU time and the time the model side took for one batch (its wait for decoding left
        out)."""

        def smooth(old: float | None, new: float) -> float:
            return new if old is None else (1 - PACE_SMOOTHING) * old + PACE_SMOOTHING * new

        self.decode_s, self.model_s = smooth(self.decode_s, decode_cpu_s), smooth(self.model_s, model_s)
        target = min(self.most, max(1, math.ceil(DECODE_HEADROOM * self.decode_s / max(self.model_s, 1e-6))))
        if target != self.threads:
            with self._gate:
                self.threads, self.changes = target, self.changes + 1
                self.low, self.high = min(self.low, target), max(self.high, target)
                self._gate.notify_all()

    def __enter__(self) -> None:
        with self._gate:
            self._gate.wait_for(lambda: self._running < self.threads)
            self._running += 1

    def __exit__(self, *exc) -> None:
        with self._gate:
            self._running -= 1
            self._gate.notify()

    def summary(self) -> dict:
        return {
            "start": self.start,
            "final": self.threads,
            "min": self.low,
            "max": self.high,
            "changes": self.changes,
            "decode_ms_per_batch": round(1000 * (self.decode_s or 0.0), 3),
            "model_ms_per_batch": round(1000 * (self.model_s or 0.0), 3),
            "rule": (
                f"after each batch: ceil({DECODE_HEADROOM:g} × decode CPU time per batch ÷ the model's time per"
                f" batch), between 1 and {self.most}"
            ),
        }


def decoded_batches(
    dataset: ImageListDataset,
    batches: list[list[int]],
    decode_threads: int,
    image_size: int,
    pin_memory: bool = False,
    pace: DecodePace | None = None,
) -> Iterator[tuple]:
    """`decode_into_batch`es in order, decoded by worker threads while the model runs (`decode_threads` 0: inline,
    in the caller's thread). With `pace`, the number decoding at once follows the stage times (`DecodePace`).

    Threads, not processes: decoding (file reads, libjpeg-turbo, hashing, torch's resize)
    releases the GIL, the model runs in native code too, and nothing is pickled between processes.
    It also keeps the process fork-free: forking after OpenVINO's CPU plugin started its threads
    was seen to crash the process at its next fork.
    """

    def decode(batch: list[int]) -> tuple:
        if pace is None:
            return decode_into_batch(dataset, batch, image_size, pin_memory), 0.0
        with pace:
            started = time.thread_time()
            out = decode_into_batch(dataset, batch, image_size, pin_memory)
            return out, time.thread_time() - started

    if decode_threads <= 0:
        yield from (decode(b)[0] for b in batches)
        return
    most = pace.most if pace is not None else decode_threads
    pool = ThreadPoolExecutor(most, thread_name_prefix="lookalike-decode")
    ahead_count = PREFETCH_PER_WORKER * most
    try:
        ahead = deque(pool.submit(decode, b) for b in batches[:ahead_count])
        rest = iter(batches[ahead_count:])
        while ahead:
            done, decode_s = ahead.popleft().result()
            following = next(rest, None)
            if following is not None:
                ahead.append(pool.submit(decode, following))
            handed = time.perf_counter()
            yield done
            if pace is not None:
                pace.observe(decode_s, time.perf_counter() - handed)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- the job ---


def collection_digest(records: tuple[ImageRecord, ...]) -> str:
    """The image list's identity (gallery.records_digest over every record, bad files included)."""
    return records_digest([r.path for r in records], [r.label for r in records], [r.split for r in records])


def prepare(config: ExtractConfig) -> Job:
    """Read the collection and check the output folder: resume, update, refuse, or (with --overwrite) clear it.

    A gallery made with the same arguments is updated to the folder (see embed.incremental)
    unless `config.update` is False; an update killed while moving its result in is finished first.
    """
    out = Path(config.out)
    incremental.finish_update(out)
    collection = load_collection(config.data, config.splits)
    config = config.resolved()
    identity = config.identity()
    digest = collection_digest(collection.records)
    manifest_path, state_path = out / MANIFEST, out / PARTIAL / STATE
    base = None
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        prev_identity, prev_digest = (
            previous.get("extract", {}).get("identity"),
            previous.get("extract", {}).get("records_digest"),
        )
        if prev_identity == identity and config.update is not False:
            base = open_gallery(out)
        elif prev_identity == identity and prev_digest == digest:
            pass
        elif config.overwrite:
            clear_gallery(out)
        else:
            difference = _describe_difference(prev_identity, identity, prev_digest, digest)
            if config.update:
                raise GalleryError(
                    f"cannot update the gallery in {out}: it was {difference}; use another --out or pass --overwrite to"
                    " re-extract"
                )
            hint = "; drop --no-update to update it to the folder" if prev_identity == identity else ""
            raise GalleryError(f"{out} holds a gallery {difference}{hint}; use another --out or pass --overwrite")
    scanned = incremental.scan(collection.records)  # before any file is read
    plan = None
    if state_path.is_file():
        previous = _after_refusal(json.loads(state_path.read_text()), identity, state_path)
        same = (
            previous.get("identity") == identity
            and previous.get("records_digest") == digest
            and previous.get("base") == (base.fingerprint if base else None)
        )
        saved = incremental.load_plan(out / PARTIAL, len(collection.records)) if same else None
        if same and (base is None or (saved is not None and saved.same_scan(scanned))):
            plan = saved  # resume (None: a job started by an older lookalike, scanned now)
        elif previous.get("base") is not None and previous.get("identity") == identity:
            log.warning(
                "discarding the unfinished update in %s: the folder changed since it began (the gallery itself is"
                " untouched)",
                out / PARTIAL,
            )
            shutil.rmtree(out / PARTIAL)
        elif config.overwrite:
            clear_gallery(out)
            base = None
        else:
            raise GalleryError(
                f"{out} holds an unfinished extraction"
                f" {_describe_difference(previous.get('identity'), identity, previous.get('records_digest'), digest)};"
                " use another --out or pass --overwrite"
            )
    if plan is None:
        plan = scanned if base is None else incremental.plan_update(collection.records, scanned, base)
        if base is not None and incremental.unchanged(plan, base, digest):
            base = None  # the gallery already is the folder's: the job is complete
    embed = incremental.subset(collection, plan)
    n = len(embed.records)
    size = config.effective_chunk_size
    shards = [Shard(i, start, min(start + size, n)) for i, start in enumerate(range(0, n, size))]
    state = (
        json.loads(state_path.read_text())
        if state_path.is_file()
        else {"identity": identity, "records_digest": digest, "base": base.fingerprint if base else None}
    )
    if base is not None:
        # new rows are embedded with the gallery's own model, backend and precision
        state = incremental.base_state(base) | state
        if state.get("refused"):  # unless that backend gave NaN or inf during this update: calibrate again
            state = {k: v for k, v in state.items() if k not in ("inference", "precision")}
    job = Job(config, embed, out, shards, state, plan, collection, base)
    _check_disk(job)
    return job


METADATA_BYTES_PER_ROW = 400  # a path, a label, a sha256 and stats, in Parquet: generous for long paths


def _check_disk(job: Job) -> None:
    """Before any image is read: the chunks still to embed, then the gallery written from them (the chunks are
    deleted only after it), must fit on the disk of --out."""
    dim = MODELS[job.config.model].dim if job.config.model in MODELS else 0
    todo = sum(s.stop - s.start for s in job.todo())
    rows = len(job.whole.records) if job.base is not None else len(job.collection.records)
    needed = todo * dim * 4 + rows * (dim * 4 + METADATA_BYTES_PER_ROW)
    require_free_disk(job.out, needed, f"extracting {rows} images with {job.config.model}")


INFERENCE_ARGUMENTS = ("backend", "precision")


def _after_refusal(state: dict, identity: dict, state_path: Path) -> dict:
    """The unfinished job's state, taken over by this run when the job stopped because its requested backend gave
    NaN or inf and this run asks for another backend or precision (nothing else changed).

    Its saved shards are all finite and were kept within cosine MIN_COSINE of fp32 torch like any other candidate's,
    so they are kept, and the rest is embedded with what this run asks for; the manifest says so.
    """
    previous = state.get("identity") or {}

    def rest(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in INFERENCE_ARGUMENTS}

    if not state.get("refused") or previous == identity or rest(previous) != rest(identity):
        return state
    state = {k: v for k, v in state.items() if k != "inference"} | {"identity": identity}
    atomic_write_json(state_path, state)
    return state


def requested_inference(config: ExtractConfig) -> bool:
    """Whether the user chose the backend or the precision (then a failing one stops the run, and is not replaced)."""
    return config.backend != "auto" or config.precision != "auto"


def refused_choices(state: dict) -> tuple[Choice, ...]:
    """Backends this job stopped using because they gave NaN or inf: its calibration leaves them out."""
    return tuple(Choice(r["backend"], r["precision"]) for r in state.get("refused", ()))


def refusal_note(state: dict) -> str:
    """What the manifest's inference reason adds when backends were left out during the run (empty when none)."""
    refused = state.get("refused", ())
    return "".join(
        f"; {r['backend']} {r['precision']} embedded chunks 0-{r['from_shard'] - 1} before it gave NaN or inf"
        if r["from_shard"]
        else f"; {r['backend']} {r['precision']} left out: it gave NaN or inf"
        for r in refused
    )


def refuse_non_finite(job: Job, exc: NonFiniteEmbeddings) -> GalleryError:
    """Record in the job state that `exc.choice` gave NaN or inf, and return the error that stops the run.

    Nothing of the failing batch's shard was written, and the shards already saved hold only finite rows (every
    batch is checked before it is written), so a rerun resumes from them: with the same command when the backend
    was the calibration's choice (it is then left out), with another --backend/--precision when it was requested.
    """
    done = sum(job.done(s) for s in job.shards)
    choice = exc.choice or Choice("torch", "fp32")
    refused = {"backend": choice.backend, "precision": choice.precision, "from_shard": done, "reason": exc.what}
    job.state["refused"] = [*job.state.get("refused", ()), refused]
    job.state.pop("inference", None)
    atomic_write_json(job.partial / STATE, job.state)
    saved = f"nothing non-finite was written, and {done} of {len(job.shards)} chunks are saved in {job.partial}"
    if requested_inference(job.config):
        return GalleryError(
            f"extraction stopped: {exc.what} (requested with backend {job.config.backend}, precision"
            f" {job.config.precision}); {saved}; rerun with --backend torch --precision fp32, or --backend auto"
            " --precision auto, to finish with a backend that works here (the saved chunks are kept)"
        )
    return GalleryError(
        f"extraction stopped: {exc.what} (the calibration's choice); {saved}; rerun the same command to resume"
        " without it"
    )


def _recorded_batch_size(config: ExtractConfig) -> int | None:
    """The batch size the unfinished job or the gallery in `config.out` was started with (its identity holds it;
    None there: measured by its calibration), else None."""
    out = Path(config.out)
    for path, keys in ((out / PARTIAL / STATE, ("identity",)), (out / MANIFEST, ("extract", "identity"))):
        try:
            record = json.loads(path.read_text())
            for key in keys:
                record = record[key]
            batch = record["batch_size"]
            return int(batch) if batch is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _describe_difference(prev: dict | None, new: dict, prev_digest: str | None, digest: str) -> str:
    if not prev:
        return "from an unknown lookalike version"
    changed = [f"{k}={prev.get(k)!r} (now {new[k]!r})" for k in new if prev.get(k) != new[k]]
    if not changed and prev_digest != digest:
        changed = ["a different image list (files were added, removed or relabelled)"]
    return "built with " + ", ".join(changed)


def decode_sample(
    job: Job, preprocess: Preprocess, n: int = CALIBRATION_IMAGES
) -> tuple[torch.Tensor | None, float | None, str, str]:
    """The first `n` decodable images of the job's missing shards as (n, S, S, 3) uint8 pixels, the mean CPU ms it
    takes to hash, decode and crop one, the JPEG decoder the run uses, and why.

    Each file is read once and decoded on every core (eight 12-megapixel JPEGs take a quarter of a second on one),
    twice: the second pass, warm, is the one timed. The items are kept in `job.decoded`, so the run neither reads
    nor decodes them again. When simplejpeg is installed and the sample holds JPEGs, both decoders are timed on
    them and the faster decodes the job (both are libjpeg-turbo and give the same pixels; the choice is recorded,
    so a resumed run uses it too).
    """
    indices = [i for shard in job.todo() for i in range(shard.start, shard.stop)]
    transform = build_transform(preprocess)

    def read(index: int) -> tuple[int, bytes | None, tuple | None]:
        try:
            return index, read_image_bytes(job.collection.records[index].path), None
        except OSError as exc:  # reported as the run reports every unreadable file
            path = job.collection.records[index].path
            reason = f"cannot read image {path}: {exc.strerror or exc}; remove or replace the file"
            return index, None, (index, None, reason, None, None)

    def dataset(decoder: str) -> ImageListDataset:
        return ImageListDataset(
            job.collection.records, transform, job.config.max_pixels, preprocess.resize_size, decoder=decoder
        )

    # each file read once: the first pass decodes the bytes cold, the decoders are compared and the second pass,
    # the one timed, decodes them warm by the decoder chosen
    datas: dict[int, bytes] = {}
    failed: dict[int, tuple] = {}
    first = dataset("auto")
    pending = iter(indices)
    with ThreadPoolExecutor(runtime.default_threads(), thread_name_prefix="lookalike-decode") as pool:
        while len(datas) < n:
            window = list(itertools.islice(pending, n - len(datas)))
            if not window:
                break
            for index, data, unreadable in pool.map(read, window):
                item = unreadable or first.from_bytes(index, data)
                if item[1] is None:
                    failed[index] = item
                else:
                    datas[index] = data
    decoder, rule = "pil", "simplejpeg is not installed (pip install simplejpeg)"
    jpegs = [data for i, data in datas.items() if is_jpeg(data)]
    if simplejpeg_version() is not None and not jpegs:
        rule = "no JPEG among the first images"
    elif simplejpeg_version() is not None:
        ms = decoder_ms(jpegs, preprocess.resize_size, job.config.max_pixels)
        decoder = min(ms, key=ms.get)
        rule = (
            f"decoding the first {len(jpegs)} JPEGs, one core, warm: simplejpeg {simplejpeg_version()}"
            f" {ms['simplejpeg']:.3f} ms, PIL {ms['pil']:.3f} ms per image"
        )
    chosen = dataset(decoder)

    def timed(index: int) -> tuple[tuple, float]:  # the decoding thread's CPU time: hashing, decoding, cropping
        started = time.thread_time()
        return chosen.from_bytes(index, datas[index]), time.thread_time() - started

    with ThreadPoolExecutor(runtime.default_threads(), thread_name_prefix="lookalike-decode") as pool:
        decoded = list(pool.map(timed, datas))
    job.decoded.update(failed)
    job.decoded.update({item[0]: item for item, _ in decoded})
    if not decoded:
        return None, None, decoder, rule
    pixels = torch.stack([item[1] for item, _ in decoded])
    return pixels, 1000 * sum(took for _, took in decoded) / len(decoded), decoder, rule


def decoder_ms(datas: list[bytes], min_side: int, max_pixels: int) -> dict[str, float]:
    """Mean ms per image of each JPEG decoder on these files' bytes, in this thread: both decode every file once
    untimed, then once timed, in turn, so neither pays the first call's costs alone."""
    times = {}
    for timed in (False, True):
        for decoder in JPEG_DECODERS:
            started = time.thread_time()
            for data in datas:
                try:
                    decode_pixels(data, max_pixels=max_pixels, min_side=min_side, decoder=decoder)
                except BadImageError:
                    pass
            if timed:
                times[decoder] = 1000 * (time.thread_time() - started) / max(1, len(datas))
    return times


def split_cores(decode_ms: float, model_ms: float, cores: int) -> tuple[int, int, str]:
    """Decode and inference threads for `cores`, from one core's decode cost and the model's cost on all cores.

    Each side gets the share of the cores its work needs, rounded up, so neither starves the
    other: decode costs `decode_ms` core-ms per image, the model `model_ms × cores`. The two may
    then overlap by one thread; that costs little, because neither spins while it waits (the
    decode threads block on the GIL-free work they run, OpenVINO runs its own pool), while
    rounding down would leave a core idle behind the slower side.
    """
    model_core_ms = model_ms * cores
    share = decode_ms / (decode_ms + model_core_ms)
    decode_threads = min(cores, max(1, math.ceil(share * cores - 1e-9)))
    threads = max(1, cores - math.floor(share * cores + 1e-9))
    rule = (
        f"decode {decode_ms:.1f} core-ms/img vs model {model_core_ms:.1f} core-ms/img on {cores} cores: decode share"
        f" {share:.0%} → {decode_threads} decode thread{'s' if decode_threads != 1 else ''}, {threads} inference"
        f" thread{'s' if threads != 1 else ''}"
    )
    return decode_threads, threads, rule


def decide_inference(job: Job, embedder: Embedder, decode_threads: int | None, threads: int | None) -> Inference:
    """Calibrate backend and precision on the job's first images, measure the batch size, then split the cores;
    saved in the job state.

    A resumed run reads the saved decision instead, so every shard is embedded alike and a
    resumed gallery is byte-identical to an uninterrupted one.
    """
    if "inference" in job.state or "precision" in job.state:  # a resumed run, or an update (the gallery's own choice)
        decided = saved_inference(job.state)
    else:
        cores = runtime.default_threads()
        sample, decode_ms, decoder, decoding = decode_sample(job, embedder.preprocess)
        if sample is None:  # nothing decodes: commit will say so
            decided = Inference("torch", "fp32", "no image decoded, nothing to calibrate", decoder=decoder)
        else:
            job_images = sum(s.stop - s.start for s in job.todo())
            # at `cores` threads, the split's usual outcome, so the run reuses the candidate compiled here
            choice, measured, reason = calibrate(
                embedder,
                sample,
                job.config.backend,
                job.config.precision,
                threads=cores,
                job_images=job_images,
                exclude=refused_choices(job.state),
            )
            reason += refusal_note(job.state)
            batch, batching, model_ms, rates = decide_batch(job, embedder, sample, choice, cores, job_images)
            if model_ms is None:
                model_ms = 1000 / next(
                    c.images_per_second
                    for c in measured
                    if (c.backend, c.precision) == (choice.backend, choice.precision)
                )
            auto_decode_threads, auto_threads, rule = split_cores(decode_ms, model_ms, cores)
            overridden = [
                f"--{name} {value}"
                for name, value in (("threads", threads), ("decode-threads", decode_threads))
                if value is not None
            ]
            decided = Inference(
                choice.backend,
                choice.precision,
                reason,
                tuple(measured),
                threads=threads if threads is not None else auto_threads,
                decode_threads=decode_threads if decode_threads is not None else auto_decode_threads,
                split=rule + (f"; overridden by {' and '.join(overridden)}" if overridden else ""),
                decode_ms_per_image=round(decode_ms, 3),
                model_ms_per_image=round(model_ms, 3),
                batch_size=batch,
                batching=batching,
                batch_rates={str(size): rate for size, rate in rates.items()} or None,
                decoder=decoder,
                decoding=decoding,
            )
        # OpenVINO picks its streams; recorded for a resume
        active = apply_inference(embedder, decided, threads, streams=None)
        decided = replace(decided, streams=getattr(active, "streams", None) if decided.backend == "openvino" else None)
        job.state["inference"] = decided.to_dict()
        atomic_write_json(job.partial / STATE, job.state)
        return decided
    apply_inference(embedder, decided, threads)
    return decided


def decide_batch(
    job: Job, embedder: Embedder, sample: torch.Tensor, choice: Choice, cores: int, job_images: int
) -> tuple[int, str, float | None, dict[int, float]]:
    """(batch size, why, the chosen backend's sustained ms per image on all cores or None when not measured, the
    sustained img/s measured by batch size).

    --batch-size (or the gallery's own) is kept and only measured, for the core split; otherwise the sizes of
    BATCH_SIZES are measured, sustained as the run embeds (`calibrate.sustained_rates`), when the job is large
    enough for that to cost little, and the smallest within BATCH_WITHIN of the best rate wins.
    """
    device = "cuda" if embedder.device.startswith("cuda") else "cpu"
    given = job.config.batch_size
    sizes = (given,) if given is not None else BATCH_SIZES[device]
    rates, note = sustained_rates(embedder, sample, choice, cores, sizes, job_images)
    if given is not None:
        why = "--batch-size, or the gallery's own" if job.base is None else "the gallery's own"
        return given, f"{why}; {note}", (1000 / rates[given] if rates else None), rates
    if not rates:
        return DEFAULT_BATCH_SIZE[device], f"the {device} default; {note}", None, rates
    batch = choose_batch(rates)
    return batch, f"{note} → {batch}, the smallest within {BATCH_WITHIN:.0%} of the best", 1000 / rates[batch], rates


def saved_inference(state: dict) -> Inference:
    """The decision a job state holds; states from before backends hold only a torch precision."""
    if "inference" in state:
        return Inference.from_dict(state["inference"])
    return Inference(
        "torch", state.get("precision", {"precision": "fp32"})["precision"], "saved by an earlier lookalike"
    )


def apply_inference(
    embedder: Embedder, decided: Inference, threads: int | None = None, streams: int | None | str = "recorded"
) -> Backend:
    """Run `embedder` as `decided` says: its backend, precision, inference threads (`threads` overrides) and
    OpenVINO streams (`streams`: the recorded ones by default, None to let OpenVINO pick; a state saved
    before streams were recorded ran one)."""
    threads = threads if threads is not None else decided.threads
    streams = (decided.streams or 1) if streams == "recorded" else streams
    openvino = decided.backend == "openvino"
    # With OpenVINO, torch only decodes: one thread per decode worker, the cores left to the model.
    runtime.set_threads(1 if openvino else threads)
    try:
        return embedder.use(
            Choice(decided.backend, decided.precision), threads if openvino else None, streams if openvino else 1
        )
    except BackendUnavailable as exc:
        raise GalleryError(
            f"this extraction embeds with {decided.backend} {decided.precision}, which cannot run here ({exc}); "
            "install what it needs to finish the same gallery, or start again with --overwrite"
        ) from exc


def write_shard(job: Job, shard: Shard, *fields, **named) -> None:
    """Save `shard`'s chunk file atomically; the rest of the arguments are `encode_shard`'s."""
    atomic_write_bytes(job.partial / shard.filename, encode_shard(*fields, **named))


def run_local(
    job: Job, embedder: Embedder, decode_threads: int, progress: bool = True, decided: Inference | None = None
) -> dict:
    """Fill every missing shard in this process, decoding beside the model: `decode_threads` at first, then as many
    as the stage times call for (`DecodePace`; a fixed count when --decode-threads is given). Returns the pace's
    summary for the manifest."""
    from tqdm import tqdm

    todo = job.todo()
    if not todo:
        return {}
    decided = decided or saved_inference(job.state)
    bs = model_batch_size(job, decided)
    batches = [list(range(b, min(b + bs, s.stop))) for s in todo for b in range(s.start, s.stop, bs)]
    dataset = ImageListDataset(
        job.collection.records,
        build_transform(embedder.preprocess),
        job.config.max_pixels,
        embedder.preprocess.resize_size,
        job.decoded,
        decoder=decided.decoder or "pil",
    )
    fixed = job.config.decode_threads is not None
    pace = None if fixed or decode_threads <= 0 else DecodePace(decode_threads, runtime.default_threads())
    loader = decoded_batches(
        dataset,
        batches,
        decode_threads,
        embedder.preprocess.image_size,
        pin_memory=embedder.device.startswith("cuda"),
        pace=pace,
    )
    done_images = sum(s.stop - s.start for s in job.shards) - sum(s.stop - s.start for s in todo)
    bar = tqdm(
        total=len(job.collection.records),
        initial=done_images,
        unit="img",
        disable=not progress,
        desc=f"extract {embedder.spec.name}",
        dynamic_ncols=True,
    )
    shard_iter = iter(todo)
    shard = next(shard_iter)
    embs, idx, bad, hashes, dims, started = [], [], [], [], [], time.perf_counter()
    try:
        for (indices, bad_items, digests, sizes), embedded in map_batches(
            embedder.active, (((i, b, d, s), t) for i, t, b, d, s in loader)
        ):
            if embedded is not None:
                embs.append(embedded)
                idx.extend(indices)
                hashes.extend(digests)
                dims.extend(sizes)
            bad.extend(bad_items)
            bar.update(len(indices) + len(bad_items))
            last = max(indices + [i for i, _ in bad_items])
            if last == shard.stop - 1:
                emb = np.concatenate(embs) if embs else np.zeros((0, embedder.dim), np.float32)
                write_shard(job, shard, emb, idx, bad, time.perf_counter() - started, hashes, dims)
                embs, idx, bad, hashes, dims, started = [], [], [], [], [], time.perf_counter()
                shard = next(shard_iter, None)
    except KeyboardInterrupt:
        done = sum(job.done(s) for s in job.shards)
        raise GalleryError(
            f"interrupted: {done} of {len(job.shards)} chunks are saved in {job.partial}; rerun the same command to"
            " resume"
        ) from None
    finally:
        bar.close()
    return pace.summary() if pace is not None else {"start": decode_threads, "final": decode_threads, "rule": "fixed"}


def model_batch_size(job: Job, decided: Inference) -> int:
    """Images per model call: the job's own (--batch-size, or the gallery's), else what the calibration measured."""
    if job.config.batch_size is not None:
        return job.config.batch_size
    device = "cuda" if runtime.pick_device(job.config.device).startswith("cuda") else "cpu"
    return decided.batch_size or DEFAULT_BATCH_SIZE[device]


def ensure_state(job: Job, embedder: Embedder) -> None:
    """Write the job's state file before the first shard, so a resume can check its arguments."""
    record_state(job, embedder.describe())


def record_state(job: Job, model: dict) -> None:
    """Record the model (as `Embedder.describe()` gives it) and the scan in `.partial/`, before any shard; the Ray
    engine gets the model from a worker."""
    if job.base is not None:
        incremental.check_model(job.base, model)
    job.partial.mkdir(parents=True, exist_ok=True)
    job.state.setdefault("model", {k: v for k, v in model.items() if k != "precision"})
    job.state.setdefault("started", datetime.now(UTC).isoformat(timespec="seconds"))
    if job.plan is not None and not (job.partial / incremental.PLAN).is_file():
        incremental.save_plan(job.partial, job.plan)
    atomic_write_json(job.partial / STATE, job.state)


def read_new_rows(job: Job) -> incremental.NewRows:
    """Every chunk's rows at once, for an update (they are only its new and changed images); record numbers are the
    job's own (`job.collection`)."""
    chunks = finished_chunks(job)
    parts = list(read_chunks(job, chunks))
    return incremental.NewRows(
        np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, job.state["model"]["dim"]), np.float32),
        np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64),
        [h for p in parts for h in p[2]] if chunks.hashes else None,
        chunks.bad,
        chunks.seconds,
        np.concatenate([p[3] for p in parts]).reshape(-1, 2) if parts and chunks.dimensions else None,
    )


def commit(job: Job, embedder: Embedder | None = None, extra_timings: dict | None = None) -> Gallery:
    """Assemble the shards into the final gallery files; manifest.json goes last. An update is written aside and moved
    in."""
    chunks = finished_chunks(job)
    n_total, seconds = len(job.collection.records), chunks.seconds
    what = {
        "model": ModelInfo.from_dict({**job.state["model"], **inference_record(job.state)}),
        "timings": {
            "extract_seconds": round(seconds, 3),
            "images": n_total,
            "ms_per_image": round(1000 * seconds / max(1, n_total), 3),
            "images_per_second": round(n_total / seconds, 2) if seconds else None,
            "note": (
                "wall time of decode + preprocess + embed, summed over chunks (resumed runs included)"
                + (
                    "; an update: `images` counts the new and changed images it embedded"
                    if job.base is not None
                    else ""
                )
            ),
            **(extra_timings or {}),
        },
        "extract": {
            "identity": job.state["identity"],
            "records_digest": job.state["records_digest"],
            "chunks": len(job.shards),
        },
        "environment": runtime.environment(),
    }
    if job.base is not None:  # the query latency measured at the full extraction still holds: same model, same input
        what["timings"] |= {k: v for k, v in job.base.manifest.timings.items() if k.startswith("single_image")}
        incremental.stage_update(
            job.partial, job.whole, job.plan, job.base, read_new_rows(job), job.config.shard_size, **what
        )
        return incremental.finish_update(job.out)
    if chunks.rows == 0:
        raise GalleryError(
            f"no image under {job.config.data} could be decoded ({len(chunks.bad)} bad files); nothing to store"
        )
    plan = (
        job.plan
        if job.plan is not None and len(job.plan.reuse) == n_total
        else incremental.scan(job.collection.records)
    )
    writer = GalleryWriter(job.out, job.state["model"]["dim"], job.config.shard_size)
    for embeddings, indices, hashes, dimensions in read_chunks(job, chunks):
        records = [job.collection.records[i] for i in indices.tolist()]
        rows = Rows(
            [r.path for r in records],
            [r.label for r in records],
            [r.label_name for r in records],
            [r.split for r in records],
            content_hashes=hashes,
            sizes=plan.sizes[indices],
            mtimes=plan.mtimes[indices],
            dimensions=dimensions,
        )
        writer.add(embeddings, rows)
    gallery = writer.finish(
        data=DataInfo.from_dict(job.collection.provenance()),
        skipped=[{"path": p, "reason": r} for p, r in job.collection.problems]
        + [incremental.skipped_entry(job.collection.records[i].path, r, plan, i) for i, r in chunks.bad],
        **what,
    )
    shutil.rmtree(job.partial, ignore_errors=True)
    return gallery


def inference_record(state: dict) -> dict:
    """The manifest's `inference` (typed) and `precision` (its summary, as galleries before backends had it)."""
    if "inference" not in state:
        return {"precision": state.get("precision", {"precision": "fp32"})}
    decided = saved_inference(state)
    return {
        "inference": state["inference"],
        "precision": {"precision": decided.precision, "backend": decided.backend, "reason": decided.reason},
    }


def extract(config: ExtractConfig, progress: bool = True) -> Gallery:
    """The local engine: prepare → fill missing shards → commit. Returns the finished gallery."""
    job = prepare(config)
    if job.complete:
        log.info("gallery at %s is already complete with these arguments", job.out)
        return open_gallery(job.out)
    if not job.todo() and job.base is not None:  # an update with nothing to embed: removals, relabelling, touched files
        return commit(job)
    threads_before = torch.get_num_threads()  # restored at the end: the split below is this job's, not the caller's
    try:
        runtime.set_threads(config.threads)
        device = runtime.pick_device(config.device)
        embedder = load_model(config.model, config.weights, config.image_size, device, config.seed)
        ensure_state(job, embedder)
        started = time.perf_counter()
        calibration_s = None
        while True:  # once, unless the backend gives NaN or inf: then again without it, or a stop (refuse_non_finite)
            try:
                runtime.set_threads(config.threads)
                decided = decide_inference(job, embedder, config.decode_threads, config.threads)
                decode_threads = (
                    config.decode_threads
                    if config.decode_threads is not None
                    else (decided.decode_threads or runtime.default_threads())
                )
                calibration_s = calibration_s or time.perf_counter() - started
                if decided.backend != "torch":
                    # torch then only runs each decode thread's per-image tensor ops, and those should take one core,
                    # not a team of threads competing with the backend's: measured on 64 px images, 1.5-1.9 CPU ms
                    # each at 2 threads, 0.95 at 1
                    torch.set_num_threads(1)
                pace = run_local(job, embedder, decode_threads, progress, decided)
                break
            except NonFiniteEmbeddings as exc:
                error = refuse_non_finite(job, exc)
                if exc.choice is None or exc.choice == REFERENCE or requested_inference(config):
                    raise error from None
                log.warning("%s; the rest is embedded without it", exc.what)
        threads = (
            runtime.thread_counts().get("torch")
            if decided.backend == "torch"
            else getattr(embedder.active, "threads", None)
        )
        timings = {
            "threads": threads,
            "decode_threads": decode_threads,
            "decode_pace": pace,
            "device": device,
            "batch_size": model_batch_size(job, decided),
            "calibration_seconds": round(calibration_s, 3),
        }
        return commit(job, embedder, timings | (single_image_timing(job, embedder) if job.base is None else {}))
    finally:
        runtime.set_threads(threads_before)


def single_image_timing(job: Job, embedder: Embedder) -> dict:
    """Batch-1 latency of one of the collection's images: what a query image costs (scale's end-to-end figure)."""
    from .query import SINGLE_IMAGE_REPEATS, single_image_ms

    if embedder.choice.backend == "openvino":  # a query runs OpenVINO's latency mode, not the extraction's streams
        embedder.use(embedder.choice, getattr(embedder.active, "threads", None))
    for record in job.collection.records[:10]:  # the first that decodes
        try:
            ms = single_image_ms(embedder, record.path)
        except Exception:  # noqa: BLE001 - an undecodable file is already reported among the skipped ones
            continue
        note = (
            f"one image decoded, preprocessed and embedded alone (batch 1), median of {SINGLE_IMAGE_REPEATS} runs after"
            " a warm-up, at extraction"
        )
        return {"single_image_ms": ms, "single_image_note": note}
    return {}
