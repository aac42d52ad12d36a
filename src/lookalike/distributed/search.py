"""`--engine ray` for search: an `ivfpq-ondisk` index's parts spread over Ray actors, each query fanned out to all of
them, their answers merged exactly.

Per batch of queries the driver assigns each query to its nprobe nearest lists once (the coarse
quantiser); every actor scans its own parts' entries of those lists (`search_preassigned` over its
parts' inverted lists stacked, memory-mapped) and returns its k·k_factor best by code distance;
`faiss.merge_knn_results` keeps the overall k·k_factor best, which are the candidates the single
index finds; the driver re-ranks them exactly from the gallery's memory-mapped shards. So the
answer equals the single index's, up to ties.

An actor that dies is restarted by Ray (it maps its parts again) and the call is retried; when that
fails too, the search raises one LookalikeError instead of answering from the other actors' parts.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import EngineRefused, LookalikeError
from ..gallery import Gallery
from ..search import SearchMethod
from ..search.base import BuildStats
from ..search.ondisk import OnDiskIVF
from ..search.rerank import DEFAULT_K_FACTOR, exact_rerank

ACTOR_RETRIES = 3  # calls retried on a restarted actor before the search fails


class PartsActor:
    """Holds a group of index parts, memory-mapped, as one IVF index whose lists are the parts' lists stacked."""

    def __init__(self, files: Sequence[str], threads: int = 1):
        faiss.omp_set_num_threads(threads)
        self.parts = [faiss.read_index(str(f), faiss.IO_FLAG_MMAP) for f in files]
        ivfs = [faiss.extract_index_ivf(p) for p in self.parts]
        lists = faiss.InvertedListsPtrVector()
        for ivf in ivfs:
            lists.push_back(ivf.invlists)
        self.stacked = faiss.HStackInvertedLists(lists.size(), lists.data())
        self.ivf = ivfs[0]  # quantiser and codebooks: every part shares them
        self.ivf.own_invlists = False  # its own lists are inside the stack, which must not free them
        self.ivf.replace_invlists(self.stacked, False)
        self.ivf.ntotal = sum(int(ivf.ntotal) for ivf in ivfs)

    def search(
        self, queries: np.ndarray, k: int, coarse_d: np.ndarray, coarse_i: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        self.ivf.nprobe = coarse_i.shape[1]
        return self.ivf.search_preassigned(queries, k, coarse_i, coarse_d)

    def rows(self) -> int:
        return int(self.ivf.ntotal)


class FannedOut(SearchMethod):
    """A saved `ivfpq-ondisk` index searched by Ray actors that each hold a group of its parts."""

    kind = "ray-fanout"

    def __init__(self, method: OnDiskIVF, actors: int):
        if not isinstance(method, OnDiskIVF) or not method.parts:
            raise EngineRefused(
                f"--engine ray fans out an ivfpq-ondisk index kept as parts; {method.name!r} is not one — build it with"
                " `lookalike index --method ivfpq-ondisk`"
            )
        super().__init__(method.name, method.metric)
        import ray

        self.method = method
        self.ids = method.ids
        self.build_stats = method.build_stats
        self.quantizer = faiss.extract_index_ivf(method.index).quantizer
        groups = [list(map(str, group)) for group in np.array_split(np.asarray(method.parts, dtype=object), actors)]
        groups = [g for g in groups if g]
        remote = ray.remote(PartsActor).options(max_restarts=-1, max_task_retries=ACTOR_RETRIES, num_cpus=1)
        self.actors = [remote.remote(group) for group in groups]
        self._release = weakref.finalize(self, _kill, self.actors)  # the actors go when their searcher does
        held = sum(self._gather([a.rows.remote() for a in self.actors]))
        if held != method.ntotal:
            raise LookalikeError(
                f"the parts of {method.name} hold {held} rows but the index {method.ntotal}; rebuild it with"
                " `lookalike index --method ivfpq-ondisk`"
            )

    @property
    def dim(self) -> int:
        return self.method.dim

    def _build(self, vectors: np.ndarray) -> BuildStats:
        raise LookalikeError("a fanned-out index is built as ivfpq-ondisk, then searched with --engine ray")

    def params(self) -> dict[str, Any]:
        return {**self.method.params(), "actors": len(self.actors)}

    def set_params(self, **params: Any) -> None:
        self.method.set_params(**params)

    def search_param_ranges(self) -> dict[str, tuple[int, int]]:
        return self.method.search_param_ranges()

    def _search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        current = self.method.params()
        chosen = {**{key: current[key] for key in ("nprobe", "k_factor") if key in current}, **(params or {})}
        chosen = {**chosen, **self.method.check_params(chosen)}
        nprobe, k_factor = int(chosen["nprobe"]), int(chosen.get("k_factor", DEFAULT_K_FACTOR))
        coarse_d, coarse_i = self.quantizer.search(queries, nprobe)  # the query is assigned to lists once
        want = k * k_factor
        answers = self._gather([a.search.remote(queries, want, coarse_d, coarse_i) for a in self.actors])
        keep_max = self.metric == "ip"
        _, candidates = faiss.merge_knn_results(
            np.stack([d for d, _ in answers]), np.stack([i for _, i in answers]), keep_max=keep_max
        )
        return exact_rerank(queries, candidates, self.method.vectors, k, self.metric)

    def _gather(self, refs: list) -> list:
        import ray

        try:
            return ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise LookalikeError(
                f"a search actor of {self.name} died and could not be restarted ({type(exc).__name__}); no answer is"
                " given from the other actors' parts alone — check the Ray cluster and search again"
            ) from exc

    def memory_bytes(self) -> int:
        return self.method.memory_bytes()

    def _save(self, folder: Path) -> None:
        raise LookalikeError("a fanned-out index is saved as the ivfpq-ondisk index it searches")

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> FannedOut:
        raise LookalikeError("load the ivfpq-ondisk index, then fan it out with lookalike.distributed.fan_out")

    def close(self) -> None:
        """Stop the actors now (they also stop when this object is collected)."""
        self._release()


def _kill(actors: list) -> None:
    import ray

    if ray.is_initialized():
        for actor in actors:
            ray.kill(actor)


def fan_out(actors: int | None = None):
    """The Searcher's engine for `--engine ray`: each saved ivfpq-ondisk index it loads is searched by `actors` Ray
    actors (default: one per cluster CPU, at most one per part). Call it while connected to Ray."""
    import ray

    def engine(method: SearchMethod, gallery: Gallery) -> SearchMethod:
        n = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        return FannedOut(method, max(1, min(n, len(getattr(method, "parts", [])) or 1)))

    return engine
