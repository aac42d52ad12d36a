"""The search-method registry: every named method and search-time parameter, as data.

One table says what each name means (its class, its FAISS factory template) and one says each
search-time parameter's default and allowed range. `make_method`, the CLI's help, the tuner and
the server read them; nothing else spells a default or a range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """A search-time knob: its default and range (`high` None: bounded by the built index, e.g. nprobe ≤ nlist)."""

    name: str
    default: int
    low: int
    high: int | None
    meaning: str


@dataclass(frozen=True)
class MethodSpec:
    """A named method: which class builds it and, for FAISS families, the factory template it stands for.

    Template fields: {nlist} IVF lists, {m} HNSW links per node, {pq} the PQ code ("PQ64np").
    """

    name: str
    kind: str  # SearchMethod.kind of the class that implements it
    factory: str | None
    summary: str
    exact: bool = False
    # constructor arguments of the class (e.g. usearch's dtype, hnswlib's m, an HNSW's ef_construction)
    options: Mapping[str, Any] = field(default_factory=dict)


PARAMS: Mapping[str, ParamSpec] = {
    p.name: p
    for p in (
        ParamSpec("nprobe", 16, 1, None, "IVF lists visited per query (at most nlist)"),
        ParamSpec("efSearch", 64, 1, 4096, "HNSW candidate list size during search"),
        ParamSpec("k_factor", 4, 1, 256, "candidates re-ranked exactly, as a multiple of k"),
    )
}
DEFAULT_HNSW_M = 32
# Kinds whose every method is an HNSW graph of another library, searched with efSearch and built with
# `m` links per node (its registry option, else DEFAULT_HNSW_M; make_method's `m` overrides both).
GRAPH_KINDS = ("usearch", "hnswlib")
RERANK_KINDS = ("faiss-mmap-rerank", "faiss-ondisk")  # kinds that re-rank k·k_factor candidates exactly

METHODS: Mapping[str, MethodSpec] = {
    s.name: s
    for s in (
        MethodSpec(
            "brute", "brute", None, "exact: matrix product in blocks + partial top-k (numpy or torch)", exact=True
        ),
        MethodSpec("flat", "faiss", "Flat", "exact: faiss.IndexFlatIP / IndexFlatL2", exact=True),
        MethodSpec(
            "exact-lowp",
            "exact-lowp",
            None,
            "exact: an int8, bf16 or fp16 scan picks candidates within a proven error bound and fp32 re-ranks them,"
            " or the plain fp32 scan where the gallery's own rows show the bound would prune too little",
            exact=True,
        ),
        MethodSpec(
            "ivf", "faiss", "IVF{nlist},Flat", "inverted lists over k-means cells; nprobe trades recall for speed"
        ),
        MethodSpec("hnsw", "faiss", "HNSW{m},Flat", "graph; efSearch trades recall for speed"),
        MethodSpec(
            "hnsw-sq8",
            "faiss",
            "HNSW{m}_SQ8",
            "graph over 8-bit scalar-quantised vectors: each step reads a quarter of the bytes, and the quantiser caps"
            " recall; efSearch trades recall for speed",
        ),
        MethodSpec(
            "hnsw16-sq8",
            "faiss",
            "HNSW16_SQ8",
            "the same graph with M 16, built more carefully (efConstruction 100): cheaper steps, for lower recall"
            " targets; efSearch trades recall for speed",
            options={"ef_construction": 100},
        ),
        MethodSpec(
            "hnsw16-fp16",
            "faiss",
            "HNSW16_SQfp16",
            "graph (M 16, efConstruction 100) over 16-bit floats: half the bytes per step, with no recall cap; for"
            " galleries that fit in cache; efSearch trades recall for speed",
            options={"ef_construction": 100},
        ),
        MethodSpec(
            "ivfpq",
            "faiss",
            "IVF{nlist},{pq},RFlat",
            "PQ codes re-ranked by exact vectors held in RAM (more memory than raw)",
        ),
        MethodSpec(
            "ivfpq-mmap",
            "faiss-mmap-rerank",
            "IVF{nlist},{pq}",
            "PQ codes in RAM, re-ranked from the memory-mapped gallery",
        ),
        MethodSpec(
            "ivfpq-ondisk",
            "faiss-ondisk",
            "IVF{nlist},{pq}",
            "built out of core part by part (local processes or Ray tasks), lists memory-mapped from disk, re-ranked"
            " from the gallery's shards: for galleries larger than memory",
        ),
        MethodSpec("sq8", "faiss", "SQ8", "8-bit scalar quantiser (4× smaller)"),
        MethodSpec("sqfp16", "faiss", "SQfp16", "16-bit float scalar quantiser (2× smaller)"),
        MethodSpec(
            "usearch-f16",
            "usearch",
            None,
            "usearch HNSW (M 32) over f16 vectors; efSearch trades recall for speed",
            options={"dtype": "f16"},
        ),
        MethodSpec(
            "usearch-i8",
            "usearch",
            None,
            "usearch HNSW (M 32) over i8 vectors (4× smaller); efSearch trades recall for speed",
            options={"dtype": "i8"},
        ),
        MethodSpec(
            "hnswlib",
            "hnswlib",
            None,
            "hnswlib HNSW (M 32) over f32 vectors; efSearch trades recall for speed",
            options={"m": 32},
        ),
        MethodSpec(
            "hnswlib-m16",
            "hnswlib",
            None,
            "hnswlib HNSW (M 16, efConstruction 100): a lighter graph built more carefully, cheaper per step; efSearch"
            " trades recall for speed",
            options={"m": 16, "ef_construction": 100},
        ),
    )
}


def params_of(factory: str, kind: str) -> tuple[str, ...]:
    """The search-time parameters a method built from `factory` understands."""
    if kind in GRAPH_KINDS:
        return ("efSearch",)
    names = []
    if "IVF" in factory:
        names.append("nprobe")
    if "HNSW" in factory:
        names.append("efSearch")
    if "RFlat" in factory or "Refine" in factory or kind in RERANK_KINDS:
        names.append("k_factor")
    return tuple(names)


def default_params(factory: str, kind: str) -> dict[str, int]:
    return {name: PARAMS[name].default for name in params_of(factory, kind)}
