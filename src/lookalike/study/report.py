"""`lookalike report`: bench, tradeoff and scale for one or more galleries, as one Markdown report.

The report answers the study's two questions from the numbers it has just measured:
(i) how much accuracy approximate search loses against brute force (tradeoff: the fastest
setting reaching each recall target, its speed-up and its label precision beside exact
search's), and (ii) how the end-to-end latency profile shifts between the smallest and the
largest scale size (100k → 1M by default). It names, for every gallery, the weights
(pretrained, random or a file), the data (real or generated, and any synthetic extension),
and the library versions and thread counts behind the figures, and how many held-out queries
have a copy in the database (study.leakage), which would inflate precision@k.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .. import runtime
from ..gallery import Gallery, atomic_write_bytes, atomic_write_json, open_gallery
from .bench import BenchResult, combined_table, run_bench, write_bench
from .core import not_real_banner
from .leakage import Leakage, check_leakage, leakage_markdown
from .metrics import MAP_DEFINITION
from .scale import ScaleConfig, ScaleResult, format_size, run_scale, write_scale
from .tradeoff import RECALL_TARGETS, TradeoffConfig, TradeoffResult, run_tradeoff, write_tradeoff

DEFAULT_SIZES = (100_000, 1_000_000)


@dataclass(frozen=True)
class ReportConfig:
    galleries: tuple[str, ...]
    out: Path
    sizes: tuple[int, ...] = DEFAULT_SIZES
    k: int = 10
    target_recall: float = 0.95  # the scale experiment tunes approximate methods to this recall


@dataclass(frozen=True)
class GalleryReport:
    """Everything measured on one gallery, and where its files were written (relative to the report folder)."""

    folder: str
    bench: BenchResult
    tradeoff: TradeoffResult
    scale: ScaleResult
    leakage: Leakage


# --- what produced the figures ---


def weights_line(gallery: Gallery) -> str:
    return gallery.manifest.weights.label()


def data_line(gallery: Gallery, scale: ScaleResult) -> str:
    base = gallery.manifest.data.describe()
    if scale.extension:
        synth = ", ".join(format_size(c.size) for c in scale.compositions if c.synthetic)
        base += (
            f"; the scale sizes {synth} add SYNTHETIC embeddings ({scale.extension['rows']} rows from a k-means +"
            " per-cluster PPCA model of the real ones)"
        )
    if scale.extra_source:
        base += f"; extra real embeddings from {scale.extra_source}"
    return base


# --- the generated summary ---


def accuracy_summary(report: GalleryReport) -> list[str]:
    """Question (i), from the tradeoff points: the fastest approximate setting per recall target against brute force."""
    t = report.tradeoff
    brute = next((p for p in t.points if p.exact and p.curve == "brute"), None)
    approx = [p for p in t.points if not p.exact]
    if brute is None or not approx:
        return [
            f"- {t.model}: no approximate index could be measured on {t.n_database} vectors"
            f" ({'; '.join(t.skipped) or 'none planned'})."
        ]
    lines = []
    for target in RECALL_TARGETS:
        reached = [p for p in approx if p.recall >= target]
        if not reached:
            best = max(approx, key=lambda p: p.recall)
            lines.append(
                f"- {t.model}, recall@{t.k} ≥ {target}: no approximate setting reached it; the best was"
                f" {best.setting()} at {best.recall:.4f}."
            )
            continue
        p = min(reached, key=lambda p: p.single_ms)
        lines.append(
            f"- {t.model}, recall@{t.k} ≥ {target}: {p.setting()} loses {100 * (1 - p.recall):.1f}% of the exact"
            f" top-{t.k} (recall {p.recall:.4f}) and runs at {p.single_ms:.3f} ms/query single,"
            f" {_ratio(brute.single_ms, p.single_ms)} brute force's {brute.single_ms:.3f} ms; label precision@{t.k}"
            f" {p.precision:.4f} vs {brute.precision:.4f} exact ({_signed(p.precision - brute.precision)}), memory"
            f" {p.memory_bytes / 2**20:.1f} MiB."
        )
    return lines


def scale_summary(report: GalleryReport) -> list[str]:
    """Question (ii), from the scale points: how each method's share of the end-to-end latency moves with size."""
    s = report.scale
    sizes = sorted({p.size for p in s.points})
    if len(sizes) < 2:
        return (
            [f"- {s.model}: only one size was measured ({format_size(sizes[0])}); give --sizes with two or more."]
            if sizes
            else []
        )
    lo, hi = sizes[0], sizes[-1]
    synthetic = [format_size(c.size) for c in s.compositions if c.synthetic and c.size in (lo, hi)]
    extract = s.extraction.get("single_image_ms")
    head = f"- {s.model}, {format_size(lo)} → {format_size(hi)} rows" + (
        f" (⚠ {', '.join(synthetic)} with synthetic extension)" if synthetic else ""
    )
    head += (
        f"; extraction is a constant {extract:.2f} ms per query image (one image, batch 1):"
        if extract is not None
        else "; no single-image extraction time recorded (generated embeddings or an older gallery):"
    )
    lines = [head]
    for method in dict.fromkeys(p.method for p in s.points):
        a = next((p for p in s.points if p.method == method and p.size == lo), None)
        b = next((p for p in s.points if p.method == method and p.size == hi), None)
        if a is None or b is None:
            continue
        line = (
            f"  - {method}: search {a.latency.single_ms:.3f} → {b.latency.single_ms:.3f} ms/query single"
            f" ({b.latency.single_ms / a.latency.single_ms:.1f}× for {hi / lo:.0f}× the rows), batched"
            f" {a.latency.batch_ms:.4f} → {b.latency.batch_ms:.4f}"
        )
        if extract is not None:
            line += f"; search share of end-to-end {_share(a)} → {_share(b)}"
        if a.params.get("nprobe") is not None:
            line += (
                f"; nprobe {a.params['nprobe']} → {b.params['nprobe']} tuned for recall@{s.config.k} ≥"
                f" {s.config.target_recall} on validation queries (test recall {a.recall:.3f}, {b.recall:.3f})"
            )
        lines.append(line + ".")
    return lines


