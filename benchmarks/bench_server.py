"""`lookalike serve` under load: p50/p99 latency and throughput of POST /api/search on a 100k-vector gallery (issue 4).

The real server (`lookalike serve`, a subprocess) is driven over loopback by an async httpx
load generator with a bounded number of requests and a time cap per run. Two kinds of query:

    by id      the stored embedding of a held-out gallery row: search only
    by upload  a 640×480 JPEG: decode + preprocess + the model's forward pass + search

each at several concurrency levels (clients with one request in flight each). Nothing may
fail: the script exits non-zero if any request does.

A second section (issue 12) times text queries — tokenize + CLIP's text tower + search — on a
gallery built the same way with clip (RANDOM weights) instead of resnet18.

Gallery: 100,000 rows of 512-d. The first rows are real extractions — resnet18 with RANDOM
weights at 224 px over a small GENERATED collection (lookalike.data.synthetic) — and the rest are
SYNTHETIC rows sampled from a cluster model fitted to them
(`lookalike.data.vectors.fit_cluster_model`, written by `lookalike.gallery.generated.write_array_gallery`). The
gallery keeps the resnet18 model block, so uploads are embedded by the same (random-weight)
model. Latencies are valid; the rankings mean nothing, and every output says so.

The load generator runs on the same 2 cores as the server, so it takes CPU from it; the
server-side split (wait, embed, search) is reported beside the client-side figures.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ROOT,
    environment_markdown,
    goal_mark,
    load_watch,
    markdown_table,
    parser,
    should_write,
    write_section,
)  # noqa: E402
from lookalike import runtime  # noqa: E402
from lookalike.gallery import Gallery, open_gallery  # noqa: E402

SECTION = "Web demo (issue 4)"
TEXT_SECTION = "Text queries (issue 12)"
K = 10
DEFAULT = {
    "rows": 100_000,
    "classes": 20,
    "train_per_class": 30,
    "val_per_class": 5,
    "image_size": None,
    "requests": {"id": 300, "upload": 120, "text": 200},
    "concurrency": (1, 4, 16),
    "time_cap_s": 90.0,
}
QUICK = {
    "rows": 3_000,
    "classes": 5,
    "train_per_class": 10,
    "val_per_class": 2,
    "image_size": 64,
    "requests": {"id": 30, "upload": 10, "text": 10},
    "concurrency": (1, 4),
    "time_cap_s": 20.0,
}
TEXT_SCENARIOS = (("text", "brute"), ("text", "flat"), ("text", "ivf"))
# Queries of a few lengths, as typed into the page: the text tower's cost does not depend on the
# length (it always reads the full 77-token context), tokenizing does, a little.
TEXTS = (
    "a red car",
    "a photo of a dog on a beach",
    "a yellow star on an olive green background",
    "a close-up photograph of a small bird sitting on a branch in the rain, with a blurred city behind it",
)
SCENARIOS = (("id", "brute"), ("id", "flat"), ("id", "ivf"), ("upload", "ivf"))
# The server's concurrency model, side by side: the default (one compute job at a time using
# every core) against as many single-threaded jobs as cores, on the CPU-heavy scenarios.
CONFIGS = (
    {"label": "2 threads × 1 slot (default)", "threads": None, "slots": 1, "scenarios": SCENARIOS},
    {"label": "1 thread × 2 slots", "threads": 1, "slots": 2, "scenarios": (("id", "brute"), ("upload", "ivf"))},
)
UPLOAD_SIZE = (640, 480)  # a typical photo-sized upload, not a 64-px thumbnail
START_TIMEOUT_S = 600


# --- the gallery ---


def build_gallery(work: Path, sizes: dict, model: str = "resnet18") -> Gallery:
    """Extract a small generated collection with `model` (random weights), then extend it to `rows` with fitted
    synthetic rows."""
    from lookalike.data.synthetic import generate_collection
    from lookalike.data.vectors import fit_cluster_model
    from lookalike.embed.extract import ExtractConfig, extract
    from lookalike.gallery.generated import Segment, write_array_gallery

    tag = "" if model == "resnet18" else f"-{model}"  # the resnet18 folders keep the names earlier runs made
    out = work / f"gallery{tag}-{sizes['rows']}"
    if (out / "manifest.json").is_file():
        gallery = open_gallery(out)
        if gallery.count == sizes["rows"]:
            return gallery
    data = generate_collection(
        work / "data",
        n_classes=sizes["classes"],
        train_per_class=sizes["train_per_class"],
        val_per_class=sizes["val_per_class"],
        seed=0,
    )
    source = extract(
        ExtractConfig(
            data=str(data),
            out=str(work / f"source{tag}"),
            model=model,
            weights="random",
            image_size=sizes["image_size"],
            batch_size=32,
        ),
        progress=False,
    )
    n_real = source.count
    train = np.flatnonzero(source.splits == "train")
    t = time.perf_counter()
    fitted = fit_cluster_model(source.embeddings[train], source.labels[train], seed=0)
    synthetic, clusters = fitted.sample(sizes["rows"] - n_real, seed=1)
    seconds = time.perf_counter() - t
    meta = source.metadata.to_pydict()
    cluster_labels = np.asarray(fitted.labels, dtype=object)[clusters]
    names = dict(zip(meta["label"], meta["label_name"]))
    segments = [
        Segment(
            "gallery",
            0,
            n_real,
            False,
            f"{model} (RANDOM weights) embeddings of {n_real} GENERATED images",
            {"source": str(source.path)},
        ),
        Segment(
            "synthetic",
            n_real,
            sizes["rows"],
            True,
            f"sampled from a cluster model fitted to the {len(train)} train rows",
            fitted.describe(),
        ),
    ]
    return write_array_gallery(
        out,
        np.concatenate([np.asarray(source.embeddings), synthetic]),
        labels=[*meta["label"], *cluster_labels],
        splits=[*meta["split"], *["train"] * len(synthetic)],
        label_names=[*meta["label_name"], *(names.get(label) for label in cluster_labels)],
        paths=[*meta["path"], *(f"synthetic:cluster-model/{i}" for i in range(n_real, sizes["rows"]))],
        segments=segments,
        model=source.manifest.model,
        data={"kind": "arrays", "root": str(data), "synthetic": True, "source_data": source.manifest.data.to_dict()},
        timings={"fit_and_sample_seconds": round(seconds, 2)},
        overwrite=True,
    )


def upload_jpeg(gallery: Gallery) -> bytes:
    """A held-out generated image, resized to a photo-like 640×480 JPEG."""
    from PIL import Image

    val = int(np.flatnonzero(gallery.splits == "val")[0])
    buffer = io.BytesIO()
    Image.open(gallery.paths[val]).convert("RGB").resize(UPLOAD_SIZE, Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# --- the server ---


class Server:
    """`lookalike serve --port 0` in a subprocess; `url` once it listens, `rss_peak_bytes()` from /proc."""

    def __init__(self, gallery: Path, threads: int | None, slots: int = 1):
        command = [
            sys.executable,
            "-m",
            "lookalike.cli",
            "serve",
            "--gallery",
            str(gallery),
            "--port",
            "0",
            "--compute-slots",
            str(slots),
        ]
        if threads:
            command += ["--threads", str(threads)]
        t = time.perf_counter()
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        seen = []
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                self.stop()
                raise SystemExit(f"lookalike serve printed no URL in {START_TIMEOUT_S} s:\n{''.join(seen)}") from None
            seen.append(line)
            if m := re.search(r"http://127\.0\.0\.1:\d+", line):
                self.url = m.group(0)
                break
            if self.proc.poll() is not None:
                raise SystemExit(f"lookalike serve exited with {self.proc.returncode}:\n{''.join(seen)}")
        self.start_seconds = time.perf_counter() - t

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (all its threads), from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_peak_bytes(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- the load generator ---


@dataclass
class LoadResult:
    config: str
    kind: str
    method: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)  # client side: request sent → answer parsed
    server: list[dict] = field(default_factory=list)  # each answer's latency_ms
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    params: dict = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def server_median(self, key: str) -> float | None:
        values = [s[key] for s in self.server if s.get(key) is not None]
        return statistics.median(values) if values else None

    def row(self) -> list[object]:
        fmt = lambda x: "—" if x is None else f"{x:.1f}"  # noqa: E731
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return [
            self.config,
            f"by {self.kind}",
            self.method + (f" ({params})" if params else ""),
            self.concurrency,
            len(self.latencies_ms),
            len(self.failures),
            f"{self.percentile(50):.1f}",
            f"{self.percentile(99):.1f}",
            f"{len(self.latencies_ms) / self.wall_s:.1f}" if self.wall_s else "—",
            fmt(self.server_median("wait_ms")),
            fmt(self.server_median("decode_ms")),
            fmt(self.server_median("embed_ms")),
            fmt(self.server_median("search_ms")),
        ]


async def run_load(
    url: str,
    config: str,
    kind: str,
    method: str,
    concurrency: int,
    total: int,
    time_cap_s: float,
    ids: np.ndarray,
    jpeg: bytes,
    warmup: int = 5,
) -> LoadResult:
    """`total` requests (or as many as fit in `time_cap_s`) from `concurrency` clients with one request in flight
    each."""
    import httpx

    result = LoadResult(config, kind, method, concurrency)

    async def send(client: httpx.AsyncClient, i: int) -> httpx.Response:
        fields = {"method": method, "k": str(K)}
        if kind == "id":
            return await client.post("/api/search", data={"id": str(int(ids[i % len(ids)])), **fields})
        if kind == "text":
            return await client.post("/api/search", data={"text": TEXTS[i % len(TEXTS)], **fields})
        return await client.post("/api/search", files={"image": ("query.jpg", jpeg, "image/jpeg")}, data=fields)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for i in range(warmup):
            (await send(client, i)).raise_for_status()
        counter = itertools.count()
        deadline = time.perf_counter() + time_cap_s

        async def worker() -> None:
            while time.perf_counter() < deadline and (i := next(counter)) < total:
                t = time.perf_counter()
                try:
                    response = await send(client, i)
                except httpx.HTTPError as exc:
                    result.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    result.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                result.latencies_ms.append(1000 * (time.perf_counter() - t))
                result.server.append(body["latency_ms"])
                result.params = body["params"]

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - t0
    return result


# --- report ---


HEADERS = [
    "server",
    "query",
    "method",
    "clients",
    "requests",
    "failed",
    "p50 ms",
    "p99 ms",
    "req/s",
    "server wait ms",
    "decode ms",
    "embed ms",
    "search ms",
]


HOSTILE_HEADERS = ["upload (issue 10)", "bytes", "HTTP", "server CPU s", "wall ms"]


def hostile_rows(server: Server) -> list[list[object]]:
    """Each hostile upload once, sequentially: the server process's CPU time for it (goal: ≤ 1 s each)."""
    import httpx

    from lookalike.testing import hostile_uploads

    rows = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for name, data in hostile_uploads().items():
            cpu, t = server.cpu_seconds(), time.perf_counter()
            response = client.post(
                "/api/search",
                files={"image": (name, data, "application/octet-stream")},
                data={"k": str(K), "method": "ivf"},
            )
            wall = time.perf_counter() - t
            rows.append(
                [
                    name,
                    f"{len(data):,}",
                    response.status_code,
                    f"{server.cpu_seconds() - cpu:.2f}",
                    f"{1000 * wall:.0f}",
                ]
            )
        healthy = client.get("/healthz").status_code == 200
    rows.append(["(then /healthz)", "", 200 if healthy else "FAILED", "", ""])
    return rows


