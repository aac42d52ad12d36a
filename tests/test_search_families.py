"""The added index families through the one search interface: PQ with re-ranking from memory-mapped vectors,
small-gallery PQ, real memory."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.search import MmapRerankIndex, factory_for, make_method
from lookalike.search.faiss_index import FaissIndex, serialised_bytes
from lookalike.search.rerank import drop_page_cache, exact_rerank, is_memory_mapped


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """3000 clustered 64-d unit vectors saved as .npy and opened memory-mapped, like a gallery's embeddings."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((30, 64))
    base = unit(np.repeat(centres, 100, axis=0) + 0.7 * rng.standard_normal((3000, 64)))
    queries = unit(centres[rng.integers(0, 30, 40)] + 0.7 * rng.standard_normal((40, 64)))
    path = tmp_path_factory.mktemp("mm") / "embeddings.npy"
    np.save(path, base)
    return np.load(path, mmap_mode="r"), queries


def exact_ids(base, queries, k):
    flat = make_method("flat", len(base), base.shape[1])
    flat.build(base)
    return flat.search(queries, k)[1]


def test_exact_rerank_orders_candidates_by_true_score():
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((50, 8)))
    q = unit(rng.standard_normal((2, 8)))
    candidates = np.array([[3, 9, 14, -1, 20], [1, 2, -1, -1, -1]])
    scores, top = exact_rerank(q, candidates, vectors, 4, "ip")
    for row, cand in enumerate(candidates):
        valid = cand[cand >= 0]
        best = valid[np.argsort(-(vectors[valid] @ q[row]))][:4]
        np.testing.assert_array_equal(top[row, : len(best)], best)
        np.testing.assert_allclose(scores[row, : len(best)], vectors[best] @ q[row], rtol=1e-5)
    assert list(top[1, 2:]) == [-1, -1]  # fewer candidates than k: padded like FAISS


@pytest.mark.slow
def test_mmap_rerank_matches_faiss_rflat_and_costs_only_the_codes(mapped):
    base, queries = mapped
    in_ram = make_method("ivfpq", len(base), 64, search_params={"nprobe": 8})
    mmap = make_method("ivfpq-mmap", len(base), 64, search_params={"nprobe": 8})
    in_ram.build(base)
    mmap.build(base)
    assert isinstance(mmap, MmapRerankIndex) and is_memory_mapped(mmap.vectors)
    for k_factor in (1, 4, 16):
        np.testing.assert_array_equal(
            mmap.search(queries, 10, {"k_factor": k_factor})[1], in_ram.search(queries, 10, {"k_factor": k_factor})[1]
        )
    truth = exact_ids(base, queries, 10)
    recall = lambda found: np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth)])  # noqa: E731
    assert recall(mmap.search(queries, 10, {"k_factor": 16, "nprobe": 55})[1]) > recall(
        mmap.search(queries, 10, {"k_factor": 1, "nprobe": 55})[1]
    )
    assert in_ram.memory_bytes() > base.nbytes  # RFlat keeps a float copy
    fresh = make_method("ivfpq-mmap", len(base), 64, search_params={"nprobe": 8})
    fresh.build(base)
    assert fresh.memory_bytes() < base.nbytes / 4  # before any search: the codes only
    held = make_method("ivfpq-mmap", len(base), 64)
    held.build(np.array(base))  # vectors handed over in RAM are held, and counted
    assert held.memory_bytes() >= base.nbytes


def test_mmap_rerank_round_trips_and_checks_k_factor(mapped, tmp_path):
    base, queries = mapped
    method = make_method("ivfpq-mmap", len(base), 64, "l2")
    method.build(base)
    method.save(tmp_path / "m")
    loaded = MmapRerankIndex.load(tmp_path / "m", base)
    for a, b in zip(method.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_array_equal(a, b)
    assert loaded.params() == method.params() and loaded.memory_bytes() == method.memory_bytes()
    scores, ids = loaded.search(queries[:1], 3)
    np.testing.assert_allclose(scores[0], ((base[ids[0]] - queries[0]) ** 2).sum(1), atol=1e-5)  # exact squared L2
    with pytest.raises(LookalikeError, match="k_factor=0 is out of range"):
        loaded.search(queries, 5, {"k_factor": 0})


def test_pq_on_a_tiny_gallery_uses_fewer_bits_and_trains():
    assert factory_for("ivfpq", 100, 512, 10) == "IVF10,PQ64x6np,RFlat"
    assert factory_for("ivfpq-mmap", 100_000, 512) == "IVF316,PQ64np"
    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((100, 32)))
    method = make_method("ivfpq", 100, 32, nlist=4)
    method.build(base)
    assert method.search(base[:2], 3)[1].shape == (2, 3)


def test_memory_is_counted_without_copying_the_index(mapped):
    import faiss

    base, _ = mapped
    method = make_method("IVF8,SQ8", len(base), 64)
    method.build(base)
    assert serialised_bytes(method.index) == faiss.serialize_index(method.index).nbytes
    assert method.memory_bytes() == serialised_bytes(method.index) + method.ids.nbytes


def _resident_pages(path) -> np.ndarray:
    """Which pages of a file are in the page cache, from mincore(2) on a fresh read-only mapping."""
    import ctypes
    import mmap
    import os

    size = os.path.getsize(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mapping:
        address = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) == 0, ctypes.get_errno()
        return np.frombuffer(vec, dtype=np.uint8) & 1


