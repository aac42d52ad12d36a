"""`ivfpq-ondisk`: an IVF-PQ index built out of core, its inverted lists searched from disk, re-ranked exactly from
the gallery's memory-mapped shards.

The build never holds the gallery:
  1. train the coarse quantiser and the PQ codebooks on a seeded sample drawn across every row
     (`FaissIndex._trained_index`) → `trained.index`;
  2. add each part of the database (`PART_ROWS` rows, read from the shards' files by the task
     itself) to its own copy of the trained, empty index with the rows' positions as ids, each
     part a task of its own: a local process, or a Ray task with engine "ray" → `part-00000.index`;
  3. merge the parts' inverted lists into one file with `faiss.contrib.ondisk.merge_ondisk`
     → `lists.ivfdata`, which searches memory-map (FAISS's OnDiskInvertedLists).
The parts are kept beside the merged lists (`parts/`): `--engine ray` searches them spread over
actors (lookalike.distributed.search), the merged file serves one process.

Everything is written in a work folder beside the index, each file under a temporary name and
renamed when whole; `build.json` there names the build the files belong to (factory, rows, a
digest of sampled rows), so a killed build resumes from the trained index and its finished
parts, and files of another build are never mixed in. A search asks the lists for k·k_factor
candidates and re-scores them with the exact rows (`exact_rerank`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from ..errors import LookalikeError
from ..fileio import atomic_write_bytes, atomic_write_json, require_free_disk
from ..gallery.shards import ShardedArray
from ..runtime import as_float32_c
from .base import BuildStats
from .faiss_index import INDEX_FILE, MAX_POINTS_PER_CENTROID
from .rerank import MmapRerankIndex, evict_file, unmap_pages

log = logging.getLogger(__name__)

PART_ROWS = 262_144  # rows added per task: a part's codes and ids are a few tens of MB
MAX_TRAIN_ROWS = 262_144  # the training sample, held in memory: 512 MiB at 512-d, ≥ 39 rows a list to 6.7k lists
LISTS_FILE = "lists.ivfdata"
PARTS_DIR = "parts"
BUILD_FILE = "build.json"
TRAINED_FILE = "trained.index"
ADD_BLOCK_ROWS = 65_536
LOCAL_WORKERS = 2  # processes, each one FAISS thread: more only multiply the page cache the parts read through
PROBE_ROWS = 64  # rows hashed into the build key: enough to tell two galleries apart, cheap at any size


def part_file(number: int) -> str:
    return f"part-{number:05d}.index"


def build_key(method: OnDiskIVF, vectors: ShardedArray) -> dict[str, Any]:
    """What the work folder's files depend on: parameters, size, and a digest of seeded sample rows (another
    gallery, or the same one changed, gives another key)."""
    n = len(vectors)
    probe = np.sort(np.random.default_rng(12345).choice(n, min(n, PROBE_ROWS), replace=False)) if n else []
    digest = hashlib.sha256(np.ascontiguousarray(vectors.take(probe))).hexdigest()[:32]
    return {
        "factory": method.factory,
        "metric": method.metric,
        "seed": method.seed,
        "train_points_per_list": method.train_points_per_list,
        "rows": n,
        "dim": vectors.shape[1],
        "part_rows": PART_ROWS,
        "rows_digest": digest,
    }


def add_part(trained: str, sources: list[tuple[str, int, int]] | np.ndarray, first_id: int, out: str) -> int:
    """One task: a copy of the trained, empty index, plus the part's rows with ids first_id…; written atomically to
    `out`. `sources` are (.npy file, first row, rows) mapped here, or the rows themselves."""
    index = faiss.read_index(trained)
    next_id = first_id
    if isinstance(sources, list):
        blocks = (
            np.load(file, mmap_mode="r")[first + a : first + min(a + ADD_BLOCK_ROWS, rows)]
            for file, first, rows in sources
            for a in range(0, rows, ADD_BLOCK_ROWS)
        )
    else:
        blocks = (sources[a : a + ADD_BLOCK_ROWS] for a in range(0, len(sources), ADD_BLOCK_ROWS))
    for block in blocks:
        block = as_float32_c(np.asarray(block))
        index.add_with_ids(block, np.arange(next_id, next_id + len(block), dtype=np.int64))
        next_id += len(block)
    atomic_write_bytes(Path(out), faiss.serialize_index(index).tobytes())
    return next_id - first_id


def add_part_in_process(args: tuple) -> int:
    """A task in a process of its own (local or a Ray worker): one FAISS thread, so tasks side by side do not fight."""
    faiss.omp_set_num_threads(1)
    return add_part(*args)


class OnDiskIVF(MmapRerankIndex):
    """IVF-PQ (or IVF-SQ/Flat) built part by part out of core, lists on disk, exact re-ranking from the shards."""

    kind = "faiss-ondisk"
    max_train_rows = MAX_TRAIN_ROWS

    def __init__(
        self,
        name: str,
        factory: str,
        metric: str = "ip",
        search_params: dict[str, Any] | None = None,
        seed: int = 0,
        train_points_per_list: int = MAX_POINTS_PER_CENTROID,
        ef_construction: int | None = None,
    ):
        super().__init__(name, factory, metric, search_params, seed, train_points_per_list, ef_construction)
        self.workdir: Path | None = None  # where parts are kept across runs; None: a temporary folder
        # runs the add-part jobs elsewhere (Ray tasks: lookalike.distributed.index); None: local processes
        self.part_runner: Callable[[Callable[[tuple], int], list[tuple]], None] | None = None
        self.workers = max(1, min(LOCAL_WORKERS, os.cpu_count() or 1))  # local processes adding parts at once
        self.parts_added = 0  # parts this build added (the rest were found finished)
        self._lists: Path | None = None  # the merged lists file
        self.parts: list[Path] = []  # the part files, in id order
        self._temporary: Path | None = None  # a work folder of this build's own, removed once saved

    def _build(self, vectors: np.ndarray) -> BuildStats:
        view = vectors if isinstance(vectors, ShardedArray) else ShardedArray([vectors], vectors.shape[1])
        temporary = self.workdir is None
        work = Path(tempfile.mkdtemp(prefix="lookalike-ondisk-")) if temporary else Path(self.workdir)
        key = build_key(self, view)
        _claim(work, key)
        trained_path = work / TRAINED_FILE
        t = time.perf_counter()
        if trained_path.is_file():
            index, train_n = faiss.read_index(str(trained_path)), _read(work)["train_rows"]
        else:
            index, train_n, _ = self._trained_index(view)
            if faiss.try_extract_index_ivf(index) is None:
                raise LookalikeError(f"ivfpq-ondisk needs an IVF factory (e.g. 'IVF1024,PQ64'), not {self.factory!r}")
            atomic_write_bytes(trained_path, faiss.serialize_index(index).tobytes())
            atomic_write_json(work / BUILD_FILE, {**_read(work), "train_rows": train_n})
        t_train = time.perf_counter() - t
        # the parts, then the merged lists beside them: every row's code and id, twice
        entry = faiss.extract_index_ivf(index).code_size + 8
        require_free_disk(work, 2 * len(view) * entry, f"building {self.name} over {len(view)} rows")
        t = time.perf_counter()
        parts = self._add_parts(work, view)
        lists = work / LISTS_FILE
        lists.unlink(missing_ok=True)  # a merge cut short is redone
        merge_ondisk(index, [str(p) for p in parts], str(lists))
        _no_prefetch_threads(index)
        t_add = time.perf_counter() - t
        self.index = index
        self._lists, self.parts = lists, parts
        self._memory = None
        self._apply(self._search_params)
        self.vectors = view
        self._temporary = work if temporary else None
        if temporary:  # a method built for one experiment and never saved leaves nothing behind
            weakref.finalize(self, shutil.rmtree, work, True)
        return BuildStats(round(t_train, 4), round(t_add, 4), int(train_n))

    def _add_parts(self, work: Path, view: ShardedArray) -> list[Path]:
        n = len(view)
        spans = [(a, min(a + PART_ROWS, n)) for a in range(0, n, PART_ROWS)] or [(0, 0)]
        paths = [work / part_file(i) for i in range(len(spans))]
        todo = [(i, a, b) for i, (a, b) in enumerate(spans) if not paths[i].is_file()]
        trained = str(work / TRAINED_FILE)
        jobs = [
            (trained, view.sources(a, b) or as_float32_c(np.asarray(view[a:b])), a, str(paths[i])) for i, a, b in todo
        ]
        self.parts_added = len(jobs)
        if not jobs:
            return paths
        if self.part_runner is not None:
            self.part_runner(add_part_in_process, jobs)
        elif self.workers > 1 and len(jobs) > 1 and all(isinstance(job[1], list) for job in jobs):
            context = multiprocessing.get_context("spawn")  # no fork of a process holding FAISS's threads
            with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
                list(pool.map(add_part_in_process, jobs))
        else:
            for job in jobs:
                add_part(*job)
        return paths

    def apply_update(self, keep: np.ndarray, vectors: np.ndarray) -> bool:
        return False  # lists on disk are rebuilt, not edited: the update marks the index stale

    def memory_bytes(self) -> int:
        """What the index holds in RAM (quantiser, codebooks, list offsets, ids); its lists and the exact rows are
        file-backed (`file_bytes`), read through the page cache."""
        return super(MmapRerankIndex, self).memory_bytes()

    def file_bytes(self) -> int:
        """Bytes of the memory-mapped lists file (the exact rows are the gallery's own shards)."""
        return self._lists.stat().st_size if self._lists is not None and self._lists.is_file() else 0

    def drop_page_cache(self) -> bool:
        """Evict the lists file and the shards the rows are re-ranked from, so the next search reads both from disk
        (`cold_single_ms`)."""
        super().drop_page_cache()  # the shards, when the rows are mapped
        if self._lists is not None:
            invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(self.index).invlists)
            unmap_pages(int(invlists.ptr), int(invlists.totsize))
            evict_file(self._lists)
        return True

    def _save(self, folder: Path) -> None:
        """The merged lists and the parts go next to the index: moved when they are this build's own files, copied
        when saving a loaded index elsewhere."""
        (folder / PARTS_DIR).mkdir(exist_ok=True)
        owned = self._temporary is not None or (self.workdir is not None and self._lists.parent == Path(self.workdir))
        move = os.replace if owned else shutil.copyfile
        for part in self.parts:
            move(part, folder / PARTS_DIR / part.name)
        self.parts = [folder / PARTS_DIR / part.name for part in self.parts]
        move(self._lists, folder / LISTS_FILE)
        _rename_lists(self.index, folder / LISTS_FILE)  # the mapping survives a move; the saved index names the file
        self._lists = folder / LISTS_FILE
        super()._save(folder)
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    @classmethod
    def _read_index(cls, folder: Path) -> faiss.Index:
        index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR)
        _no_prefetch_threads(index)
        return index

    @classmethod
    def _load(cls, folder: Path, info: dict[str, Any], vectors: np.ndarray) -> OnDiskIVF:
        method = super()._load(folder, info, vectors)
        method._lists = Path(folder) / LISTS_FILE
        method.parts = sorted((Path(folder) / PARTS_DIR).glob("part-*.index"))
        return method