@dataclass
class ServerRun:
    config: dict
    start_seconds: float
    rss_peak_bytes: int | None
    info: dict


def to_markdown(
    results: list[LoadResult],
    runs: list[ServerRun],
    jpeg_bytes: int,
    load: dict,
    quick: bool,
    hostile: list[list[object]] | None = None,
) -> str:
    total = sum(len(r.latencies_ms) for r in results)
    failed = sum(len(r.failures) for r in results)
    info = runs[0].info
    ivf = next(m for m in info["methods"] if m["name"] == "ivf")
    lines = [
        (
            "`benchmarks/bench_server.py`: the real `lookalike serve` (subprocess) driven over loopback by an async"
            " httpx load generator; each client keeps one request in flight. Latencies are client-side (request sent →"
            " answer parsed), in ms; the *server* columns are medians of the per-request split the API returns."
        ),
        "",
        f"**Gallery: {info['provenance']}.** "
        + " ".join(info["warnings"])
        + " **Latencies are real; the rankings are not meaningful.**",
        "",
        environment_markdown(load, quick),
        (
            f"- Upload: one {UPLOAD_SIZE[0]}×{UPLOAD_SIZE[1]} JPEG ({jpeg_bytes / 1024:.0f} KB), model input"
            f" {info['image_size']} px. By id: held-out (val) rows, k = {K}. Methods over {ivf['ntotal']:,} rows: brute"
            f" (torch), flat, ivf = {ivf['factory']}. The load generator runs on the same 2 cores as the server."
        ),
    ]
    for run in runs:
        rss = f"{run.rss_peak_bytes / 2**20:,.0f} MiB" if run.rss_peak_bytes else "n/a"
        lines.append(
            f"- Server {run.config['label']}: threads {run.info['threads']}, started in {run.start_seconds:.1f} s "
            f"(model load + building brute, flat and ivf), peak RSS {rss}."
        )
    lines += ["", markdown_table(HEADERS, [r.row() for r in results]), "", f"**{total} requests, {failed} failed.**"]
    lines += reading(results, info)
    if hostile:
        lines += [
            "",
            (
                "Hostile uploads (issue 10; files from `lookalike.testing.hostile_uploads`), one at a time to"
                " the default server: the server process's CPU time per request (user + system, all threads, /proc;"
                " clock-tick resolution 10 ms). Goal: at most 1 s each, and the server healthy afterwards."
            ),
            "",
            markdown_table(HOSTILE_HEADERS, hostile),
        ]
    return "\n".join(lines)


