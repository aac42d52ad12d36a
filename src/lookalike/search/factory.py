"""Search methods by name: the factory strings behind named methods, and `make_method`, which builds an unbuilt one.

The named methods and their meanings are listed in `lookalike.search` and `search.registry`;
this module turns a name (or a FAISS index_factory string) and a database size into a method.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import LookalikeError
from .base import SearchMethod
from .brute import BruteForce
from .exact_lowp import ExactLowPrecision
from .faiss_index import MAX_POINTS_PER_CENTROID, FaissIndex, ivf_nlist
from .hnswlib_index import HnswlibHnsw
from .ondisk import OnDiskIVF
from .registry import DEFAULT_HNSW_M, GRAPH_KINDS, METHODS, PARAMS, MethodSpec, default_params
from .rerank import MmapRerankIndex
from .usearch_index import UsearchHnsw

NAMED_METHODS = tuple(METHODS)
METHOD_CLASSES = {
    cls.kind: cls
    for cls in (BruteForce, ExactLowPrecision, FaissIndex, MmapRerankIndex, OnDiskIVF, UsearchHnsw, HnswlibHnsw)
}
DEFAULT_NPROBE = PARAMS["nprobe"].default
FACTORY_PATTERN = re.compile(r"^(Flat|IVF|HNSW|PQ|OPQ|SQ|PCA|IDMap|LSH|NSG|RR|L2norm)")


def default_nlist(n: int) -> int:
    """round(√N), as in the original study; at least 1."""
    return max(1, round(math.sqrt(n)))


def factory_for(
    name: str,
    n: int,
    d: int,
    nlist: int | None = None,
    m: int | None = None,
    pq_m: int | None = None,
    pq_bits: int | None = None,
) -> str:
    """The factory string behind a named method, sized for n vectors of dimension d."""
    nlist = nlist or default_nlist(n)
    bits = pq_bits or pq_bits_for(n)
    # "np": no polysemous training, a code reordering for Hamming pre-filtering we never use
    # that makes training many times slower (minutes instead of seconds at 100k).
    pq = f"PQ{pq_m or _pq_subquantizers(d)}" + ("" if bits == 8 else f"x{bits}") + "np"
    spec = METHODS.get(name)
    if spec is not None and spec.factory is not None:
        return spec.factory.format(nlist=nlist, m=m or DEFAULT_HNSW_M, pq=pq)
    if "," in name or FACTORY_PATTERN.match(name):
        return name
    raise LookalikeError(
        f"unknown method {name!r}; use one of {', '.join(NAMED_METHODS)} or a FAISS index_factory string such as"
        " 'IVF1024,PQ32'"
    )


def pq_bits_for(n: int) -> int:
    """8 bits (256 centroids per sub-quantiser) is the standard; FAISS cannot train 2^bits centroids
    from fewer points, so only a gallery under 256 vectors gets fewer bits."""
    return int(min(8, max(1, math.floor(math.log2(max(n, 2))))))


def _pq_subquantizers(d: int) -> int:
    """d/8 sub-quantisers of 8 bits: 16× compression, a common sweet spot; must divide d."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def make_method(
    name: str,
    n: int,
    d: int,
    metric: str = "ip",
    nlist: int | None = None,
    search_params: dict[str, Any] | None = None,
    backend: str = "torch",
    train_points_per_list: int = MAX_POINTS_PER_CENTROID,
    **sizes: Any,
) -> SearchMethod:
    """An unbuilt method by name (or factory string), with sensible default search parameters.

    `sizes` are factory_for's m (HNSW links), pq_m (sub-quantisers) and pq_bits.
    """
    spec = METHODS.get(name) or MethodSpec(method_key(name), "faiss", None, "a FAISS index_factory string")
    if spec.kind == "brute":
        return BruteForce(spec.name, metric, backend=backend)
    if spec.kind == "exact-lowp":
        return ExactLowPrecision(spec.name, metric)
    if spec.kind in GRAPH_KINDS:
        options = {**spec.options, "m": sizes.get("m") or spec.options.get("m") or DEFAULT_HNSW_M}
        return METHOD_CLASSES[spec.kind](
            spec.name, metric, search_params={**default_params("", spec.kind), **(search_params or {})}, **options
        )
    factory = factory_for(name, n, d, nlist, **sizes)
    params: dict[str, Any] = default_params(factory, spec.kind)
    if "nprobe" in params:
        params["nprobe"] = min(params["nprobe"], ivf_nlist(factory) or 1)
    params.update(search_params or {})
    return METHOD_CLASSES[spec.kind](
        spec.name if name in METHODS else method_key(factory),
        factory,
        metric,
        params,
        train_points_per_list=train_points_per_list,
        **spec.options,
    )


def method_key(name: str) -> str:
    """A folder-safe name for a method ('OPQ32,IVF1024,PQ32' → 'OPQ32_IVF1024_PQ32')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
