"""`lookalike extract --engine ray`: the local engine's job, decoded and embedded on a Ray cluster.

The job is the local engine's (`lookalike.embed.extract.prepare`): same identity checks, same shard
plan, same state file, same shard format and the same `commit`, so a job started by one engine
can be finished by the other. Only the filling of missing shards differs. It is one streaming
Ray Data pipeline:

    one row per model batch of the missing shards   (cut exactly as the local engine cuts them)
      → map            decode, resize, crop to uint8   CPU tasks, spread over the cluster
      → map_batches    normalise + embed               a pool of `actors` model actors (GPUs if asked)
      → map_batches    assemble and write whole shards one light actor, through fsspec

Embeddings are bitwise equal to the local engine's because every model call sees the same
batch (shard boundaries are multiples of the batch size, bad files are dropped the same way)
on the same backend at the same precision: both are calibrated once, on a worker, before the
pipeline starts (`embed.calibrate`, as the local engine does), and stored in the job state that
every actor reads.

Failures: Ray Data restarts a model actor that dies and retries its batch on the new one (its
defaults for actor pools: `max_restarts=-1`, `max_task_retries=-1`); decode tasks are retried
the same way. If the shard writer dies, the shards it was assembling are simply missing after
the pass, and the driver runs another pass over the missing ones. Shards are written atomically, so a
killed job resumes from the finished ones (`lookalike extract` again with the same arguments).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.datasets import ImageRecord
from ..data.images import DEFAULT_MAX_PIXELS
from ..embed.backends import Choice, NonFiniteEmbeddings
from ..embed.extract import (
    DEFAULT_BATCH_SIZE,
    ExtractConfig,
    ImageListDataset,
    Job,
    Shard,
    apply_inference,
    commit,
    decode_into_batch,
    prepare,
    record_state,
    refusal_note,
    refuse_non_finite,
    refused_choices,
    saved_inference,
)
from ..embed.transforms import Preprocess, build_transform
from ..errors import GalleryError, LookalikeError
from ..gallery import Gallery, atomic_write_bytes, open_gallery
from ..gallery.manifest import Inference
from .cluster import TASK_RETRIES, WorkerPlan, connected, first_line, plan_workers, remote_result, user_error
from .staging import ShardStore
from .writer import ShardWriter

log = logging.getLogger(__name__)

# One decode task per model batch (fine-grained retries and balance), up to this many input blocks;
# beyond, a task decodes several batches, so a 100M-image job does not put 1.5M blocks on the driver.
MAX_INPUT_BLOCKS = 20_000
MAX_PASSES = 3  # passes over the missing shards before giving up (a pass only misses shards if the writer actor died)
CRASH_HOOK = "LOOKALIKE_TEST_CRASH_ONCE"  # "SHARD:MARKER": tests make a model actor die once on SHARD


@dataclass(frozen=True)
class ModelProbe:
    """What the driver learns from one worker before the pipeline starts (it never loads the model itself)."""

    model: dict  # Embedder.describe() on the worker's device
    preprocess: Preprocess
    inference: dict | None  # the calibration's Inference, None if it was already decided or nothing decoded


def extract_ray(
    config: ExtractConfig,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_worker: float = 0.0,
    *,
    staging: str | None = None,
    cpus_per_worker: float | None = None,
    progress: bool = True,
) -> Gallery:
    """Fill the gallery at `config.out` on a Ray cluster and commit it; returns the finished gallery.

    `staging` is where workers write shard files (any fsspec URL they can reach, e.g.
    s3://bucket/job); by default `<out>/.partial/`, which then has to be a shared filesystem.
    """
    job = prepare(config)
    if job.complete:
        log.info("gallery at %s is already complete with these arguments", job.out)
        return open_gallery(job.out)
    store = ShardStore(staging or str(job.partial))
    separate = store.local_path != job.partial.resolve()  # workers write elsewhere: copy their shards here
    job.partial.mkdir(parents=True, exist_ok=True)
    if separate:  # an update's shards hold other images than a full extraction's: its base gallery is part of the claim
        store.claim(
            job.state["identity"],
            job.state["records_digest"] + (f"+{job.base.fingerprint}" if job.base is not None else ""),
            config.overwrite,
        )
    collect(job, store, separate)
    resumed = [s for s in job.shards if job.done(s)]
    timings = {"engine": "ray", "resumed_shards": len(resumed), "passes": 0}
    if job.todo() or "model" not in job.state:
        timings |= fill_shards(job, store, separate, address, actors, gpus_per_worker, cpus_per_worker, progress)
    images = sum(s.stop - s.start for s in job.shards if s not in resumed)
    seconds = timings.pop("pipeline_seconds", 0.0)
    gallery = commit(
        job,
        None,
        {
            "extract_seconds": round(seconds, 3),
            "images": images,
            "ms_per_image": round(1000 * seconds / images, 3) if images and seconds else None,
            "images_per_second": round(images / seconds, 2) if images and seconds else None,
            "worker_seconds": round(sum(_shard_seconds(job, s) for s in job.shards if s not in resumed), 3),
            "note": (
                "extract_seconds: wall time of this run's Ray Data passes (decode, embed and shard writes on the"
                " cluster, model actors' start-up included) over `images`, this run's images (a resumed run counts only"
                " the rest); worker_seconds: decode + embed time summed over all batches on all workers; before the"
                " passes come connect_seconds (joining or starting Ray) and probe_seconds (describing the model and"
                " calibrating bf16 on one worker)"
            ),
            "batch_size": ray_batch_size(job),
            **timings,
        },
    )
    if separate:
        store.clear()
    return gallery


def fill_shards(
    job: Job,
    store: ShardStore,
    separate: bool,
    address: str | None,
    actors: int | None,
    gpus_per_worker: float,
    cpus_per_worker: float | None,
    progress: bool,
) -> dict:
    """Connect, probe the model, and run passes until every shard is written; returns timings for the manifest."""
    started = time.perf_counter()
    with connected(address) as resources:
        connect_s = time.perf_counter() - started
        plan = plan_workers(resources, actors, gpus_per_worker, cpus_per_worker, job.config.threads)
        t = time.perf_counter()
        try:
            probe = probe_model(job, plan)
            probe_s, pipeline_s, passes = time.perf_counter() - t, 0.0, 0
            while job.todo():
                if passes == MAX_PASSES:
                    raise GalleryError(
                        f"{len(job.todo())} chunks were still missing after {MAX_PASSES} passes; rerun the same command"
                        f" to resume from the {sum(job.done(s) for s in job.shards)} saved in {store.url}"
                    )
                t = time.perf_counter()
                run_pass(job, store, plan, probe.preprocess, progress)
                collect(job, store, separate)
                pipeline_s, passes = pipeline_s + time.perf_counter() - t, passes + 1
        except NonFiniteEmbeddings as exc:  # a worker's batch held NaN or inf: nothing of it was written
            collect(job, store, separate)
            raise refuse_non_finite(job, exc) from None
    return {
        "pipeline_seconds": pipeline_s,
        "connect_seconds": round(connect_s, 3),
        "probe_seconds": round(probe_s, 3),
        "device": probe.model["device"],
        **plan.to_dict(),
        "cluster": resources.to_dict(),
        "passes": passes,
    }


def _shard_seconds(job: Job, shard: Shard) -> float:
    with np.load(job.partial / shard.filename) as z:
        return float(z["seconds"])


def collect(job: Job, store: ShardStore, separate: bool) -> None:
    """Copy finished shards from a separate staging store into `<out>/.partial/`, where `commit` reads them."""
    if not separate:
        return
    wanted = {s.filename: s for s in job.shards if not job.done(s)}
    for name in sorted(store.shard_names() & wanted.keys()):
        atomic_write_bytes(job.partial / name, store.read(name))


# --- the model, probed once on a worker ---


def probe_model(job: Job, plan: WorkerPlan) -> ModelProbe:
    """Describe the model and, if not yet decided, calibrate bf16 vs fp32 — on a worker, with the workers' resources.

    Calibration uses the first batch (of the first missing shard) that has a decodable image,
    as the local engine does, so both engines decide alike; the verdict goes into the job
    state, which every actor and any resumed run reads.
    """
    import ray

    task = ray.remote(_probe).options(
        num_cpus=plan.cpus_per_worker, num_gpus=plan.gpus_per_worker or None, max_retries=TASK_RETRIES
    )
    need = "inference" not in job.state and "precision" not in job.state
    rows = batch_rows(job, job.todo()[:1])
    job_images = sum(s.stop - s.start for s in job.todo())
    exclude = refused_choices(job.state)
    probe = remote_result(task.remote(job.config, rows, need, plan.threads_per_worker, job_images, exclude))
    for shard in job.todo()[
        1:
    ]:  # the first missing shard had no decodable image: look further, as the local engine would
        if probe.inference is not None or not need:
            break
        probe = remote_result(
            task.remote(job.config, batch_rows(job, [shard]), True, plan.threads_per_worker, job_images, exclude)
        )
    if probe.inference is not None:
        job.state["inference"] = probe.inference | {"reason": probe.inference["reason"] + refusal_note(job.state)}
    record_state(job, probe.model)  # writes the state file
    return probe


def _probe(
    config: ExtractConfig,
    rows: list[dict],
    calibrate_now: bool,
    threads: int,
    job_images: int,
    exclude: tuple[Choice, ...] = (),
) -> ModelProbe:
    import torch

    from .. import runtime
    from ..embed.calibrate import calibrate
    from ..embed.models import load_model

    runtime.set_threads(threads)
    embedder = load_model(
        config.model, config.weights, config.image_size, runtime.pick_device(config.device), config.seed
    )
    inference = None
    if calibrate_now:
        for row in rows:
            pixels = decode_batch(row, embedder.preprocess, config.max_pixels)["pixels"]
            if len(pixels):
                choice, measured, reason = calibrate(
                    embedder,
                    torch.from_numpy(pixels),
                    config.backend,
                    config.precision,
                    threads,
                    job_images,
                    exclude,
                )
                split = (
                    f"ray: each model actor runs {threads} inference thread{'s' if threads != 1 else ''}; decoding runs"
                    " in separate tasks"
                )
                inference = Inference(
                    choice.backend, choice.precision, reason, tuple(measured), threads=threads, split=split
                ).to_dict()
                break
    return ModelProbe(embedder.describe(), embedder.preprocess, inference)


# --- the pipeline ---


def batch_rows(job: Job, shards: list[Shard]) -> list[dict]:
    """One row per model batch: the local engine's cut (batches never straddle a shard boundary)."""
    bs = ray_batch_size(job)
    rows = []
    for shard in shards:
        starts = range(shard.start, shard.stop, bs)
        for j, start in enumerate(starts):
            stop = min(start + bs, shard.stop)
            rows.append(
                {
                    "shard": shard.number,
                    "batch": j,
                    "batches": len(starts),
                    "start": start,
                    "paths": [r.path for r in job.collection.records[start:stop]],
                }
            )
    return rows


def run_pass(job: Job, store: ShardStore, plan: WorkerPlan, preprocess: Preprocess, progress: bool) -> None:
    """One Ray Data pass over the missing shards; returns when the stream is drained."""
    import ray
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    todo = job.todo()
    rows = batch_rows(job, todo)
    # one lookalike progress bar instead of one per stage
    ray.data.DataContext.get_current().enable_progress_bars = False
    # no per-run INFO lines; warnings (e.g. too few CPUs) still show
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor the notice that its bars are off
    inference = saved_inference(job.state).to_dict()
    dataset = (
        ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_INPUT_BLOCKS))
        .map(
            decode_batch,
            fn_kwargs={"preprocess": preprocess, "max_pixels": job.config.max_pixels},
            num_cpus=plan.cpus_per_decode,
        )
        .map_batches(
            EmbedActor,
            fn_constructor_kwargs={
                "config": job.config,
                "inference": inference,
                "threads": plan.threads_per_worker,
                "crash_once": os.environ.get(CRASH_HOOK),
            },
            batch_size=1,
            compute=ActorPoolStrategy(size=plan.actors),
            num_cpus=plan.cpus_per_worker,
            num_gpus=plan.gpus_per_worker or None,
        )
        .map_batches(
            ShardWriter,
            fn_constructor_kwargs={
                "store": store,
                "shards": {s.number: s for s in todo},
                "dim": job.state["model"]["dim"],
            },
            batch_size=1,
            compute=ActorPoolStrategy(size=1),  # one writer sees every batch of a shard
            num_cpus=0,
        )
    )
    done_images = sum(s.stop - s.start for s in job.shards) - sum(s.stop - s.start for s in todo)
    bar = tqdm(
        total=len(job.collection.records),
        initial=done_images,
        unit="img",
        disable=not progress,
        desc=f"extract {job.config.model} (ray ×{plan.actors})",
        dynamic_ncols=True,
    )
    try:
        for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            bar.update(int(out["images"].sum()))
    except KeyboardInterrupt:
        raise GalleryError(
            f"interrupted: finished chunks are kept in {store.url}; rerun the same command to resume"
        ) from None
    except LookalikeError:
        raise
    except Exception as exc:
        raise user_error(exc) or GalleryError(
            f"the Ray job failed ({first_line(exc)}); finished chunks are kept in {store.url}, rerun the same command"
            " to resume"
        ) from exc
    finally:
        bar.close()


