"""The study's report: report.md (lookalike report's, from the study's own results) and report.html, one
self-contained file a person would rather look at than read.

Why one file: a student shares or archives the study as one thing that opens anywhere, offline; the
plots are inline PNGs (base64), the styles inline, no script and no request leaves the file. Its text
is built from the measured results, never written by hand: the answers to (i) and (ii) are
report.py's sentences (`accuracy_summary`, `scale_summary`), Table 1 is `combined_table`, the
leakage table is `leakage_markdown`'s, so report.md and report.html always say the same thing.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .. import runtime
from ..fileio import atomic_write_bytes, atomic_write_json
from ..gallery import open_gallery
from .bench import BenchResult, combined_table
from .core import NOT_REAL_TAG, not_real_banner
from .leakage import Leakage, leakage_markdown
from .plots import Pick, SizeSeries, plot_latency_vs_size, plot_tradeoff, wrapped_title
from .report import GalleryReport, ReportConfig, accuracy_summary, report_json, report_markdown, scale_summary
from .scale import ScaleResult, format_size
from .state import load_result
from .tradeoff import TradeoffResult
from .tune import TuneResult

if TYPE_CHECKING:
    from .pipeline import Study


@dataclass(frozen=True)
class ModelResults:
    """Everything the study measured for one model, read back from its result files."""

    model: str
    gallery: Path
    report: GalleryReport
    tune: TuneResult


def load_results(study: Study) -> list[ModelResults]:
    out, results = study.out, []
    for model in study.config.models:
        folder = out / model
        bench = load_result(BenchResult, folder / "bench.json")
        report = GalleryReport(
            model,
            replace(bench, gallery=str(study.gallery_path(model))),  # where it is now, should --out have moved
            load_result(TradeoffResult, folder / "tradeoff" / "tradeoff.json"),
            load_result(ScaleResult, folder / "scale" / "scale.json"),
            load_result(Leakage, folder / "leakage.json"),
        )
        results.append(
            ModelResults(
                model, study.gallery_path(model), report, load_result(TuneResult, folder / "tune" / "tune.json")
            )
        )
    return results


# --- what the numbers say ---


def tuner_pick(tune: TuneResult) -> Pick | None:
    if tune.chosen is None or tune.test_accuracy is None or tune.test_latency is None:
        return None
    c = tune.candidates[tune.chosen]
    setting = ", ".join(f"{k}={v}" for k, v in c.setting.items())
    return Pick(
        f"tuner's pick: {c.method}{' · ' + setting if setting else ''} (test queries)",
        tune.test_latency.single_ms,
        tune.test_accuracy.recall,
    )


def tuner_sentence(r: ModelResults) -> str:
    """The tuner's pick in one sentence, against brute force measured in the same sweep."""
    t, k = r.tune, r.tune.k
    if t.chosen is None or t.test_accuracy is None or t.test_latency is None:
        return f"{r.model}: {t.explanation()}"
    c = t.candidates[t.chosen]
    brute = next((p for p in r.report.tradeoff.points if p.exact and p.curve == "brute"), None)
    setting = ", ".join(f"{key}={v}" for key, v in c.setting.items())
    speed = ""
    if brute is not None and t.test_latency.single_ms > 0:
        ratio = brute.single_ms / t.test_latency.single_ms
        speed = (
            f", {ratio:.1f}× faster than brute force's {brute.single_ms:.3f} ms"
            if ratio >= 1
            else f", {1 / ratio:.1f}× slower than brute force's {brute.single_ms:.3f} ms (at this size a scan wins)"
        )
    return (
        f"{r.model}: the tuner picked {c.method}{' (' + setting + ')' if setting else ''} for recall@{k} ≥"
        f" {t.target_recall}; on held-out test queries it finds {100 * t.test_accuracy.recall:.1f}% of the exact"
        f" top-{k} (it loses {100 * (1 - t.test_accuracy.recall):.1f}%) at {t.test_latency.single_ms:.3f} ms/query"
        f"{speed}, with {c.memory_bytes / 2**20:.1f} MiB."
    )