def _no_prefetch_threads(index: faiss.Index) -> None:
    """FAISS's on-disk lists prefetch with 32 threads of their own by default: 256 MiB of stacks per search for pages
    the page cache already holds. Searches read the mapping directly instead."""
    faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).prefetch_nthread = 0


def _rename_lists(index: faiss.Index, path: Path) -> None:
    """Point the on-disk lists at their new file name (the mapping survives the rename), so the saved index names
    it."""
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    invlists.filename = str(path)


def _read(work: Path) -> dict[str, Any]:
    try:
        return json.loads((work / BUILD_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _claim(work: Path, key: dict[str, Any]) -> None:
    """Make `work` hold this build's files: a folder of another build (other parameters, another gallery) is
    emptied first, and a part file written for another build is refused by name."""
    found = _read(work)
    if found.get("key") != key:
        if work.exists() and any(work.iterdir()):
            log.info("%s held the parts of another build; starting afresh", work)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(work / BUILD_FILE, {"key": key})
        return
    trained = work / TRAINED_FILE
    if trained.is_file():
        centroids = _centroids(faiss.read_index(str(trained)))
        for part in sorted(work.glob("part-*.index")):
            index = faiss.read_index(str(part), faiss.IO_FLAG_MMAP)
            if index.d != key["dim"] or not np.array_equal(_centroids(index), centroids):
                raise LookalikeError(
                    f"{part} is not a part of this build (it was trained elsewhere: another gallery's or another"
                    f" index's); delete {work} and run `lookalike index` again"
                )


def _centroids(index: faiss.Index) -> np.ndarray:
    """The coarse centroids: two parts of one build share them exactly."""
    quantizer = faiss.extract_index_ivf(index).quantizer
    return quantizer.reconstruct_n(0, quantizer.ntotal)
