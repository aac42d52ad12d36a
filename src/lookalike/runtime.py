"""The process's compute environment: thread counts, devices, library versions, peak memory.

Timings are only comparable when the thread counts behind them are known, so every
experiment calls `set_threads` once and records `environment()` beside its figures.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
from collections.abc import Iterator
from functools import lru_cache
from importlib import metadata

import numpy as np

TRACKED_PACKAGES = (
    "lookalike",
    "torch",
    "torchvision",
    "open_clip_torch",
    "faiss-cpu",
    "openvino",
    "numpy",
    "pillow",
    "pyarrow",
)


def default_threads() -> int:
    """One thread per usable core: oversubscribing 2 cores makes every timing noisy."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


# FAISS's process-wide knobs, set here and nowhere else, and recorded beside every timing (environment()).
FAISS_SETTINGS = {
    # Exact FAISS search multiplies tiles of 4096 queries × this many database vectors. FAISS's default of
    # 1024 makes many short OpenMP regions; on a shared 2-core machine each waits for a descheduled thread,
    # and flat on 1000 × 100k × 512 ran at 2.0× the sgemm roofline with 2 threads against 1.2× with 16384
    # (benchmarks/bench_search.py). The tile is then 256 MiB, brute's score block size.
    "distance_compute_blas_database_bs": 16384,
    # Below this many queries FAISS scans without BLAS. Sending single queries to BLAS instead (a
    # threshold of 1) was measured no faster on 100k × 512 (an sgemm with one row is not a fast
    # matrix-vector product), so FAISS's default stays, deliberately; bench_search.py times both.
    "distance_compute_blas_threshold": 20,
}


def configure_faiss(settings: dict[str, int] | None = None) -> dict[str, int]:
    """Apply FAISS's global settings (FAISS_SETTINGS unless given) and return the values now in force."""
    import faiss

    for name, value in (settings or FAISS_SETTINGS).items():
        setattr(faiss.cvar, name, value)
    return faiss_settings()


def faiss_settings() -> dict[str, int]:
    import faiss

    return {name: int(getattr(faiss.cvar, name)) for name in FAISS_SETTINGS}


def set_threads(n: int | None = None) -> int:
    """Pin torch, FAISS (OpenMP) and BLAS to `n` threads, apply FAISS's settings, and return the count used."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    n = n or default_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(n)
    configure_faiss()
    return n


def pin_thread(n: int) -> None:
    """Apply `n` threads in the calling thread too: OpenMP settings (FAISS's) are per thread.

    A thread that never called omp_set_num_threads starts from the OpenMP default (OMP_NUM_THREADS
    or one per core), whatever the main thread set; so a worker thread must set it itself.
    torch re-applies its own global setting in each new thread, and BLAS pools are process-wide.
    """
    import faiss
    import torch

    faiss.omp_set_num_threads(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch at `n` threads in the calling thread for the block (None: as it is), restored after.

    torch's OpenMP threads are per calling thread once started (see `pin_thread`), so other threads keep theirs.
    """
    import torch

    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def search_threads() -> int:
    """The thread count lookalike set for FAISS (`set_threads`): libraries with their own thread pools
    (usearch, hnswlib) are given it, so every search family runs on the same cores."""
    import faiss

    return max(1, int(faiss.omp_get_max_threads()))


def thread_counts() -> dict[str, int]:
    """The thread counts in force in the calling thread (call it where the work runs)."""
    import faiss
    import torch
    from threadpoolctl import threadpool_info

    blas = {info["internal_api"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    return {
        "torch": torch.get_num_threads(),
        "faiss_omp": faiss.omp_get_max_threads(),
        **{f"blas_{k}": v for k, v in blas.items()},
    }


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        from .errors import LookalikeError

        raise LookalikeError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return requested


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_supported(device: str) -> bool:
    """bf16 only pays off with hardware support (AVX512-BF16/AMX on CPU, Ampere+ on CUDA)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, object]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": default_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_cpu": bf16_supported("cpu"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "numpy_blas": _numpy_blas(),
    }


def _numpy_blas() -> str:
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info["user_api"] == "blas" and "numpy" in info.get("filepath", ""):
            return f"{info['internal_api']} {info.get('version')} ({info.get('architecture')})"
    return "unknown"


def environment() -> dict[str, object]:
    """Everything a reader needs to judge a timing: machine, threads, versions."""
    return {
        "machine": machine(),
        "threads": thread_counts(),
        "faiss_settings": faiss_settings(),
        "versions": versions(),
    }


def as_float32_c(x: np.ndarray) -> np.ndarray:
    """FAISS and BLAS want C-contiguous float32; convert only when needed (memmaps stay zero-copy)."""
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]:
        return x
    return np.ascontiguousarray(x, dtype=np.float32)  # a ShardedArray of several shards is gathered here