def not_real_reasons(results: Sequence[ModelResults]) -> list[str]:
    reasons = []
    for r in results:
        manifest = open_gallery(r.gallery).manifest
        what = []
        if not manifest.weights.is_trained:
            what.append(manifest.weights.label())
        if manifest.data.synthetic:
            what.append("GENERATED data (drawn by lookalike, not photographs)")
        synthetic = [format_size(c.size) for c in r.report.scale.compositions if c.synthetic]
        if synthetic:
            what.append(f"SYNTHETIC rows in the scale sizes {', '.join(synthetic)}")
        if what:
            reasons.append(f"{r.model}: {'; '.join(what)}")
    return reasons


# --- the files ---


def write_study_report(study: Study) -> list[Path]:
    """report.md, report.json and report.html in --out, the trade-off plots re-drawn with the tuner's picks, and the
    latency-vs-size plot; returns every file written."""
    c, out = study.config, study.out
    results = load_results(study)
    reports = [r.report for r in results]
    sizes = study.sizes()
    config = ReportConfig(
        galleries=tuple(str(r.gallery) for r in results), out=out, sizes=sizes, k=c.k, target_recall=c.target_recall
    )
    seconds = sum(record.seconds for record in study.state.units.values())
    written = []
    for r in results:
        t = r.report.tradeoff
        title = wrapped_title(t.title(), f"{t.n_database} vectors, {t.queries}; the red cross: the tuner's pick")
        pick = tuner_pick(r.tune)
        written.append(
            plot_tradeoff(
                t.points, title, out / r.model / "tradeoff" / "tradeoff.png", t.k, picks=[pick] if pick else []
            )
        )
    size_plot = out / "figures" / "latency-vs-size.png"
    written.append(plot_latency_vs_size(size_series(results), size_title(results), size_plot))

    markdown = report_markdown(reports, config, seconds, command="lookalike study")
    markdown += "\n## The tuner's picks\n\n" + "\n".join(f"- {tuner_sentence(r)}" for r in results) + "\n"
    markdown += f"\n![search latency against gallery size]({size_plot.relative_to(out).as_posix()})\n"
    atomic_write_bytes(out / "report.md", markdown.encode())
    info = report_json(reports, config)
    info["study"] = {
        "data": c.source,
        "weights": c.weights_label,
        "models": list(c.models),
        "units": {u: {"seconds": rec.seconds, "finished": rec.finished} for u, rec in study.state.units.items()},
        "tuner": {r.model: tuner_sentence(r) for r in results},
    }
    atomic_write_json(out / "report.json", info)
    page = report_html(study, results, config, seconds, size_plot)
    atomic_write_bytes(out / "report.html", page.encode())
    return [out / "report.md", out / "report.json", out / "report.html", *written]


def size_series(results: Sequence[ModelResults]) -> list[SizeSeries]:
    series = []
    for r in results:
        s = r.report.scale
        synthetic = {c.size: c.synthetic for c in s.compositions}
        for method in dict.fromkeys(p.method for p in s.points):
            points = sorted((p for p in s.points if p.method == method), key=lambda p: p.size)
            series.append(
                SizeSeries(
                    f"{r.model} · {method}",
                    method,
                    tuple(p.size for p in points),
                    tuple(p.latency.single_ms for p in points),
                    tuple(synthetic.get(p.size, False) for p in points),
                )
            )
    return series


def size_title(results: Sequence[ModelResults]) -> str:
    real = all(r.report.scale.fully_real for r in results)
    return wrapped_title(
        "Search latency against gallery size (single query, median)"
        + ("" if real else f"  ⚠ NOT A REAL RESULT ({NOT_REAL_TAG[2:]})"),
        "hollow markers: the database at that size holds SYNTHETIC rows drawn from a model of the real ones"
        if any(c.synthetic for r in results for c in r.report.scale.compositions)
        else "",
    )