def test_mmap_memory_counts_the_pages_the_searches_read(mapped):
    base, queries = mapped
    method = make_method("ivfpq-mmap", len(base), 64, search_params={"nprobe": 8, "k_factor": 4})
    method.build(base)
    codes = method.memory_bytes()
    method.search(queries, 10)
    # independently: the candidate rows FAISS hands to the re-ranker, and the file pages holding them
    _, candidates = FaissIndex._search(method, np.ascontiguousarray(queries), 40, None)
    header = base.offset  # the .npy header: rows start this many bytes into the file

    def pages_of(rows):  # a 256-byte row after the header may straddle two pages
        return {
            p for r in rows if r >= 0 for p in range((header + r * 256) // 4096, (header + r * 256 + 255) // 4096 + 1)
        }

    pages = pages_of(candidates.ravel())
    assert method.working_set_bytes() == len(pages) * 4096
    assert method.memory_bytes() == codes + len(pages) * 4096 > codes
    per_query = np.mean([len(pages_of(row)) for row in candidates])
    assert method.pages_per_query() == pytest.approx(per_query)
    method.reset_working_set()
    assert method.memory_bytes() == codes


def test_mmap_rerank_over_a_sharded_gallery_keeps_every_shard_mapped(mapped, tmp_path):
    """A database spanning several shards (any gallery over DEFAULT_SHARD_ROWS) is re-ranked from the shards' own
    mappings, never copied into RAM: the same answers as the rows held in memory, memory = codes + the pages read in
    each shard's file, and every shard dropped from the page cache for a cold query."""
    from lookalike.gallery.shards import ShardedArray

    base, queries = mapped
    files = []
    for number, (a, b) in enumerate([(0, 1000), (1000, 2200), (2200, 3000)]):
        files.append(tmp_path / f"embeddings-{number:05d}.npy")
        np.save(files[-1], np.asarray(base[a:b]))
    parts = [np.load(f, mmap_mode="r") for f in files]
    sharded = ShardedArray(parts, 64, [(str(f), 0) for f in files])
    params = {"nprobe": 8, "k_factor": 4}
    method = make_method("ivfpq-mmap", len(base), 64, search_params=params)
    method.build(sharded)
    held = make_method("ivfpq-mmap", len(base), 64, search_params=params)
    held.build(np.array(base))
    codes = method.memory_bytes()
    scores, ids = method.search(queries, 10)
    held_scores, held_ids = held.search(queries, 10)
    np.testing.assert_array_equal(ids, held_ids)
    np.testing.assert_allclose(scores, held_scores, rtol=1e-6)
    # independently: the candidate rows, and the pages of each shard's file that hold them
    _, candidates = FaissIndex._search(method, np.ascontiguousarray(queries), 40, None)
    pages = set()
    for r in candidates.ravel()[candidates.ravel() >= 0]:
        number = int(np.searchsorted([1000, 2200], r, side="right"))
        row = int(r) - (0, 1000, 2200)[number]
        start = parts[number].offset + row * 256
        pages |= {(number, p) for p in range(start // 4096, (start + 255) // 4096 + 1)}
    assert {number for number, _ in pages} == {0, 1, 2}  # the candidates came from every shard
    assert method.memory_bytes() == codes + len(pages) * 4096  # held in RAM, it would count every row
    assert method.cold_single_ms(queries[:2], 10) > 0 and held.cold_single_ms(queries[:2], 10) is None
    method.drop_page_cache()
    assert all(_resident_pages(str(f)).sum() == 0 for f in files)


@pytest.mark.slow
def test_cold_latency_reads_from_an_evicted_file(mapped):
    base, queries = mapped
    method = make_method("ivfpq-mmap", len(base), 64)
    method.build(base)
    method.search(queries, 10)  # warm: the pages read are in the page cache
    assert _resident_pages(base.filename).sum() > 0
    drop_page_cache(method.vectors)
    assert _resident_pages(base.filename).sum() == 0  # what every cold query starts from
    cold = method.cold_single_ms(queries, 10)
    assert cold is not None and cold > 0
    held = make_method("ivfpq-mmap", len(base), 64)
    held.build(np.array(base))
    assert held.cold_single_ms(queries, 10) is None  # vectors in RAM: there is no file to read


@pytest.mark.slow
def test_scanned_fraction_counts_the_lists_each_query_visits():
    import faiss

    from lookalike.data.vectors import make_clustered_embeddings
    from lookalike.search import make_method

    x, _ = make_clustered_embeddings(4000, 32, n_clusters=20, rank=4, seed=1)
    db, q = x[:3800], x[3800:]
    ivf = make_method("ivf", len(db), 32, nlist=16)
    ivf.build(db)
    assert ivf.scanned_fraction(q, 10, {"nprobe": 16}) == 1.0  # every list probed: the whole database
    inner = faiss.extract_index_ivf(ivf.index)
    _, lists = inner.quantizer.search(q, 1)  # independent count: the size of each query's one probed list
    want = np.mean([inner.invlists.list_size(int(i)) for i in lists[:, 0]]) / len(db)
    assert ivf.scanned_fraction(q, 10, {"nprobe": 1}) == pytest.approx(want)
    flat, brute = make_method("flat", len(db), 32), make_method("brute", len(db), 32)
    flat.build(db)
    brute.build(db)
    assert flat.scanned_fraction(q, 10) == 1.0 and brute.scanned_fraction(q, 10) == 1.0
    hnsw = make_method("hnsw", len(db), 32)
    hnsw.build(db)
    assert hnsw.scanned_fraction(q, 10) is None  # a graph cannot say