def _share(p) -> str:
    return f"{100 * p.latency.single_ms / p.end_to_end_single_ms:.1f}%"


def _ratio(reference: float, value: float) -> str:
    if value <= 0 or not math.isfinite(reference / value):
        return "n/a vs"
    r = reference / value
    return f"{r:.1f}× faster than" if r >= 1 else f"{1 / r:.1f}× slower than"


def _signed(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.4f}"


# --- running and writing ---


def folder_names(galleries: list[Gallery]) -> list[str]:
    """One sub-folder per gallery, named after its folder and model; unique even for equal names."""
    names, seen = [], set()
    for i, g in enumerate(galleries):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{g.path.name}-{g.model}") if g.path.name != g.model else g.model
        name = name if name not in seen else f"{name}-{i}"
        seen.add(name)
        names.append(name)
    return names


def run_report(config: ReportConfig, progress=print) -> list[GalleryReport]:
    galleries = [open_gallery(path) for path in config.galleries]  # all open before hours of work
    reports = []
    for gallery, name in zip(galleries, folder_names(galleries)):
        folder = config.out / name
        progress(f"== {name}: {gallery.provenance()}")
        progress("leakage …")
        leakage = check_leakage(gallery)
        progress("bench …")
        bench = run_bench(gallery, k=config.k)
        write_bench(bench, folder)
        progress("tradeoff …")
        tradeoff = run_tradeoff(gallery, TradeoffConfig(k=config.k))
        write_tradeoff(tradeoff, folder / "tradeoff")
        progress("scale …")
        scale = run_scale(
            gallery,
            ScaleConfig(
                sizes=config.sizes, k=config.k, target_recall=config.target_recall, work=str(folder / "scale" / "work")
            ),
            progress=progress,
        )
        write_scale(scale, folder / "scale")
        reports.append(GalleryReport(name, bench, tradeoff, scale, leakage))
    return reports


