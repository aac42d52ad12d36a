"""Search methods behind one interface, a registry of named methods, and their storage in a gallery.

Named methods and the factory strings they stand for (N = database size, d = dimension):
    brute    exact, matrix product + partial top-k (numpy or torch)
    exact-lowp exact, an int8/bf16/fp16 scan + fp32 re-rank of every candidate within a proven error bound
    flat     "Flat"                  exact, faiss.IndexFlatIP / IndexFlatL2
    ivf      "IVF{√N},Flat"          approximate; nprobe trades recall for speed
    hnsw     "HNSW{M},Flat"          graph; efSearch trades recall for speed
    hnsw-sq8, hnsw16-sq8 "HNSW{M}_SQ8", "HNSW16_SQ8"  the graph over 8-bit codes: a quarter of the bytes per step
    hnsw16-fp16 "HNSW16_SQfp16"      the graph over 16-bit floats: half the bytes per step, no recall cap
    ivfpq    "IVF{√N},PQ{d/8}np,RFlat" compressed codes, re-ranked by exact distances (k_factor);
                                     RFlat keeps a float copy of every vector, so memory > raw
    ivfpq-mmap "IVF{√N},PQ{d/8}np"   the same codes, re-ranked from the gallery's memory-mapped
                                     embeddings.npy: memory ≈ codes only (see search.rerank)
    sq8      "SQ8"                   8-bit scalar quantiser (4× smaller)
    sqfp16   "SQfp16"                16-bit floats (2× smaller)
    usearch-f16, usearch-i8          usearch's HNSW over f16 / i8 vectors (see search.usearch_index)
    hnswlib, hnswlib-m16             hnswlib's HNSW (M 32 / M 16, efC 40 / 100) over f32 vectors
                                     (see search.hnswlib_index)
Anything else containing a comma or starting like a factory string ("OPQ32,IVF1024,PQ32") is
passed to faiss.index_factory as is.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GalleryError, IndexMismatchError, IndexStaleError, LookalikeError
from ..gallery import INDEXES, Gallery
from .base import METHOD_FILE, BuildStats, SearchMethod
from .brute import BruteForce
from .exact_lowp import ExactLowPrecision
from .faiss_index import MAX_POINTS_PER_CENTROID, FaissIndex, ivf_nlist
from .hnswlib_index import HnswlibHnsw
from .registry import DEFAULT_HNSW_M, GRAPH_KINDS, METHODS, PARAMS, MethodSpec, default_params
from .rerank import MmapRerankIndex, rows_view
from .usearch_index import UsearchHnsw

NAMED_METHODS = tuple(METHODS)
METHOD_CLASSES = {
    cls.kind: cls for cls in (BruteForce, ExactLowPrecision, FaissIndex, MmapRerankIndex, UsearchHnsw, HnswlibHnsw)
}
METHOD_CLASSES["exact16"] = (
    ExactLowPrecision  # indexes saved before the int8 scan (they hold no files: rebuilt at load)
)
DEFAULT_NPROBE = PARAMS["nprobe"].default
FACTORY_PATTERN = re.compile(r"^(Flat|IVF|HNSW|PQ|OPQ|SQ|PCA|IDMap|LSH|NSG|RR|L2norm)")

__all__ = [
    "SearchMethod",
    "BuildStats",
    "BruteForce",
    "FaissIndex",
    "MmapRerankIndex",
    "UsearchHnsw",
    "HnswlibHnsw",
    "make_method",
    "default_nlist",
    "factory_for",
    "pq_bits_for",
    "database_vectors",
    "database_digest",
    "save_method",
    "load_method",
    "saved_methods",
    "get_method",
]


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


def database_vectors(gallery: Gallery, ids: np.ndarray) -> np.ndarray:
    """The gallery's rows `ids`: a zero-copy memory-mapped view when they are one contiguous run
    (the train split always is), so a 1M-row database is never copied just to be indexed."""
    return rows_view(gallery.embeddings, ids)


def method_key(name: str) -> str:
    """A folder-safe name for a method ('OPQ32,IVF1024,PQ32' → 'OPQ32_IVF1024_PQ32')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


# --- storage inside a gallery folder ---


def method_dir(gallery: Gallery, name: str, metric: str = "ip") -> Path:
    return gallery.path / INDEXES / (method_key(name) + ("" if metric == "ip" else f"-{metric}"))


def database_digest(ids: np.ndarray) -> str:
    """A digest of the set of gallery ids an index holds: two indexes over different rows never share one.

    Sorted first: an index updated in place holds its kept rows, then the added ones (a build
    holds them in ascending order, so digests saved before updates existed are unchanged)."""
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()[:32]