TEXT_HEADERS = [
    "query",
    "method",
    "clients",
    "requests",
    "failed",
    "p50 ms",
    "p99 ms",
    "req/s",
    "server wait ms",
    "tokenize ms",
    "text tower ms",
    "search ms",
]


def text_markdown(results: list[LoadResult], run: ServerRun, load: dict, quick: bool) -> str:
    """The text-query section: end-to-end latency, and the server's split into tokenize, text tower and search."""
    info = run.info
    ivf = next(m for m in info["methods"] if m["name"] == "ivf")
    rows = [r.row()[1:] for r in results]  # the server column is the default configuration throughout
    one = [r for r in results if r.concurrency == min(r.concurrency for r in results)]
    lines = [
        (
            "`benchmarks/bench_server.py`: text queries (`POST /api/search` with `text`) to the real `lookalike serve`"
            " over a CLIP gallery, driven like the web demo section above. A text query is tokenized (open_clip's BPE"
            " tokenizer), embedded by CLIP's text tower (up to its end-of-text token, batch 1, on the backend and"
            " precision the server's text calibration chose: `lookalike.embed.text_choice`) and searched; the"
            " *server* columns are medians of the per-request split the API returns (tokenize is reported as"
            " `decode_ms`)."
        ),
        "",
        f"**Gallery: {info['provenance']}.** "
        + " ".join(info["warnings"])
        + " **Latencies are real; the rankings are not meaningful.**",
        "",
        environment_markdown(load, quick),
        (
            f"- Weights: {info['weights']['kind']} (seed {info['weights'].get('seed')}); a trained text tower has the"
            f" same shape and cost. Texts: {len(TEXTS)} queries of {min(map(len, TEXTS))}–{max(map(len, TEXTS))}"
            f" characters, in turn; k = {K}. Methods over {ivf['ntotal']:,} rows: brute (torch), flat, ivf ="
            f" {ivf['factory']}. Server {run.config['label']}, threads {info['threads']}, started in"
            f" {run.start_seconds:.1f} s."
        ),
        f"- The text tower ran on: {describe_text_backend(info.get('text_backend'))}.",
        "",
        markdown_table(TEXT_HEADERS, rows),
        "",
        f"**{sum(len(r.latencies_ms) for r in results)} requests, {sum(len(r.failures) for r in results)} failed.**",
    ]
    if one:
        parts = [
            f"{r.method} {r.percentile(50):.1f} ms (text tower {r.server_median('embed_ms'):.1f} ms, search"
            f" {r.server_median('search_ms'):.1f} ms)"
            for r in one
            if r.latencies_ms
        ]
        lines += ["", "Reading: one client at a time, a text query costs end to end (p50) " + "; ".join(parts) + "."]
        ivf_one = next((r for r in one if r.method == "ivf" and r.latencies_ms), None)
        if ivf_one is not None:
            p50 = ivf_one.percentile(50)
            lines += [
                "",
                f"**Goal (issue 24): a text query's p50 end to end ≤ {TEXT_GOAL_MS:.0f} ms with one client (ivf):**"
                f" {p50:.1f} ms — {goal_mark(p50 <= TEXT_GOAL_MS, load) if not quick else 'not judged (--quick)'}.",
            ]
    return "\n".join(lines)