# --- HTML ---

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a; margin: 0;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 0 24px 48px; background: #fff; }
header { padding: 24px 0 8px; }
h1 { margin: 0; font-size: 28px; }
h2 { margin-top: 40px; border-bottom: 2px solid #e3e6ea; padding-bottom: 4px; }
.sub { color: #56606b; margin: 4px 0 0; }
.banner { background: #fff1c2; border: 2px solid #d99a00; color: #5c3d00; padding: 12px 18px; margin: 16px 0;
          border-radius: 6px; font-size: 16px; }
.banner ul { margin: 6px 0 0; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13px; }
th, td { border: 1px solid #d5d9de; padding: 4px 8px; vertical-align: top; }
th { background: #eef1f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 16px 0; }
figure img { max-width: 100%; border: 1px solid #e3e6ea; }
figcaption { color: #56606b; font-size: 13px; }
.answer { font-size: 16px; }
.tag { color: #8a5a00; font-weight: 600; }
code { background: #f0f2f4; padding: 0 3px; border-radius: 3px; font-size: 90%; }
figure.pair { display: inline-block; margin: 8px 16px 8px 0; max-width: 260px; vertical-align: top; }
img.thumb { width: 96px; height: 96px; object-fit: contain; border: 1px solid #d5d9de; margin-right: 4px; }
"""


def inline(text: str) -> str:
    """Escaped text with the report's bits of Markdown: `code` and **bold**."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def markdown_list(lines: Sequence[str]) -> str:
    """ "- item" and "  - sub-item" lines as nested lists."""
    parts, depth = [], 0
    for line in lines:
        if not line.strip():
            continue
        level = (len(line) - len(line.lstrip(" "))) // 2 + 1
        text = line.strip()[2:] if line.strip().startswith("- ") else line.strip()
        while depth < level:
            parts.append("<ul>")
            depth += 1
        while depth > level:
            parts.append("</ul>")
            depth -= 1
        parts.append(f"<li>{inline(text)}</li>")
    return "".join(parts) + "</ul>" * depth


def markdown_table(lines: Sequence[str], table_id: str | None = None) -> str:
    """A Markdown pipe table (header, separator, rows) as an HTML table; right-aligned columns stay right-aligned."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    if len(rows) < 2:
        return ""
    header, separator, body = rows[0], rows[1], rows[2:]
    numeric = [s.endswith(":") and not s.startswith(":") for s in separator]
    out = [f"<table{f' id={table_id!r}' if table_id else ''}><thead><tr>"]
    out += [f"<th>{inline(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row in body:
        cells = [
            f"<td{' class=num' if i < len(numeric) and numeric[i] else ''}>{inline(cell)}</td>"
            for i, cell in enumerate(row)
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</tbody></table>"


def image(path: Path, alt: str, image_id: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img id="{image_id}" class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


THUMB_PX = 96


def thumbnail(path: str) -> str | None:
    """A small inline JPEG of one image (a file or a tar member), or None when it cannot be read (moved, deleted)."""
    from PIL import Image

    from ..data.images import read_image_bytes

    try:
        with Image.open(io.BytesIO(read_image_bytes(path))) as im:
            small = im.convert("RGB")
            small.thumbnail((THUMB_PX, THUMB_PX))
            buffer = io.BytesIO()
            small.save(buffer, "JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def examples_html(model: str, leak: Leakage, gallery) -> str:
    """The leakage check's example pairs as pictures: the held-out query beside its copy in the database."""
    pairs = [
        (s.split, tier, p)
        for s in leak.splits
        for tier, examples in (("identical", s.identical_examples), ("near-copy", s.similar_examples))
        for p in examples
    ]
    if not pairs:
        return (
            f'<p class="examples" id="examples-{model}">{html.escape(model)}: no held-out query has a copy in the'
            " database.</p>"
        )
    show = gallery.manifest.data.shown_path
    full = {show(path): path for path in gallery.paths}
    cells = []
    for split, tier, pair in pairs:
        pictures = []
        for name in (pair.query, pair.database):
            src = thumbnail(full[name]) if name in full else None
            pictures.append(
                f'<img class="thumb" alt="{html.escape(name)}" src="{src}">' if src else "<span>(not readable)</span>"
            )
        cells.append(
            f'<figure class="pair">{" ".join(pictures)}<figcaption>{html.escape(split)}, {tier}:'
            f" <code>{html.escape(pair.query)}</code> ↔ <code>{html.escape(pair.database)}</code> (score"
            f" {pair.score:.3f})</figcaption></figure>"
        )
    return f'<div class="examples" id="examples-{model}"><h3>{html.escape(model)}: examples</h3>{"".join(cells)}</div>'


def report_html(
    study: Study, results: Sequence[ModelResults], config: ReportConfig, seconds: float, size_plot: Path
) -> str:
    c = study.config
    reports = [r.report for r in results]
    env = reports[0].bench.environment or runtime.environment()
    machine, k = env.get("machine", {}), c.k
    lo, hi = format_size(min(config.sizes)), format_size(max(config.sizes))
    reasons = not_real_reasons(results)
    real = not reasons
    tag = "" if real else f'<p class="tag">{html.escape(NOT_REAL_TAG)}: see the banner above.</p>'
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>lookalike study — {html.escape(c.source)}</title>",
        f"<style>{STYLE}</style></head><body><main>",
        "<header><h1>lookalike study</h1>",
        f'<p class="sub">{html.escape(c.source)} · {html.escape(", ".join(c.models))} ·'
        f" {html.escape(c.weights_label)} weights · generated"
        f" {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by <code>lookalike study</code>; the steps took"
        f" {seconds:.0f} s in all</p></header>",
    ]
    if not real:
        banner = re.sub(r"\*\*", "", not_real_banner())
        parts.append(
            f'<div id="not-real" class="banner" role="alert"><strong>{html.escape(banner)}</strong><ul>'
            + "".join(f"<li>{html.escape(reason)}</li>" for reason in reasons)
            + "</ul></div>"
        )
    parts.append(
        '<nav><a href="#answers">Answers</a><a href="#timing">Table 1</a><a href="#tradeoff">Accuracy vs speed</a>'
        '<a href="#scale">Latency vs size</a><a href="#leakage">Leakage</a><a href="#provenance">Provenance</a>'
        '<a href="report.md">report.md</a></nav>'
    )

    # the answers
    accuracy = [line for r in reports for line in accuracy_summary(r)]
    shift = [line for r in reports for line in scale_summary(r)]
    parts += [
        '<section id="answers"><h2>The answers</h2>',
        f'<h3 id="question-i">(i) How much accuracy does approximate search lose against exact search?</h3>{tag}',
        '<div class="answer">' + markdown_list([f"- **{tuner_sentence(r)}**" for r in results]) + "</div>",
        f"<p>The fastest approximate setting measured per recall target (recall@{k} against brute force on held-out"
        " queries; label precision@k beside exact search's):</p>",
        markdown_list(accuracy),
        f'<h3 id="question-ii">(ii) How does the latency shift from a gallery of {lo} to one of {hi}?</h3>{tag}',
        '<div class="answer">' + markdown_list(shift) + "</div>",
        "</section>",
    ]

    # Table 1
    table = combined_table([r.bench for r in reports]).splitlines()
    notes = [line for line in table if line.startswith("- ")]
    parts += [
        '<section id="timing"><h2>Table 1 — timing</h2>',
        f"<p>Extraction per image and search per query for brute force, FAISS flat and IVF (k = {k}), one column per"
        " model; single = one query per call, batched = every query in one call, per query.</p>",
        markdown_table(table, "timing-table"),
        markdown_list(notes),
        tag,
        "</section>",
    ]

    # accuracy vs speed
    parts.append('<section id="tradeoff"><h2>Accuracy vs speed</h2>')
    parts.append(
        f"<p>recall@{k} against exact search versus single-query latency for every index family, swept over its"
        " search parameter; black circles: the Pareto front; red cross: the tuner's pick (its recall on test queries"
        " it was not tuned on).</p>"
    )
    for r in results:
        t = r.report.tradeoff
        parts += [
            "<figure>",
            image(
                study.out / r.model / "tradeoff" / "tradeoff.png",
                f"recall@{k} against latency for {r.model}",
                f"tradeoff-{r.model}",
            ),
            f"<figcaption>{html.escape(r.model)}: {t.n_database} vectors, {html.escape(t.queries)}. Full table:"
            f' <a href="{r.model}/tradeoff/tradeoff.md">{r.model}/tradeoff/tradeoff.md</a>.</figcaption>',
            tag,
            "</figure>",
        ]
    parts.append("</section>")

    # latency against size
    rows = [
        "| model | size | rows | method | params | search ms single | batched ms | test recall@k |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        s = r.report.scale
        for p in sorted(s.points, key=lambda p: (p.size, p.method)):
            comp = next(x for x in s.compositions if x.size == p.size)
            rows.append(
                f"| {r.model} | {format_size(p.size)}{' ⚠' if comp.synthetic else ''} | {comp.describe()} | {p.method}"
                f" | {', '.join(f'{a}={b}' for a, b in p.params.items()) or '–'} | {p.latency.single_ms:.3f} |"
                f" {p.latency.batch_ms:.4f} | {p.recall:.4f} |"
            )
    parts += [
        '<section id="scale"><h2>Latency against gallery size</h2>',
        "<figure>",
        image(size_plot, "search latency against gallery size", "latency-vs-size"),
        "<figcaption>Real rows first, then SYNTHETIC ones (⚠, hollow markers) where a size exceeds the collection;"
        " approximate methods tuned per size to recall@"
        f"{k} ≥ {c.target_recall} on validation queries.</figcaption>",
        tag,
        "</figure>",
        markdown_table(rows, "scale-table"),
        "</section>",
    ]

    # leakage, with its examples as pictures
    leak = leakage_markdown([r.report.leakage for r in results])
    parts += [
        '<section id="leakage"><h2>Leakage: held-out queries with a copy in the database</h2>',
        markdown_table(leak, "leakage-table"),
        markdown_list([line for line in leak if line.lstrip().startswith("- ")]),
        *(examples_html(r.model, r.report.leakage, open_gallery(r.gallery)) for r in results),
        "</section>",
    ]

    # provenance
    prov = ["| model | gallery | weights | data | images |", "|---|---|---|---|---:|"]
    for r in results:
        g = open_gallery(r.gallery)
        prov.append(
            f"| {r.model} ({g.dim}-d) | `{r.gallery}` | {g.manifest.weights.label()} | {g.manifest.data.describe()} |"
            f" {g.count} |"
        )
    steps = ["| step | seconds | finished (UTC) |", "|---|---:|---|"] + [
        f"| {record.unit} | {record.seconds:.1f} | {record.finished} |"
        for record in study.state.units.values()
        if record.unit != "report"
    ]
    versions = ", ".join(f"{name} {v}" for name, v in env.get("versions", {}).items())
    threads = ", ".join(f"{name} {v}" for name, v in env.get("threads", {}).items())
    parts += [
        '<section id="provenance"><h2>Provenance</h2>',
        markdown_table(prov, "provenance-table"),
        "<ul>",
        f"<li>Machine: {html.escape(str(machine.get('cpu')))}, {machine.get('cores')} cores,"
        f" {machine.get('memory_gib')} GiB RAM, CUDA: {html.escape(str(machine.get('cuda') or 'none'))}.</li>",
        f"<li>Threads: {html.escape(threads)}.</li>",
        f"<li>Versions: {html.escape(versions)}.</li>",
        f"<li>k = {k}; scale sizes {html.escape(', '.join(format_size(s) for s in config.sizes))}; target recall@{k}"
        f" ≥ {c.target_recall} for the tuner and the scale study.</li>",
        "<li>Every figure comes from the result files beside this one (per model: bench.json,"
        " tradeoff/tradeoff.json, tune/tune.json, scale/scale.json, leakage.json); study.json records each step and"
        " the fingerprints it ran on.</li>",
        "</ul>",
        "<h3>The steps, as they last ran</h3>",
        markdown_table(steps, "steps-table"),
        "</section>",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)