def save_method(gallery: Gallery, method: SearchMethod) -> Path:
    """Save under <gallery>/indexes/<name>/, stamped with the gallery fingerprint and the database rows it was built
    from."""
    folder = method_dir(gallery, method.name, method.metric)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    method.save(
        tmp,
        {
            "gallery_fingerprint": gallery.fingerprint,
            "model": gallery.model,
            "database_digest": database_digest(method.ids),
        },
    )
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)  # a crash from here on leaves the previous index as .old, never half of one
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def saved_methods(gallery: Gallery) -> list[str]:
    root = gallery.path / INDEXES
    return (
        sorted(p.name for p in root.iterdir() if (p / METHOD_FILE).is_file() and not p.name.endswith((".tmp", ".old")))
        if root.is_dir()
        else []
    )


def load_method(
    gallery: Gallery, name: str, metric: str = "ip", database_ids: np.ndarray | None = None
) -> SearchMethod:
    """Load a saved method and check that it was built from this very gallery.

    With `database_ids`, also check that it holds exactly those rows: an index built over another
    held-out sample contains some of this run's queries, and they would find themselves.
    """
    folder = method_dir(gallery, name, metric)
    if not (folder / METHOD_FILE).is_file():
        raise GalleryError(
            f"no saved index {name!r} in {gallery.path}; build it with `lookalike index --gallery {gallery.path}"
            f" --method {name}`"
        )
    info = json.loads((folder / METHOD_FILE).read_text())
    stale = info.get("stale") or stale_reason(gallery, info)
    if stale:
        again = info.get("name", name) if info.get("name") in METHODS else info.get("factory") or info.get("name", name)
        raise IndexStaleError(
            f"index {folder} is stale: {stale}; it is not searched — rebuild it with `lookalike index --gallery"
            f" {gallery.path} --method '{again}'`, or delete {folder}"
        )
    if info.get("gallery_fingerprint") != gallery.fingerprint or info.get("dim") != gallery.dim:
        raise IndexMismatchError(
            f"index {folder} was built from another gallery ({info.get('model')}, {info.get('dim')}-d) than"
            f" {gallery.path} ({gallery.model}, {gallery.dim}-d); rebuild it with `lookalike index --gallery"
            f" {gallery.path} --method {name}`"
        )
    if database_ids is not None and info.get("database_digest") != database_digest(database_ids):
        raise IndexMismatchError(
            f"index {folder} holds {info.get('ntotal')} database rows that are not the {len(database_ids)} rows"
            " searched here (another held-out query sample, e.g. another --queries on a gallery without a val split,"
            " or an index saved before lookalike recorded its rows), so some queries could find themselves; rebuild it"
            f" with `lookalike index --gallery {gallery.path} --method {name}`, or delete {folder} to search an index"
            " built on the fly"
        )
    return METHOD_CLASSES[info["kind"]].load(folder, gallery.embeddings)


def stale_reason(gallery: Gallery, info: dict[str, Any]) -> str | None:
    """Why an index not yet marked stale is one: it was built on the gallery as it was before its last update."""
    update = gallery.manifest.update
    if update is not None and info.get("gallery_fingerprint") == update.base_fingerprint != gallery.fingerprint:
        return (
            f"it was built before `lookalike extract` updated the gallery ({update.added} added, {update.changed}"
            f" changed, {update.removed} removed) and was not updated with it"
        )
    return None


def get_method(
    gallery: Gallery, name: str, metric: str = "ip", database_ids: np.ndarray | None = None, **options: Any
) -> tuple[SearchMethod, bool]:
    """The saved method if there is one, else a freshly built one; the flag says whether it was built now.

    With `database_ids`, a saved method is used only if it holds exactly those rows; otherwise a
    named method is built afresh over them (a custom saved one, e.g. `tune`'s, is refused).
    """
    folder = method_dir(gallery, name, metric)
    if name != "brute" and (folder / METHOD_FILE).is_file() and not options:
        try:
            return load_method(gallery, name, metric, database_ids), False
        except IndexMismatchError as mismatch:
            try:
                make_method(name, 1, gallery.dim, metric)
            except LookalikeError:
                raise mismatch from None  # not a method we can rebuild: the mismatch message says how
    if database_ids is None:
        database_ids = gallery.partition().database_ids
    method = make_method(name, len(database_ids), gallery.dim, metric, **options)
    method.build(database_vectors(gallery, database_ids), database_ids)
    return method, True
