"""Matplotlib figures for the experiments, drawn with the Agg backend (no display needed).

Figures are built from `matplotlib.figure.Figure` directly, never pyplot, so plotting neither
needs a GUI nor touches global state that a server or a test might share.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FIGSIZE_IN = (11.0, 6.5)
DPI = 110
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


class TradeoffPointLike(Protocol):
    family: str
    curve: str
    single_ms: float
    recall: float
    exact: bool
    pareto: bool


@dataclass(frozen=True)
class Pick:
    """A point marked on the trade-off plot beside the sweep: the tuner's choice, at its test recall."""

    label: str
    single_ms: float
    recall: float


@dataclass(frozen=True)
class SizeSeries:
    """One method's single-query latency at each gallery size, for the latency-vs-size plot."""

    label: str  # "resnet18 · ivf"
    method: str
    sizes: tuple[int, ...]
    single_ms: tuple[float, ...]
    synthetic: tuple[bool, ...]  # the database at that size holds synthetic rows


def save_figure(fig: Figure, path: Path) -> Path:
    """Write `fig` as PNG through a temporary name, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    tmp.replace(path)
    return path


def wrapped_title(*lines: str, width: int = 110) -> str:
    return "\n".join(textwrap.fill(line, width) for line in lines if line)


def plot_tradeoff(
    points: Sequence[TradeoffPointLike],
    title: str,
    path: Path,
    k: int,
    latency_label: str = "single-query latency, ms (median, log scale)",
    picks: Sequence[Pick] = (),
) -> Path:
    """recall@k against per-query latency: one line per swept curve (colour = family), exact methods as stars, the
    Pareto frontier in black, and `picks` (the tuner's choices) as red crosses."""
    fig = Figure(figsize=FIGSIZE_IN)
    ax = fig.add_subplot(1, 1, 1)
    families = list(dict.fromkeys(p.family for p in points if not p.exact))
    colours = {family: f"C{i % 10}" for i, family in enumerate(families)}
    for family in families:
        curves = list(dict.fromkeys(p.curve for p in points if p.family == family and not p.exact))
        styles = itertools.cycle(itertools.product(LINESTYLES, MARKERS))
        for curve in curves:
            line, marker = next(styles)
            pts = [
                p for p in points if p.curve == curve and not p.exact
            ]  # in sweep order: the curve follows nprobe/efSearch
            ax.plot(
                [p.single_ms for p in pts],
                [p.recall for p in pts],
                linestyle=line,
                marker=marker,
                markersize=4,
                color=colours[family],
                label=curve,
            )
    for i, p in enumerate(p for p in points if p.exact):
        ax.plot(
            [p.single_ms],
            [p.recall],
            marker="*",
            markersize=16,
            linestyle="none",
            color=f"C{(len(families) + i) % 10}",
            markeredgecolor="black",
            label=f"{p.curve} (exact)",
        )
    frontier = sorted((p for p in points if p.pareto), key=lambda p: p.single_ms)
    if frontier:
        ax.step(
            [p.single_ms for p in frontier],
            [p.recall for p in frontier],
            where="post",
            color="black",
            linewidth=1.2,
            alpha=0.7,
        )
        ax.plot(
            [p.single_ms for p in frontier],
            [p.recall for p in frontier],
            linestyle="none",
            marker="o",
            markersize=10,
            markerfacecolor="none",
            markeredgecolor="black",
            label="Pareto frontier",
        )
    for pick in picks:
        ax.plot(
            [pick.single_ms],
            [pick.recall],
            marker="X",
            markersize=14,
            linestyle="none",
            color="red",
            markeredgecolor="black",
            label=pick.label,
        )
    ax.set_xscale("log")
    ax.set_xlabel(latency_label)
    ax.set_ylabel(f"recall@{k} vs exact search")
    low = min([p.recall for p in points] + [pick.recall for pick in picks], default=0.0)
    ax.set_ylim(max(0.0, low - 0.05), 1.01)
    for target in (0.9, 0.95, 0.99):
        ax.axhline(target, color="grey", linewidth=0.6, linestyle=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_scale_latency(bars: Sequence[dict], title: str, path: Path) -> Path:
    """End-to-end per-query latency as stacked bars: extraction (grey) + search (method colour).

    One bar group per method, one bar per gallery size inside it; left panel single-query,
    right panel batched. Bars whose database holds synthetic rows are hatched and their size
    label says so. `bars`: dicts with method, size (label), extract_ms (one image alone, under the
    single panel), extract_batch_ms (per image in batches, under the batched panel; default
    extract_ms), single_ms, batch_ms, synthetic.
    """
    fig = Figure(figsize=(FIGSIZE_IN[0] + 2, FIGSIZE_IN[1]))
    methods = list(dict.fromkeys(b["method"] for b in bars))
    sizes = list(dict.fromkeys(b["size"] for b in bars))
    width = 0.8 / max(1, len(sizes))
    for panel, (key, label) in enumerate((("single_ms", "single query per call"), ("batch_ms", "batched, per query"))):
        extract_key = "extract_ms" if key == "single_ms" else "extract_batch_ms"
        ax = fig.add_subplot(1, 2, panel + 1)
        ticks, tick_labels = [], []
        for m, method in enumerate(methods):
            for s, size in enumerate(sizes):
                bar = next((b for b in bars if b["method"] == method and b["size"] == size), None)
                if bar is None:
                    continue
                x = m + (s - (len(sizes) - 1) / 2) * width
                hatch = "//" if bar["synthetic"] else None
                extract_ms = bar.get(extract_key, bar["extract_ms"])
                ax.bar(
                    x,
                    extract_ms,
                    width * 0.9,
                    color="0.75",
                    edgecolor="black",
                    linewidth=0.4,
                    hatch=hatch,
                    label="extraction (per image)" if (m, s) == (0, 0) else None,
                )
                ax.bar(
                    x,
                    bar[key],
                    width * 0.9,
                    bottom=extract_ms,
                    color=f"C{m % 10}",
                    edgecolor="black",
                    linewidth=0.4,
                    hatch=hatch,
                    label=f"{method} search" if s == 0 else None,
                )
                total = extract_ms + bar[key]
                ax.annotate(
                    f"{total:.0f}" if total >= 100 else f"{total:.3g}",
                    (x, total),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
                ticks.append(x)
                tick_labels.append(f"{size}{' ⚠synth' if bar['synthetic'] else ''}")
        ax.set_xticks(ticks)
        ax.set_xticklabels(tick_labels, rotation=60, fontsize=7)
        for m, method in enumerate(methods):
            ax.text(m, -0.28, method, transform=ax.get_xaxis_transform(), ha="center", fontsize=9, fontweight="bold")
        ax.set_ylabel("end-to-end ms per query (extraction + search)")
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.12)
        if panel == 0:
            fig.legend(
                *ax.get_legend_handles_labels(), loc="lower center", ncol=len(methods) + 1, fontsize=8, frameon=False
            )
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(bottom=0.3, top=0.85, wspace=0.25)
    return save_figure(fig, path)


def plot_latency_vs_size(series: Sequence[SizeSeries], title: str, path: Path) -> Path:
    """Single-query search latency against gallery size, log-log: colour = method, line style = model; hollow markers
    where the database holds synthetic rows (labelled in the legend)."""
    fig = Figure(figsize=FIGSIZE_IN)
    ax = fig.add_subplot(1, 1, 1)
    methods = list(dict.fromkeys(s.method for s in series))
    models = list(dict.fromkeys(s.label.split(" · ")[0] for s in series))
    for s in series:
        colour = f"C{methods.index(s.method) % 10}"
        style = LINESTYLES[models.index(s.label.split(" · ")[0]) % len(LINESTYLES)]
        marker = MARKERS[models.index(s.label.split(" · ")[0]) % len(MARKERS)]
        ax.plot(s.sizes, s.single_ms, linestyle=style, color=colour, label=s.label)
        for size, ms, synthetic in zip(s.sizes, s.single_ms, s.synthetic):
            ax.plot(
                [size],
                [ms],
                marker=marker,
                markersize=7,
                linestyle="none",
                color=colour,
                markerfacecolor="white" if synthetic else colour,
            )
    if any(any(s.synthetic) for s in series):
        ax.plot([], [], marker="o", linestyle="none", color="black", markerfacecolor="white", label="⚠ SYNTHETIC rows")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({size for s in series for size in s.sizes})
    ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.set_xlabel("gallery size (rows searched, log scale)")
    ax.set_ylabel("search ms per query, single (median, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