def ray_batch_size(job: Job) -> int:
    """Images per batch on Ray: --batch-size or the gallery's own, else the device's default (the Ray engine does not
    measure batch sizes: its actors run one batch each, on whatever machines the cluster has)."""
    device = "cuda" if job.config.device.startswith("cuda") else "cpu"
    return job.config.batch_size or DEFAULT_BATCH_SIZE[device]


def decode_batch(row: dict, preprocess: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Decode one batch's files with the local engine's dataset code (same errors, same order, same content hashes and
    image sizes)."""
    import torch

    torch.set_num_threads(1)  # one decode task per CPU slot
    started = time.perf_counter()
    records = tuple(ImageRecord(str(path), None, "train") for path in row["paths"])
    dataset = ImageListDataset(records, build_transform(preprocess), max_pixels, preprocess.resize_size)
    local, tensor, bad, hashes, dimensions = decode_into_batch(
        dataset, list(range(len(dataset))), preprocess.image_size
    )
    start = int(row["start"])
    size = preprocess.image_size
    return {
        "shard": int(row["shard"]),
        "batch": int(row["batch"]),
        "batches": int(row["batches"]),
        "indices": np.asarray(local, dtype=np.int64) + start,
        "pixels": tensor.numpy() if tensor is not None else np.zeros((0, size, size, 3), np.uint8),
        "bad": json.dumps([[start + i, reason] for i, reason in bad]),
        "hashes": json.dumps(hashes),
        "dimensions": json.dumps(dimensions),
        "seconds": time.perf_counter() - started,
    }


class EmbedActor:
    """One model replica; Ray Data hands it one decoded batch per call."""

    def __init__(self, config: ExtractConfig, inference: dict, threads: int, crash_once: str | None = None):
        from .. import runtime
        from ..embed.models import load_model

        runtime.set_threads(threads)
        self.embedder = load_model(
            config.model, config.weights, config.image_size, runtime.pick_device(config.device), config.seed
        )
        apply_inference(self.embedder, Inference.from_dict(inference), threads)
        self.crash_once = crash_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        self._maybe_crash(int(batch["shard"][0]))
        started = time.perf_counter()
        pixels = np.array(batch["pixels"][0], copy=True)  # Ray hands out read-only views; torch wants to own the memory
        if len(pixels):
            embeddings = self.embedder.embed(torch.from_numpy(pixels))
        else:
            embeddings = np.zeros((0, self.embedder.dim), np.float32)
        passed = ("shard", "batch", "batches", "indices", "bad", "hashes", "dimensions")
        out = {key: batch[key] for key in passed if key in batch}
        out["embeddings"] = embeddings[None]
        out["seconds"] = batch["seconds"] + (time.perf_counter() - started)
        return out

    def _maybe_crash(self, shard: int) -> None:
        """Test hook: die (as a killed process would) the first time shard SHARD comes by."""
        if not self.crash_once:
            return
        number, marker = self.crash_once.split(":", 1)
        if int(number) == shard and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)