TEXT_GOAL_MS = 20.0  # issue 24: text query → results, one client, ivf over 100k rows


def describe_text_backend(chosen: dict | None) -> str:
    if not chosen:
        return "not reported (the server measured no text query before this section's first request)"
    return f"{chosen['backend']} {chosen['precision']} ({chosen['reason']})"


UPLOAD_GOAL_MS = 25.0  # issue 8: upload → results, one client, resnet18
UPLOAD_GOAL_24_MS = 10.0  # issue 24: the same, at interactive speed


def reading(results: list[LoadResult], info: dict) -> list[str]:
    """A few sentences read off the table, so the figures that matter are stated, not just listed."""
    default = CONFIGS[0]["label"]
    by = {(r.config, r.kind, r.method, r.concurrency): r for r in results}
    levels = sorted({r.concurrency for r in results})
    lo, hi = levels[0], levels[-1]
    rate = lambda r: len(r.latencies_ms) / r.wall_s if r and r.wall_s and r.latencies_ms else float("nan")  # noqa: E731
    up1, upn = by.get((default, "upload", "ivf", lo)), by.get((default, "upload", "ivf", hi))
    id1 = by.get((default, "id", "ivf", lo))
    out = [""]
    if up1 and upn and id1:
        out.append(
            "Reading: with the default model one compute job runs at a time on both cores. A search by id with ivf"
            f" takes {id1.percentile(50):.1f} ms (p50) end to end, of which {id1.server_median('search_ms'):.1f} ms is"
            f" the search; an upload takes {up1.percentile(50):.0f} ms, of which the forward pass is"
            f" {up1.server_median('embed_ms'):.0f} ms. Under load, uploads go from {rate(up1):.1f} req/s with {lo}"
            f" client to {rate(upn):.1f} with {hi} (one forward pass at a time: more clients add queueing, not"
            f" throughput) and p50 latency from {up1.percentile(50):.0f} to {upn.percentile(50):.0f} ms, of which"
            f" {upn.server_median('wait_ms'):.0f} ms (median) is waiting for the compute slot."
        )
    if up1:
        p50 = up1.percentile(50)
        out += [
            "",
            f"Goal (issue 8): an upload answered in p50 ≤ {UPLOAD_GOAL_MS:g} ms with one client ({info['model']},"
            f" embedded with {info.get('backend') or 'torch'} {info['precision']}, as the gallery's manifest records):"
            f" **{p50:.1f} ms** " + ("✓" if p50 <= UPLOAD_GOAL_MS else "✗ missed") + ".",
        ]
        stages = {name: up1.server_median(f"{name}_ms") for name in ("wait", "decode", "embed", "search")}
        known = {name: ms for name, ms in stages.items() if ms is not None}
        rest = p50 - sum(known.values())
        shares = ", ".join(f"{name} {ms:.1f} ms ({ms / p50:.0%})" for name, ms in known.items())
        out += [
            "",
            f"Goal (issue 24): an upload answered in p50 ≤ {UPLOAD_GOAL_24_MS:g} ms with one client: **{p50:.1f} ms** "
            + ("✓" if p50 <= UPLOAD_GOAL_24_MS else "✗ missed")
            + f". Where it goes (medians of the server's own split): {shares}, and the rest — HTTP, the multipart"
            f" body, JSON, the client — {rest:.1f} ms ({rest / p50:.0%}).",
        ]
    brute, flat = by.get((default, "id", "brute", lo)), by.get((default, "id", "flat", lo))
    if brute and flat and id1:
        out += [
            "",
            f"Exact search of one query over the whole database is memory-bound: {brute.server_median('search_ms'):.0f}"
            f" ms for brute (torch, both cores) and {flat.server_median('search_ms'):.0f} ms for flat (FAISS scans"
            " fewer than 20 queries with its per-query loop, so one query runs on one core), against"
            f" {id1.server_median('search_ms'):.1f} ms for ivf. At this size one "
            + (
                "exact search costs"
                f" {'more' if brute.server_median('search_ms') > up1.server_median('embed_ms') else 'less'} than an"
                f" upload's forward pass ({up1.server_median('embed_ms'):.0f} ms)."
                if up1
                else "exact search was measured without uploads."
            ),
        ]
    if len(CONFIGS) > 1:
        alt = CONFIGS[1]["label"]
        pairs = [
            (by.get((default, k, m, c)), by.get((alt, k, m, c))) for k, m in CONFIGS[1]["scenarios"] for c in levels
        ]
        pairs = [(a, b) for a, b in pairs if a and b and a.latencies_ms and b.latencies_ms]
        if pairs:
            parts = [
                f"{a.kind} {a.method} ×{a.concurrency}: {rate(a):.1f} vs {rate(b):.1f} req/s, p50"
                f" {a.percentile(50):.0f} vs {b.percentile(50):.0f} ms"
                for a, b in pairs
            ]
            wins = sum(rate(a) > rate(b) for a, b in pairs)
            out.append("")
            out.append(
                f"Side by side, {default} vs {alt}: "
                + "; ".join(parts)
                + f". **{default} had the higher throughput in {wins} of {len(pairs)} comparisons** (docs/server.md"
                " links here for the choice of default). The two servers ran one after the other in this run, so"
                " other work on the machine may differ between them (see the load average above)."
            )
    return out


