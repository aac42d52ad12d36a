"""Helpers shared by the benchmark scripts: arguments, the environment header, tables, docs/benchmarks.md.

Every script prints its tables and writes them, with the machine, thread counts and library
versions, as one `## <title>` section of docs/benchmarks.md. `write_section` replaces only that
section, so scripts written by different people never overwrite each other's figures.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from lookalike import runtime
from lookalike.data.vectors import COMMON_WEIGHT, GeneratorParams

# One generator and one IVF training size for every section whose figures are compared with each
# other (the 1M goal is checked by both bench_scale and bench_tradeoff): each prints them.
GENERATOR = GeneratorParams()
# k-means points per IVF list at 1M: FAISS's floor is 39; 256 (the library default) takes ~30 min for 4000 lists on 2
# cores
TRAIN_POINTS_PER_LIST = 64

# The data set whose scores bunch as real CNN embeddings' do (all pairs above ~0.9), measured beside the clustered one:
# clustered generated data flatters every method whose error is absolute (8-bit codes, exact-lowp's bound).
BUNCHED_LABEL = "GENERATED-bunched"
TARGETS = (0.90, 0.95, 0.99)  # recall@10 targets at which "where each method loses" is judged
SLOWER_THAN_BRUTE = 1.1  # an exact method more than 10% slower than brute loses to it (issue 22)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
DOC_HEADER = """# Benchmarks

Figures measured by the scripts in `benchmarks/` (one `## section` per script or topic; each
script rewrites only its own sections). Run them all with `make bench` (or
`.venv/bin/python benchmarks/run_all.py`; `--quick` for a fast smoke run), or one script with
`.venv/bin/python benchmarks/bench_<name>.py`.

Unless a section says otherwise, figures are medians, and every comparison (naive against
pipeline, method against method, figure against roofline) is measured side by side in one run
of one script, on a shared 2-core machine: other work on the machine shifts the absolute
figures between runs, so the ratios are what to read. Each section names its machine, thread
counts and library versions, and the weights and data behind it (generated data and random
weights are said to be so).
"""


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark script takes; scripts add their own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a fast smoke run with tiny sizes; its figures are not meaningful, so it leaves the docs alone",
    )
    p.add_argument("--threads", type=int, default=None, help="torch/FAISS/BLAS threads (default: one per core)")
    p.add_argument("--no-write", action="store_true", help=f"print only; leave {DOC.relative_to(ROOT)} alone")
    return p


def should_write(args: argparse.Namespace) -> bool:
    """Write docs/benchmarks.md only from full runs: a --quick smoke run must not replace real figures."""
    return not (args.no_write or args.quick)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; it also reads well on a console."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


@contextmanager
def load_watch() -> Iterator[dict]:
    """Record the 1-minute load average before and after a run, so a reader can see a shared machine."""
    info: dict = {"load_before": os.getloadavg()[0]}
    try:
        yield info
    finally:
        info["load_after"] = os.getloadavg()[0]


def goal_mark(met: bool, load: dict | None) -> str:
    """A goal's mark: ✓ or ✗ missed, and a ✓ measured on a busy machine (load over 1.0 at the start) says it cannot
    count, as environment_markdown's line under the table does."""
    if not met:
        return "✗ missed"
    return "✓" if not load or load["load_before"] <= 1.0 else "✓ not valid: busy machine"


