"""`lookalike index --engine ray`: an IVF index built in parallel, equal to the single-process build.

    train the coarse quantiser (and any codebook) once, on the driver, on the same seeded
    sample a local build uses → add each shard of the database to its own copy of that
    trained, empty index, as Ray tasks → merge the copies into the trained index in shard
    order with `IndexIVF.merge_from`.

Adding is independent per vector (its list is the nearest centroid, its code depends only on
itself), and merging in shard order appends each list's entries in id order, so the result
holds the same lists, ids and codes as one `index.add` of everything: same search results.

The merge holds the whole index in the driver's memory. For indexes larger than memory,
FAISS merges shard files into on-disk inverted lists instead (`faiss.contrib.ondisk.merge_ondisk`);
docs/cluster.md shows the switch.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from ..errors import LookalikeError
from ..gallery import Gallery
from ..runtime import as_float32_c
from ..search import FaissIndex, SearchMethod, build_dir, database_rows, database_vectors, make_method
from ..search.faiss_index import FAISS_METRICS
from ..search.ondisk import OnDiskIVF
from .cluster import TASK_RETRIES, connected, remote_result

SHARDS_PER_CPU = 2  # two shards per CPU keeps every CPU busy when shards finish unevenly


class ShardedIVF(FaissIndex):
    """A FaissIndex whose add step runs as Ray tasks, one per shard; it saves and loads as a plain FaissIndex."""

    def __init__(self, base: FaissIndex, shard_size: int | None = None):
        info = base.describe()
        super().__init__(
            base.name,
            base.factory,
            base.metric,
            info["search_params"],
            info["seed"],
            base.train_points_per_list,
            base.ef_construction,
        )
        self.shard_size = shard_size  # vectors per Ray task; None: two shards per cluster CPU
        self.shards = 0

    def _add(self, index: faiss.Index, vectors: np.ndarray) -> faiss.Index:
        import ray

        n = len(vectors)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = self.shard_size or max(1, math.ceil(n / (SHARDS_PER_CPU * cpus)))
        trained = ray.put(faiss.serialize_index(index))
        add = ray.remote(_add_shard).options(num_cpus=1, max_retries=TASK_RETRIES)
        spans = [(start, min(start + size, n)) for start in range(0, n, size)]
        refs = [add.remote(trained, as_float32_c(np.asarray(vectors[a:b]))) for a, b in spans]
        for ref in refs:  # in shard order: each list then holds its ids in ascending order, as a single add does
            shard = faiss.deserialize_index(remote_result(ref))
            index.merge_from(shard, index.ntotal)
        self.shards = len(spans)
        return index

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "built_with": {"engine": "ray", "shards": self.shards}}


def _add_shard(trained: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Runs on a worker: one shard added to a copy of the trained, empty index, returned serialised."""
    faiss.omp_set_num_threads(1)
    index = faiss.deserialize_index(trained)
    index.add(vectors)
    return faiss.serialize_index(index)


def run_parts_on_ray(task, jobs: list[tuple]) -> None:
    """The out-of-core build's add-part jobs as Ray tasks (each reads its rows from the shards itself)."""
    import ray

    remote = ray.remote(task).options(num_cpus=1, max_retries=TASK_RETRIES)
    for ref in [remote.remote(job) for job in jobs]:
        remote_result(ref)


def check_mergeable(factory: str, d: int, metric: str) -> None:
    """Only a bare IndexIVF (IVF…,Flat / SQ / PQ) can be merged shard by shard; say so before any work."""
    index = faiss.index_factory(d, factory, FAISS_METRICS[metric])
    if not isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        raise LookalikeError(
            f"--engine ray builds plain IVF indexes (e.g. ivf, 'IVF1024,SQ8', 'IVF1024,PQ32'); {factory!r} is not one —"
            " build it with --engine local"
        )


def build_index_ray(
    gallery: Gallery,
    method_name: str,
    metric: str = "ip",
    nlist: int | None = None,
    address: str | None = None,
    *,
    shard_size: int | None = None,
    database: str = "all",
) -> SearchMethod:
    """Build `method_name` over the gallery's rows of `database` ("all", or "heldout": the held-out queries excluded),
    as `lookalike index` does."""
    database_ids = database_rows(gallery, database)
    base = make_method(method_name, len(database_ids), gallery.dim, metric, nlist=nlist)
    if isinstance(base, OnDiskIVF):  # built out of core already: its parts become Ray tasks
        base.workdir, base.part_runner = build_dir(gallery, base.name, metric), run_parts_on_ray
        with connected(address):
            base.build(database_vectors(gallery, database_ids), database_ids)
        return base
    if type(base) is not FaissIndex:  # brute force has nothing to build; subclasses (ivfpq-mmap) keep extra files
        raise LookalikeError(
            f"--engine ray builds plain FAISS IVF indexes; {method_name!r} is not one — use --engine local"
        )
    check_mergeable(base.factory, gallery.dim, metric)
    method = ShardedIVF(base, shard_size)
    with connected(address):
        method.build(database_vectors(gallery, database_ids), database_ids)
    return method