def run_text(args, sizes: dict) -> tuple[list[LoadResult], ServerRun]:
    """Text queries against the default server configuration over a CLIP gallery of the same size."""
    import httpx

    print(f"building the {sizes['rows']:,}-row CLIP gallery in {args.work} (reused if present)…", flush=True)
    gallery = build_gallery(args.work, sizes, model="clip")
    config = CONFIGS[0]
    server = Server(gallery.path, args.threads, config["slots"])
    results = []
    try:
        info = httpx.get(server.url + "/api/gallery", timeout=60).json()
        print(
            f"server {config['label']} at {server.url} ({server.start_seconds:.1f} s to start): {info['provenance']}",
            flush=True,
        )
        for kind, method in TEXT_SCENARIOS:
            for concurrency in sizes["concurrency"]:
                result = asyncio.run(
                    run_load(
                        server.url,
                        config["label"],
                        kind,
                        method,
                        concurrency,
                        sizes["requests"][kind],
                        sizes["time_cap_s"],
                        np.zeros(0),
                        b"",
                    )
                )
                results.append(result)
                print(markdown_table(TEXT_HEADERS, [result.row()[1:]]).splitlines()[-1], flush=True)
                for failure in result.failures[:5]:
                    print(f"  FAILED: {failure}", flush=True)
        info = httpx.get(server.url + "/api/gallery", timeout=60).json()  # now with the text tower's choice
        return results, ServerRun(config, server.start_seconds, server.rss_peak_bytes(), info)
    finally:
        server.stop()