def environment_markdown(load: dict | None = None, quick: bool = False) -> str:
    """A few lines naming the machine, the threads and the library versions behind a section's figures."""
    env = runtime.environment()
    m, threads, versions = env["machine"], env["threads"], env["versions"]
    lines = [
        (
            f"- Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {m['cpu']}, {m['cores']} cores,"
            f" {m['memory_gib']} GiB RAM, torch CPU capability {m['cpu_capability']}, bf16 on CPU:"
            f" {'yes' if m['bf16_cpu'] else 'no'}, CUDA: {m['cuda'] or 'none'}; numpy BLAS {m['numpy_blas']}."
        ),
        "- Threads: " + ", ".join(f"{k} {v}" for k, v in threads.items()) + ".",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
    ]
    if load:
        # The start decides: the run itself keeps every core busy, so the load after it is always high.
        busy = load["load_before"] > 1.0
        lines.append(
            f"- 1-minute load average {load['load_before']:.1f} before and {load['load_after']:.1f} after the run"
            + (
                " — above 1.0 at the start: the machine was busy, so these figures are **not valid for a goal**; rerun"
                " them on a quiet machine."
                if busy
                else (
                    " (under 1.0 at the start: a quiet machine, valid for the goals; the load after includes this run's"
                    " own threads)."
                )
            )
        )
    if quick:
        lines.append("- **`--quick` smoke run: sizes are tiny and these figures are not meaningful.**")
    return "\n".join(lines)


def wait_for_quiet(threshold: float = 0.6, timeout_s: float = 300.0) -> float:
    """Wait until the 1-minute load average is under `threshold` (or `timeout_s` passed); return it.

    Scripts that generate their data first call this before timing, so the load they made
    themselves has decayed when the measured part starts.
    """
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def write_section(title: str, markdown: str, path: Path = DOC, retire: Sequence[str] = ()) -> Path:
    """Replace the `## title` section of docs/benchmarks.md with `markdown`, or append it.

    A section runs from its heading to the next `## ` heading. The file is locked while it is
    rewritten and replaced atomically, so scripts run side by side never lose each other's sections.
    Sections named in `retire` (an earlier title of this one) are removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    body = f"## {title}\n\n{markdown.strip()}\n"
    lock_file = (
        Path(tempfile.gettempdir()) / f"lookalike-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}.lock"
    )
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.is_file() else DOC_HEADER
        for old in retire:
            text = re.compile(rf"^## {re.escape(old)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S).sub("", text)
        pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.M | re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: body + "\n", text, count=1).rstrip("\n") + "\n"
        else:
            text = text.rstrip("\n") + "\n\n" + body
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def generator_line(params: GeneratorParams, seed: int, train_points_per_list: int | None) -> str:
    """The generator parameters and the IVF training size behind a section's figures, as one Markdown line."""
    from dataclasses import asdict

    from lookalike.search.faiss_index import MAX_POINTS_PER_CENTROID

    fields = ", ".join(f"{k}={v}" for k, v in asdict(params).items())
    train = train_points_per_list or MAX_POINTS_PER_CENTROID
    return (
        f"- Generated data: `GeneratorParams({fields})`, seed {seed}. IVF k-means trained on at most **{train} points"
        " per list**"
        + (
            " (the library default)"
            if train == MAX_POINTS_PER_CENTROID
            else " (not the library default: set for this benchmark)"
        )
        + "."
    )


def bunched_line(params: GeneratorParams, seed: int) -> str:
    """How the GENERATED-bunched data set was made, as one Markdown line."""
    return (
        f"- {BUNCHED_LABEL} data: `make_bunched_embeddings` (`lookalike.data.vectors`): the same mixture"
        f" (`GeneratorParams` above, seed {seed}) moved onto one common non-negative direction of weight"
        f" {COMMON_WEIGHT}, so nearly every pair scores above 0.9 (1st percentile ≈ 0.92), as a random-weight CNN's"
        " embeddings of one kind of photograph do; the clusters, and so the neighbours, are the mixture's."
    )


