"""Resident memory of one phase of an experiment, sampled from /proc: anonymous and file-backed pages apart.

Why apart: an out-of-core index reads its lists and the gallery's shards through memory maps.
Those pages count in the resident set, but they are the page cache's: the kernel drops them
under pressure and reads them again. The memory a machine must really have is the anonymous
part (heap, arrays, FAISS's structures). `ru_maxrss` mixes the two and never goes down, so each
phase (build, search, …) is watched by a sampler thread of its own, which reads RssAnon and
RssFile from /proc/self/status, and RssAnon of every worker process the phase starts (the build's
part tasks; processes already running when it began, such as a Ray cluster's, are not its own).
A child with this process's own command line is a fork that has not run its program yet (a
subprocess such as platform's `uname -p`): it shares this process's pages and shows them as its
own, so it is not counted.
Linux only: elsewhere every figure reads 0.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

SAMPLE_SECONDS = 0.05  # a phase shorter than this is sampled at its start and its end only


@dataclass(frozen=True)
class Resident:
    """Peak resident bytes over one phase: this process's anonymous and file-backed pages (each its own peak), and
    the largest anonymous peak of any child process."""

    anon_bytes: int
    file_bytes: int
    workers_anon_bytes: int = 0


def status_bytes(pid: int | str = "self") -> tuple[int, int]:
    """(RssAnon, RssFile) of a process in bytes, from /proc/<pid>/status; (0, 0) when it is gone or there is no
    /proc."""
    found = {"RssAnon:": 0, "RssFile:": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, *value = line.split()
                if name in found:
                    found[name] = int(value[0]) * 1024  # "RssAnon:   1234 kB"
    except OSError:
        pass
    return found["RssAnon:"], found["RssFile:"]


class ResidentSampler:
    """`with ResidentSampler() as sampler: …` then `sampler.peak`: the phase's `Resident`, sampled every
    SAMPLE_SECONDS and once at each end."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval = interval
        self._anon = self._file = self._workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resident-sampler", daemon=True)
        self._process = psutil.Process()
        self._command = self._process.cmdline()
        self._before: set[int] = set()  # children running before the phase began

    def __enter__(self) -> ResidentSampler:
        try:
            self._before = {child.pid for child in self._process.children(recursive=True)}
        except psutil.Error:
            self._before = set()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak(self) -> Resident:
        return Resident(self._anon, self._file, self._workers)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        anon, file = status_bytes()
        self._anon, self._file = max(self._anon, anon), max(self._file, file)
        try:
            children = self._process.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            if child.pid in self._before:
                continue
            try:
                if child.cmdline() == self._command:
                    continue
            except psutil.Error:
                continue
            self._workers = max(self._workers, status_bytes(child.pid)[0])


def available_memory_bytes() -> int:
    """What the kernel could give this process without swapping (MemAvailable: free memory plus reclaimable page
    cache)."""
    return int(psutil.virtual_memory().available)
