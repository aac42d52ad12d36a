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

from .base import METHOD_FILE, BuildStats, SearchMethod
from .brute import BruteForce
from .factory import (
    DEFAULT_NPROBE,
    METHOD_CLASSES,
    NAMED_METHODS,
    default_nlist,
    factory_for,
    make_method,
    method_key,
    pq_bits_for,
)
from .faiss_index import FaissIndex
from .hnswlib_index import HnswlibHnsw
from .ondisk import OnDiskIVF
from .rerank import MmapRerankIndex
from .storage import (
    DATABASES,
    build_dir,
    database_digest,
    database_label,
    database_rows,
    database_vectors,
    get_method,
    load_method,
    method_dir,
    save_method,
    saved_methods,
    stale_reason,
)
from .update import stage_indexes  # noqa: F401 (importing it registers how saved indexes follow an update)
from .usearch_index import UsearchHnsw

__all__ = [
    "SearchMethod",
    "BuildStats",
    "BruteForce",
    "FaissIndex",
    "MmapRerankIndex",
    "OnDiskIVF",
    "build_dir",
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
    "METHOD_FILE",
    "METHOD_CLASSES",
    "NAMED_METHODS",
    "DEFAULT_NPROBE",
    "method_dir",
    "method_key",
    "stale_reason",
    "DATABASES",
    "database_rows",
    "database_label",
]