def write_bunched_gallery(path: Path, n: int, d: int, val: int, seed: int = 0, overwrite: bool = True):
    """A GENERATED-bunched gallery of `n` rows, the last `val` of them the held-out val split (as
    `write_generated_gallery` lays out the clustered one)."""
    from dataclasses import asdict

    import numpy as np

    from lookalike.data.vectors import bunched_cluster_model
    from lookalike.gallery.generated import Segment, generated_model_block, write_array_gallery

    model = bunched_cluster_model(d, seed, **asdict(GENERATOR))
    embeddings, clusters = model.sample(n, seed + 1)
    segment = Segment("generated", 0, n, True, model.how["method"], model.describe())
    return write_array_gallery(
        path,
        embeddings,
        np.asarray(model.labels, dtype=object)[clusters],
        np.where(np.arange(n) < n - val, "train", "val"),
        segments=[segment],
        model=generated_model_block(d, seed),
        data={
            "kind": "generated",
            "generator": model.describe(),
            "summary": f"{BUNCHED_LABEL} embeddings ({model.n_clusters} clusters, seed {seed}; no images)",
        },
        overwrite=overwrite,
    )


def where_methods_lose(
    curves: dict[str, list[tuple[float, float, float]]],
    brute_ms: tuple[float, float],
    exact: Sequence[str] = (),
    targets: Sequence[float] = TARGETS,
    baseline: str = "brute",
    swept: bool = True,
) -> list[str]:
    """One Markdown line per curve saying where it loses on one data set.

    `curves` maps a curve's name to its points (recall@10, single-query ms, batched ms per query) in
    sweep order; `brute_ms` is the exact `baseline`'s (single, batched) in the same run (brute force,
    or flat where a script times no brute). An exact curve loses where it is more than
    SLOWER_THAN_BRUTE× the baseline's time; an approximate one where it caps below a target, or where
    the first point reaching a target is slower than the baseline itself. `swept` False: each curve is
    one setting (a default), so a recall under a target is that setting's, not the family's ceiling.
    """
    single_brute, batch_brute = brute_ms
    lines = []
    for name, points in curves.items():
        if not points:
            continue
        losses = []
        if name in exact:
            recall, single, batch = points[-1]
            ratio_single, ratio_batch = single / single_brute, batch / batch_brute
            # fp32 rounding differs between BLAS libraries: on bunched scores it flips a few near-ties at rank k
            # (~0.1% of ids measured, flat against brute), which is no loss; a real one is far below this
            if recall < 0.99:
                losses.append(f"not exact here (recall {recall:.4f})")
            if max(ratio_single, ratio_batch) > SLOWER_THAN_BRUTE:
                losses.append(
                    f"slower than {baseline} by more than {100 * (SLOWER_THAN_BRUTE - 1):.0f}%: one query"
                    f" {ratio_single:.2f}×, batched {ratio_batch:.2f}× ✗"
                )
            verdict = "; ".join(losses) or (
                f"within {100 * (SLOWER_THAN_BRUTE - 1):.0f}% of {baseline} or faster (one query {ratio_single:.2f}×,"
                f" batched {ratio_batch:.2f}×) ✓"
            )
            lines.append(f"- **{name}** (exact): {verdict}")
            continue
        best = max(p[0] for p in points)
        missed = [t for t in targets if best < t]
        if missed:
            targets_missed = ", ".join(f"{t:.2f}" for t in missed)
            losses.append(
                f"caps at recall@10 **{best:.3f}**: never reaches {targets_missed}"
                if swept
                else f"recall@10 **{best:.3f}** at this setting: under {targets_missed}"
            )
        reaching: dict[int, list[float]] = {}  # the first point reaching each target, with the targets it reaches
        for t in targets:
            first = next((i for i, p in enumerate(points) if p[0] >= t), None)
            if first is not None:
                reaching.setdefault(first, []).append(t)
        for i, reached in reaching.items():
            _, single, batch = points[i]
            slow = [f"one query {single:.3f} ms against {single_brute:.3f}"] if single > single_brute else []
            slow += [f"batched {batch:.4f} ms/query against {batch_brute:.4f}"] if batch > batch_brute else []
            if slow:
                losses.append(
                    f"at {', '.join(f'{t:.2f}' for t in reached)}: slower than {baseline} ({'; '.join(slow)})"
                )
        lines.append(
            f"- **{name}**: "
            + (
                "; ".join(losses)
                if losses
                else f"no loss: reaches every target ({best:.3f} at most), faster than {baseline}"
            )
        )
    return lines
