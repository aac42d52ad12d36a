"""Connecting to Ray: reuse this process's session, join a cluster, or start a local one.

Ray is the scheduler; lookalike only says how many model actors it wants and what each
one needs (CPUs, GPUs). A session opened here is closed here; one the caller opened
(a test, a notebook) is left running.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import LookalikeError

MIN_DECODE_CPUS = 0.1  # below this, decode tasks would crawl: refuse the plan instead
TASK_RETRIES = 3  # a plain Ray task (model probe, index shard) whose worker dies is retried this often


@dataclass(frozen=True)
class Resources:
    """What the cluster has (logical Ray resources, summed over nodes)."""

    cpus: float
    gpus: float
    nodes: int

    def to_dict(self) -> dict:
        return {"cpus": self.cpus, "gpus": self.gpus, "nodes": self.nodes}


@dataclass(frozen=True)
class WorkerPlan:
    """How many model actors to run and what each reserves; decode tasks get the CPUs left over."""

    actors: int  # model actors
    cpus_per_worker: float
    gpus_per_worker: float
    threads_per_worker: int  # torch threads inside one actor
    cpus_per_decode: float  # CPUs one decode task reserves: 1, or less on a cluster too small for that

    def to_dict(self) -> dict:
        return {
            "actors": self.actors,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
            "threads_per_worker": self.threads_per_worker,
            "cpus_per_decode": self.cpus_per_decode,
        }


@contextmanager
def connected(address: str | None = None) -> Iterator[Resources]:
    """Yield the cluster's resources while connected to it.

    `address` None starts a local Ray on this machine (or joins $RAY_ADDRESS when set),
    "auto" joins the cluster this node belongs to, "ray://host:10001" goes through Ray Client.
    """
    import ray

    opened = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = address or "a new local cluster"
            raise LookalikeError(
                f"cannot connect to Ray at {where} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__});"
                " start one with `ray start --head` and pass --address auto, or check the address"
            ) from exc
        opened = True
    try:
        yield cluster_resources()
    finally:
        if opened:
            ray.shutdown()


def cluster_resources() -> Resources:
    import ray

    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return Resources(float(total.get("CPU", 0)), float(total.get("GPU", 0)), nodes)


def plan_workers(
    resources: Resources,
    actors: int | None,
    gpus_per_worker: float,
    cpus_per_worker: float | None,
    threads: int | None,
) -> WorkerPlan:
    """Size the model-actor pool so that it fits the cluster and leaves CPU for decoding.

    Default actors: one per `gpus_per_worker` GPUs when GPUs are asked for, else half the CPUs
    (the other half decodes). Each actor reserves at most one CPU, and less when the actors would
    otherwise take every CPU: Ray Data's decode tasks would then never be scheduled and the job
    would hang. One CPU (half of a 1-CPU cluster) always stays free for decoding.
    """
    if gpus_per_worker < 0 or (cpus_per_worker is not None and cpus_per_worker <= 0):
        raise LookalikeError("--gpus-per-worker must be ≥ 0 and CPUs per worker > 0")
    if gpus_per_worker > 0:
        if resources.gpus < gpus_per_worker:
            raise LookalikeError(
                f"--gpus-per-worker {gpus_per_worker} asks for GPUs but the Ray cluster has {resources.gpus:g}; drop"
                " the option to embed on CPUs"
            )
        most = int(resources.gpus // gpus_per_worker)
        actors = actors or most
        if actors > most:
            raise LookalikeError(
                f"{actors} actors × {gpus_per_worker:g} GPU need {actors * gpus_per_worker:g} GPUs, the cluster has"
                f" {resources.gpus:g}; use --actors {most} or fewer"
            )
    actors = actors or max(1, int(resources.cpus // 2))
    if actors < 1:
        raise LookalikeError(f"--actors must be at least 1, got {actors}")
    free = min(1.0, resources.cpus / 2)
    cpus = round(cpus_per_worker if cpus_per_worker is not None else min(1.0, (resources.cpus - free) / actors), 3)
    decode = round(min(1.0, resources.cpus - actors * cpus), 3)
    if decode < MIN_DECODE_CPUS:
        raise LookalikeError(
            f"{actors} actors × {cpus:g} CPUs leave none of the cluster's {resources.cpus:g} CPUs for decoding; use"
            " fewer --actors"
        )
    return WorkerPlan(actors, cpus, float(gpus_per_worker), threads or max(1, round(cpus)), decode)


def remote_result(ref):
    """`ray.get`, with a LookalikeError raised on a worker (no weights, no GPU) re-raised as itself."""
    import ray

    try:
        return ray.get(ref)
    except Exception as exc:
        cause = user_error(exc)
        if cause is None:
            raise
        raise cause from exc


def user_error(exc: BaseException | None) -> LookalikeError | None:
    """The LookalikeError inside Ray's wrappers (RayTaskError, actor errors), if any: its message is for the user."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)  # RayTaskError keeps the worker's own exception here
        if isinstance(exc, LookalikeError) and not isinstance(inner, BaseException):
            return exc
        exc = inner if isinstance(inner, BaseException) else exc.__cause__
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