def run_web(args, sizes: dict) -> tuple[list[LoadResult], list[ServerRun], list[list[object]], int]:
    """The web demo section: by id and by upload, under both server configurations, then the hostile uploads."""
    import httpx

    print(f"building the {sizes['rows']:,}-row gallery in {args.work} (reused if present)…", flush=True)
    gallery = build_gallery(args.work, sizes)
    jpeg = upload_jpeg(gallery)
    ids = gallery.partition().query_ids
    results: list[LoadResult] = []
    runs: list[ServerRun] = []
    hostile: list[list[object]] = []
    for config in CONFIGS:
        threads = args.threads if config["threads"] is None else config["threads"]
        server = Server(gallery.path, threads, config["slots"])
        try:
            info = httpx.get(server.url + "/api/gallery", timeout=60).json()
            print(
                f"server {config['label']} at {server.url} ({server.start_seconds:.1f} s to start):"
                f" {info['provenance']}",
                flush=True,
            )
            for kind, method in config["scenarios"]:
                for concurrency in sizes["concurrency"]:
                    result = asyncio.run(
                        run_load(
                            server.url,
                            config["label"],
                            kind,
                            method,
                            concurrency,
                            sizes["requests"][kind],
                            sizes["time_cap_s"],
                            ids,
                            jpeg,
                        )
                    )
                    results.append(result)
                    print(markdown_table(HEADERS, [result.row()]).splitlines()[-1], flush=True)
                    for failure in result.failures[:5]:
                        print(f"  FAILED: {failure}", flush=True)
            runs.append(ServerRun(config, server.start_seconds, server.rss_peak_bytes(), info))
            if config is CONFIGS[0]:
                hostile = hostile_rows(server)
                print(markdown_table(HOSTILE_HEADERS, hostile), flush=True)
        finally:
            server.stop()
    return results, runs, hostile, len(jpeg)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "bench-server",
        help="folder for the generated collection and galleries (reused between runs)",
    )
    p.add_argument(
        "--only",
        choices=["web", "text"],
        default=None,
        help=f"run one section: web ({SECTION!r}) or text ({TEXT_SECTION!r}); default both",
    )
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    runtime.set_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    results: list[LoadResult] = []
    hostile: list[list[object]] = []
    sections: list[tuple[str, str]] = []
    with load_watch() as load:
        if args.only != "text":
            web, runs, hostile, jpeg_bytes = run_web(args, sizes)
            results += web
        if args.only != "web":
            text, text_run = run_text(args, sizes)
            results += text
    if args.only != "text":
        sections.append((SECTION, to_markdown(web, runs, jpeg_bytes, load, args.quick, hostile)))
    if args.only != "web":
        sections.append((TEXT_SECTION, text_markdown(text, text_run, load, args.quick)))
    for title, markdown in sections:
        print(f"\n## {title}\n\n{markdown}")
    if should_write(args):
        for title, markdown in sections:
            print(f"written to {write_section(title, markdown)}")
    failed = sum(len(r.failures) for r in results) + sum(
        1 for row in hostile if not (isinstance(row[2], int) and row[2] < 500)
    )
    if failed:
        print(f"{failed} request(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