def report_markdown(
    reports: list[GalleryReport], config: ReportConfig, seconds: float, command: str = "lookalike report"
) -> str:
    env = runtime.environment()
    machine, threads, versions = env["machine"], env["threads"], env["versions"]
    all_real = all(r.bench.real and r.scale.fully_real for r in reports)
    lines = [
        "# lookalike report",
        "",
        (
            f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} in {seconds:.0f} s by `{command}`"
            f" on {machine['cpu']} ({machine['cores']} cores, {machine['memory_gib']} GiB RAM, CUDA:"
            f" {machine['cuda'] or 'none'})."
        ),
        "",
    ]
    if not all_real:
        lines += [
            not_real_banner(" for the galleries marked below"),
            "",
        ]
    lines += [
        "## What produced these figures",
        "",
        "| gallery | model | weights | data | images |",
        "|---|---|---|---|---:|",
    ]
    for r in reports:
        gallery = open_gallery(r.bench.gallery)
        lines.append(
            f"| `{r.bench.gallery}` | {r.bench.model} ({r.bench.dim}-d) | {weights_line(gallery)} |"
            f" {data_line(gallery, r.scale)} | {gallery.count} |"
        )
    lines += [
        "",
        "- Threads: " + ", ".join(f"{k} {v}" for k, v in threads.items()) + ".",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        (
            f"- k = {config.k}; scale sizes {', '.join(format_size(s) for s in config.sizes)}; approximate methods in"
            f" the scale section tuned to recall@{config.k} ≥ {config.target_recall}."
        ),
        f"- {MAP_DEFINITION}.",
        "",
        "## Summary",
        "",
        (
            "**(i) How much accuracy does approximate search lose against brute force?** The fastest measured setting"
            " per recall target (held-out queries):"
        ),
        "",
    ]
    for r in reports:
        lines += accuracy_summary(r)
    lines += [
        "",
        (
            "**(ii) How does the end-to-end latency profile (extraction + search, per query) shift from"
            f" {format_size(min(config.sizes))} to {format_size(max(config.sizes))}?**"
        ),
        "",
    ]
    for r in reports:
        lines += scale_summary(r)
    lines += ["", *leakage_markdown([r.leakage for r in reports])]
    lines += ["## Timing table (bench)", "", combined_table([r.bench for r in reports])]
    for r in reports:
        lines += [
            f"## {r.bench.model} — `{r.bench.gallery}`",
            "",
            "### Accuracy vs speed (tradeoff)",
            "",
            r.tradeoff.to_markdown(),
            f"![recall vs latency]({r.folder}/tradeoff/tradeoff.png)",
            "",
            r.scale.to_markdown(plot_name=f"{r.folder}/scale/scale.png", heading="###"),
        ]
    return "\n".join(lines) + "\n"


def report_json(reports: list[GalleryReport], config: ReportConfig) -> dict:
    return {
        "config": {
            "galleries": list(config.galleries),
            "sizes": list(config.sizes),
            "k": config.k,
            "target_recall": config.target_recall,
        },
        "environment": runtime.environment(),
        "galleries": [
            {
                "folder": r.folder,
                "gallery": r.bench.gallery,
                "provenance": r.bench.provenance,
                "real": r.bench.real and r.scale.fully_real,
                "synthetic_extension": r.scale.extension,
                "accuracy_summary": accuracy_summary(r),
                "scale_summary": scale_summary(r),
                "leakage": r.leakage.to_dict(),
                "files": {
                    name: f"{r.folder}/{rel}"
                    for name, rel in (
                        ("bench", "bench.md"),
                        ("tradeoff", "tradeoff/tradeoff.md"),
                        ("tradeoff_plot", "tradeoff/tradeoff.png"),
                        ("scale", "scale/scale.md"),
                        ("scale_plot", "scale/scale.png"),
                    )
                },
            }
            for r in reports
        ],
    }


def write_report(reports: list[GalleryReport], config: ReportConfig, seconds: float) -> Path:
    path = config.out / "report.md"
    atomic_write_bytes(path, report_markdown(reports, config, seconds).encode())
    atomic_write_json(config.out / "report.json", report_json(reports, config))
    return path
