"""What the web demo does, without HTTP: load a gallery, its model and its methods once; embed, search, thumbnail,
find near-duplicates.

Kept apart from the FastAPI layer (app.py) so validation and search are plain methods that
raise `RequestError`s carrying an HTTP status; app.py only turns them into JSON.

Concurrency model (see docs/server.md): everything CPU-heavy — decoding an upload, the
forward pass, the search, making a thumbnail, a duplicate search — is one "compute job".
app.py runs compute jobs in worker threads behind a limiter of `compute_slots` (default 1),
and torch, FAISS and BLAS are pinned once to `threads` (default one per core). So one job at
a time uses every core, the 2 cores are never oversubscribed, and waiting requests queue on
the event loop without holding a thread.
"""

from __future__ import annotations

import io
import json
import logging
import mimetypes
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .. import runtime
from ..data.images import load_rgb, load_rgb_bytes
from ..data.webdataset import find_member, is_member_path, read_member
from ..errors import BadImageError, EngineRefused, GalleryError, IndexRowsError, LookalikeError, TextQueryError
from ..gallery import Gallery, open_gallery
from ..gallery.generated import has_image_file
from ..gallery.manifest import shown_path
from ..search import SearchMethod, saved_methods
from ..search.compare import EXACT_METHOD, Comparison, compare_search
from ..search.dupes import DuplicateReport, DuplicatesError, find_duplicates, resolve_threshold
from ..search.searcher import MAX_EXAMPLES, NEGATIVE_WEIGHT, LoadedMethod, Searcher
from ..search.storage import HELD_ROWS, held_rows
from ..study.projection import encode_map, gallery_map
from ..study.tune import DefaultChoice, default_method

if TYPE_CHECKING:
    from ..embed.query import QueryTimings

log = logging.getLogger(__name__)

BUILT_METHODS = ("brute", "flat", "ivf")  # always offered; a saved index of the same name is loaded instead of built
assert EXACT_METHOD in BUILT_METHODS  # every method is compared with this one (or with its twin over the method's rows)
COMPARE_VALUES = ("exact",)  # what `compare` may ask for: the chosen method against exact search
# Decoding a non-JPEG costs CPU in proportion to its pixels (JPEGs decode at 1/2..1/8 scale, see
# data.images), so an upload's decoded size is capped well below PIL's 89.5 Mpx bomb threshold:
# 16.8 Mpx (4096²) keeps the worst upload within about a second of CPU (tests/test_server_hardening.py).
SERVER_MAX_PIXELS = 4096 * 4096
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and resources of one server; the defaults suit a 2-core laptop."""

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = SERVER_MAX_PIXELS  # width × height of an upload as decoded, checked before its pixels are decoded
    max_k: int = 100
    threads: int | None = None  # torch/FAISS/BLAS threads of a compute job (default: one per core)
    compute_slots: int = 1  # compute jobs at once; 1 job × all cores keeps the cores busy without oversubscribing
    thumb_px: int = 160  # longest side of a thumbnail, in pixels
    thumb_cache_entries: int = 4096  # thumbnails kept in memory (LRU), a few KB each
    # duplicate reports kept (LRU, one per threshold), so a slider moved back is answered at once
    duplicate_cache_entries: int = 32
    metric: str = "ip"
    # Host header names accepted (any port); None accepts any. A server bound to loopback must refuse
    # other names, or a web page on another site could reach it through DNS rebinding.
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    database: str = "all"  # rows searched: every image, or "heldout" (the study's database; see search.storage)
    # How saved indexes are searched (lookalike.distributed.fan_out: over Ray actors); None: in this process. With an
    # engine only the saved indexes it can search are offered: none is built in memory at start.
    engine: Callable[[SearchMethod, Gallery], SearchMethod] | None = None


class RequestError(LookalikeError):
    """A request the server cannot serve; `status` is the HTTP status app.py answers with."""

    status = 400

    def __init__(self, message: str, field_name: str | None = None, status: int | None = None):
        super().__init__(message)
        self.field = field_name
        if status is not None:
            self.status = status


class NotFound(RequestError):
    status = 404


class Invalid(RequestError):
    status = 422


class TooLarge(RequestError):
    status = 413


class Conflict(RequestError):
    """The gallery cannot answer as it is now (its files changed since extraction); the request itself is fine."""

    status = 409


def describe_method(entry: LoadedMethod, max_k: int) -> dict[str, Any]:
    """A method as GET /api/gallery lists it: kind, parameters and their ranges, size, and whether it was saved."""
    method = entry.method
    params = {k: v for k, v in method.params().items() if not isinstance(v, (dict, list))}
    return {
        "name": entry.name,
        "kind": method.kind,
        "factory": params.get("factory"),
        "metric": method.metric,
        "higher_is_better": method.metric == "ip",
        "ntotal": method.ntotal,
        "saved": entry.saved,
        "params": params,
        "param_ranges": {k: list(v) for k, v in method.search_param_ranges().items()},
        "k_range": [1, min(max_k, method.ntotal)],
        "memory_bytes": method.memory_bytes(),
        "load_seconds": round(entry.load_seconds, 3),
    }


@dataclass(frozen=True)
class SearchPlan:
    """A validated request: which method, how many results, which per-call parameters, and whether to compare with exact
    search."""

    entry: LoadedMethod
    k: int
    params: dict[str, int] = field(default_factory=dict)
    exact: SearchMethod | None = None  # set when the request asked compare=exact: exact search over the entry's rows
    # gallery ids given as examples beside the query (search.searcher.combine_examples); left out of the results
    positive: tuple[int, ...] = ()
    negative: tuple[int, ...] = ()
    # texts beside an image or id query (CLIP galleries), embedded by the gallery's text tower: `text` is one more
    # positive ("this image, but at night"), `negative_text` a negative ("… not at night"); checked by check_text
    text: str | None = None
    negative_text: str | None = None
    rows: np.ndarray | None = None  # a filter's rows (search.filters.Where): only these are searched

    def effective_params(self) -> dict[str, int]:
        """The search-time parameters this call really used (request values over the method's defaults)."""
        current = self.entry.method.params()
        return {
            key: int(self.params.get(key, current.get(key, lo)))
            for key, (lo, _) in self.entry.method.search_param_ranges().items()
        }


FILTER_LABELS = 2000  # distinct labels /api/gallery lists for the page's filter


class LruCache:
    """Thread-safe LRU: thumbnails by gallery id, duplicate reports by (gallery fingerprint, threshold)."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: Any, data: Any) -> None:
        with self._lock:
            self._items[key] = data
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


class SearchService:
    """One gallery's `Searcher` (query model and search methods), loaded once and shared by every request.

    Every query form goes through the searcher, as the CLI's and the API's do; this class adds
    what HTTP needs: checks that raise `RequestError`s with a status, the methods offered, timings,
    thumbnails, and rows as the API shows them (never a path of the server's filesystem).
    """

    def __init__(
        self, searcher: Searcher, config: ServerConfig, methods: dict[str, LoadedMethod], notes: list[str] | None = None
    ):
        self.searcher = searcher
        self.gallery = searcher.gallery
        self.config = config
        self.methods = methods
        self.notes = list(notes or [])  # saved indexes not offered, and why
        # The exact search each method is compared with: the shared brute force when it holds the same rows
        # (every built method does), else brute force over that saved index's own rows, built once here.
        self.exact = {name: searcher.exact(entry.method) for name, entry in methods.items()}
        self.thumbs = LruCache(config.thumb_cache_entries)
        self._maps: dict[str, dict[str, Any]] = {}
        self._map_lock = threading.Lock()
        self.duplicate_reports = LruCache(config.duplicate_cache_entries)
        gallery = self.gallery
        metadata = gallery.metadata
        self._paths: list[str] = metadata.column("path").to_pylist()
        self._labels: list[str | None] = metadata.column("label").to_pylist()
        self._label_names: list[str | None] = metadata.column("label_name").to_pylist()
        self._splits: list[str | None] = metadata.column("split").to_pylist()
        data = gallery.manifest.data
        self._shown_paths = [shown_path(p, data.root, data.kind == "list") for p in self._paths]
        self._hidden = private_paths(gallery)
        self.threads = config.threads or runtime.default_threads()
        self.job_threads: dict[str, int] = {}  # thread counts in force inside a compute job (set by load)
        self.default: DefaultChoice | None = None  # measured on the gallery by `load` (study.tune.default_method)

    @property
    def embedder(self):
        """The gallery's query model (embed.query.QueryEmbedder), None for generated embeddings."""
        return None if self.searcher.no_model() else self.searcher.embedder

    # -- start-up --
    @classmethod
    def load(cls, gallery_dir: str | Path, config: ServerConfig | None = None) -> SearchService:
        """Open and validate the gallery, rebuild its model, load or build every method, warm them up.

        Any missing or inconsistent file raises GalleryError here, so a broken gallery stops
        the server at start rather than failing request by request. A saved index over other rows
        than the server searches (see ServerConfig.database) is not offered, and `notes` says why.
        """
        config = config or ServerConfig()
        threads = runtime.set_threads(config.threads)
        gallery = open_gallery(gallery_dir)
        if gallery.count == 0:
            raise GalleryError(
                f"the gallery at {gallery.path} holds no images, so there is nothing to serve; extract some"
            )
        searcher = Searcher(gallery, database=config.database, threads=threads, engine=config.engine)
        # A gallery whose embeddings were generated (no model) can still be searched by gallery id.
        if searcher.no_model() is None:
            searcher.embedder  # noqa: B018 - load the model now: a broken one stops the server here
        methods = {} if config.engine else {name: searcher.loaded(name, config.metric) for name in BUILT_METHODS}
        notes = [entry.note for entry in methods.values() if entry.note]
        for name in saved_methods(gallery):
            if name in methods:
                continue
            try:
                methods[name] = searcher.loaded(name, build=False)
            except EngineRefused as exc:
                notes.append(f"the saved index {name} is not offered: {exc}")
            except IndexRowsError:
                held = held_rows(gallery, name) or "other"
                notes.append(
                    f"the saved index {name} is not offered: it holds {HELD_ROWS.get(held, held)}, not"
                    f" {searcher.describe_database()}; rebuild it with `lookalike index --method {name} --database"
                    f" {config.database}`"
                    + (f", or serve with --database {held}" if held in ("all", "heldout") else "")
                )
        for note in notes:
            log.warning("%s", note)
        if not methods:
            raise GalleryError(
                f"no index of {gallery.path} can be searched by this engine ({'; '.join(notes) or 'none is saved'});"
                " build one with `lookalike index --method ivfpq-ondisk`"
            )
        service = cls(searcher, config, methods, notes)
        with ThreadPoolExecutor(
            1
        ) as pool:  # a fresh thread, as the server's workers are: what it reports is what requests get
            if service.embedder is not None and service.no_text() is None:
                # the text tower's backend, measured (int8 too: a server answers many queries) or read from its record
                pool.submit(service.run_job, service.embedder.prepare_text, True).result()
            pool.submit(service.run_job, service.warm_up).result()
            service.job_threads = pool.submit(service.run_job, runtime.thread_counts).result()
            service.default = pool.submit(service.run_job, service.choose_default).result()
        log.info("serving %s with %s (%d threads)", gallery.path, ", ".join(methods), threads)
        return service

    def run_job(self, fn, *args):
        """Run one compute job in the calling (worker) thread with the configured threads in force there."""
        runtime.pin_thread(self.threads)
        return fn(*args)

    def choose_default(self) -> DefaultChoice | None:
        """The method (and nprobe/efSearch) answering when a request names none: measured on this gallery's own held-out
        queries, the fastest reaching recall@10 0.95 against exact search, so a method whose recall collapses on this
        gallery (8-bit graphs on bunched scores) is never the default. None where the gallery is too small to hold
        any query out: then exact search answers."""
        try:
            choice = default_method(self.gallery, {name: entry.method for name, entry in self.methods.items()})
        except LookalikeError as exc:
            log.info("no measured default method (%s); %s answers by default", exc, EXACT_METHOD)
            return None
        log.info("default method: %s %s (%s)", choice.method, choice.params or "", choice.reason)
        return choice

    @property
    def default_method(self) -> str:
        return self.default.method if self.default is not None else EXACT_METHOD

    def default_params(self, method: str) -> dict[str, int]:
        """The measured setting of the default method, used when a request sets none."""
        return dict(self.default.params) if self.default is not None and method == self.default.method else {}

    def warm_up(self) -> None:
        """One dummy query through the model and every method, so the first user does not pay for lazy set-up."""
        if self.embedder is not None:
            size = self.embedder.embedder.preprocess.image_size
            vector, _ = self.searcher.embed(Image.new("RGB", (size, size), (128, 128, 128)))
            if self.no_text() is None:
                self.searcher.embed(text="a photo")
        else:
            vector = np.array(self.gallery.embeddings[:1], dtype=np.float32)
        for name, entry in self.methods.items():
            entry.method.search(vector, min(10, max(1, entry.method.ntotal)))
            self.exact[name].search(vector, min(10, max(1, entry.method.ntotal)))

    # -- validation (cheap: runs on the event loop) --
    def plan(
        self, method: str | None, k: int, params: dict[str, int | None] | None = None, compare: str | None = None
    ) -> SearchPlan:
        """Check the method (None: the measured default), k, the per-call search parameters (nprobe, efSearch,
        k_factor) and `compare`.

        Parameter ranges are checked by the method itself (`SearchMethod.check_params`, the ranges
        `/api/gallery` lists), one parameter at a time so the error names the field at fault."""
        if method is None:
            method = self.default_method
            asked = {key: value for key, value in (params or {}).items() if value is not None}
            params = {**self.default_params(method), **asked}
        entry = self.methods.get(method)
        if entry is None:
            raise Invalid(f"unknown method {method!r}; this gallery offers {', '.join(self.methods)}", "method")
        k_max = min(self.config.max_k, entry.method.ntotal)
        if not 1 <= k <= k_max:
            raise Invalid(f"k={k} is out of range for {method}: use 1..{k_max}", "k")
        checked: dict[str, int] = {}
        for key, value in (params or {}).items():
            if value is None:
                continue
            try:
                # the method's own validation, the one the API uses
                checked.update(entry.method.check_params({key: value}))
            except LookalikeError as exc:
                hint = ""
                if key not in entry.method.search_param_ranges():
                    offering = [name for name, e in self.methods.items() if key in e.method.search_param_ranges()]
                    hint = f"; methods here that take {key}: {', '.join(offering) or 'none'}"
                raise Invalid(f"{exc}{hint}", key) from None
        if compare is not None and compare not in COMPARE_VALUES:
            raise Invalid(
                f"compare={compare!r} is not a comparison this server makes; send compare=exact to compare {method}"
                " with exact search, or leave it out",
                "compare",
            )
        return SearchPlan(entry, k, checked, self.exact[entry.name] if compare else None)

    def no_text(self) -> str | None:
        """Why this gallery cannot be searched by text (its model has no text tower), or None when it can."""
        return self.searcher.no_text()

    def check_text(self, text: str, field_name: str = "text") -> None:
        """A text query this gallery can answer: its model has a text tower, and the text is neither empty nor over its
        context."""
        try:
            self.searcher.check_text(text)
        except TextQueryError as exc:
            raise Invalid(str(exc), field_name) from None

    def check_uploads(self) -> None:
        reason = self.searcher.no_model()
        if reason is not None:
            raise Invalid(reason, "image")

    def check_id(self, gallery_id: int, field_name: str = "id") -> int:
        try:
            return self.searcher.check_id(gallery_id)
        except LookalikeError as exc:
            raise NotFound(str(exc), field_name) from None

    # -- compute jobs (run in a worker thread behind the compute limiter) --
    def search_upload(self, data: bytes, plan: SearchPlan) -> dict[str, Any]:
        """Search with an uploaded image (and the plan's texts and example ids beside it)."""
        self.check_uploads()
        if len(data) > self.config.max_upload_bytes:
            raise TooLarge(self.too_large_message(len(data)), "image")
        vector, timings = self.searcher.embed(data, max_pixels=self.config.max_pixels)
        return self._search(vector, plan, [timings])

    def search_id(self, gallery_id: int, plan: SearchPlan) -> dict[str, Any]:
        """Search with the stored embedding of a gallery image: no decoding, no forward pass (but for a text beside
        it)."""
        return self._search(self.check_id(gallery_id), plan, [])

    def search_text(self, text: str, plan: SearchPlan) -> dict[str, Any]:
        """Search with the text tower's embedding of `text` (checked by check_text); `decode_ms` is the tokenizing."""
        vector, timings = self._text_vector(text, "text")
        return self._search(vector, plan, [timings])

    def _text_vector(self, text: str, field_name: str) -> tuple[np.ndarray, QueryTimings]:
        try:
            return self.searcher.embed(text=text)
        except TextQueryError as exc:
            raise Invalid(str(exc), field_name) from None

    def examples(
        self, positive: str | None, negative: str | None, query_parts: int = 1
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The example ids of a request ("3,17"): each a gallery id, at most MAX_EXAMPLES with the `query_parts` (the
        image or id, and the texts) beside them (cheap: the event loop)."""
        sides = []
        for name, text in (("positive", positive), ("negative", negative)):
            try:
                ids = tuple(int(part) for part in (text or "").split(",") if part.strip())
            except ValueError:
                raise Invalid(f"{name} takes gallery ids separated by commas, e.g. 3,17; got {text!r}", name) from None
            sides.append(tuple(self.check_id(i, name) for i in ids))
        if sum(map(len, sides)) + query_parts > MAX_EXAMPLES:
            raise Invalid(f"at most {MAX_EXAMPLES} examples per query, the query and its texts included", "positive")
        return sides[0], sides[1]

    def rows_within(self, where: str | None) -> np.ndarray | None:
        """The rows a request's `where` (a JSON object, as `gallery.search(where=…)` takes) keeps; 422 when it is
        malformed or keeps nothing. Arrow matches the columns vectorised, so it runs before the compute job."""
        if not where:
            return None
        try:
            parsed = json.loads(where)
        except json.JSONDecodeError:
            raise Invalid(
                'where is a JSON object such as {"label": "cat", "split": "val", "path": "*/2024/*"}', "where"
            ) from None
        try:
            return self.searcher.rows_within(parsed)
        except LookalikeError as exc:
            raise Invalid(self.hide_paths(str(exc)), "where") from None

    def _search(self, query: np.ndarray | int, plan: SearchPlan, timings: list[QueryTimings]) -> dict[str, Any]:
        """hits as (id, score) pairs, search_ms, and decode_ms and embed_ms summed over the embedded parts (None when
        nothing was embedded: a gallery id); with plan.exact also `compare` (search.compare.Comparison).

        `query` is the query's vector, or a gallery id (its stored row). With texts or example ids in the plan, the
        vector searched is the API's several-examples rule (`Searcher.examples_vector`, `combine_examples`): the query
        and `plan.text` are positives beside `plan.positive`, `plan.negative_text` a negative beside `plan.negative`;
        without compare the example ids, the query's own included, are left out of the hits."""
        positives: list[np.ndarray | int] = [query]
        negatives: list[np.ndarray | int] = []
        for text, side, field_name in (
            (plan.text, positives, "text"),
            (plan.negative_text, negatives, "negative_text"),
        ):
            if text is not None:
                vector, spent = self._text_vector(text, field_name)
                side.append(vector)
                timings = [*timings, spent]
        positives += plan.positive
        negatives += plan.negative
        examples: set[int] = set()
        if len(positives) == 1 and not negatives:  # the plain query
            vector = query if isinstance(query, np.ndarray) else self.searcher.vector(query)
        else:
            try:
                vector, examples = self.searcher.examples_vector(positives, negatives, NEGATIVE_WEIGHT)
            except LookalikeError as exc:
                raise Invalid(str(exc), "negative" if negatives else "positive") from None
        embedded = {
            "decode_ms": sum(t.decode_ms for t in timings) if timings else None,
            "embed_ms": sum(t.embed_ms for t in timings) if timings else None,
        }
        if plan.exact is not None:
            comparison: Comparison = compare_search(
                self.gallery, plan.entry.method, plan.exact, vector, plan.k, plan.params, plan.rows
            )
            return {
                "hits": [(h.id, h.score) for h in comparison.hits],
                "search_ms": comparison.method_ms,
                "compare": comparison,
                **embedded,
            }
        t = time.perf_counter()
        method, want = plan.entry.method, plan.k + len(examples)
        if plan.rows is None:
            scores, ids = method.search(vector, want, plan.params or None)
        else:
            scores, ids = method.search_within(vector, want, plan.rows, plan.params or None)
        search_ms = 1000 * (time.perf_counter() - t)
        return {
            "hits": [(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0 and i not in examples][: plan.k],
            "search_ms": search_ms,
            "compare": None,
            **embedded,
        }

    def thumbnail(self, gallery_id: int) -> bytes:
        """A JPEG of at most thumb_px on its longest side, made once and kept in the LRU cache."""
        cached = self.thumbs.get(gallery_id)
        if cached is not None:
            return cached
        member = self.image_member(gallery_id)
        try:
            image = (
                load_rgb_bytes(member[0], max_pixels=self.config.max_pixels, name=self._paths[gallery_id])
                if member
                else load_rgb(self.image_path(gallery_id), max_pixels=self.config.max_pixels)
            )
        except BadImageError as exc:
            raise NotFound(self.hide_paths(f"the image of gallery id {gallery_id} cannot be read ({exc})")) from exc
        image.thumbnail((self.config.thumb_px, self.config.thumb_px))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        data = buffer.getvalue()
        self.thumbs.put(gallery_id, data)
        return data

    # -- the map (study.projection) --
    def gallery_map(self, method: str) -> dict[str, Any]:
        """The map's compact answer, made once per method and kept (the gallery's cache keeps it across restarts)."""
        with self._map_lock:
            if method not in self._maps:
                try:
                    self._maps[method] = encode_map(self.gallery, gallery_map(self.gallery, method))
                except LookalikeError as exc:
                    raise Invalid(str(exc), "method") from None
            return {**self._maps[method], "provenance": self.provenance(), "real": self.real}

    # -- near-duplicates (search.dupes) --
    def duplicate_threshold(self, preset: str | None, threshold: float | None) -> tuple[str | None, float]:
        """The preset and threshold a duplicate request asks for (cheap: runs on the event loop); a bad one is a 422."""
        try:
            return resolve_threshold(preset, threshold)
        except DuplicatesError as exc:
            raise Invalid(str(exc), "threshold" if threshold is not None else "preset") from None

    def cached_duplicates(self, preset: str | None, threshold: float) -> DuplicateReport | None:
        """The report of an earlier request at this threshold, if the LRU still holds it (cheap: the event loop)."""
        report = self.duplicate_reports.get((self.gallery.fingerprint, threshold))
        return None if report is None else replace(report, preset=preset)

    def duplicates(self, preset: str | None, threshold: float) -> DuplicateReport:
        """Groups of near-duplicates among every row (held-out queries and database alike), as answers show them.

        Computed once per (gallery fingerprint, threshold) and kept in an LRU, so moving the page's
        slider back is instant; the file check (one stat per file) runs with each computation, and a
        gallery whose files changed since extraction is a 409. `preset` only names the threshold.
        """
        cached = self.cached_duplicates(preset, threshold)
        if cached is not None:
            return cached
        try:
            report = self.shown_report(find_duplicates(self.gallery, None, threshold))
        except DuplicatesError as exc:
            raise Conflict(str(exc)) from None
        self.duplicate_reports.put((self.gallery.fingerprint, threshold), report)
        return replace(report, preset=preset)

    def shown_report(self, report: DuplicateReport) -> DuplicateReport:
        """`report` with paths relative to the collection and the gallery named by its folder, as every answer is."""
        name = self.gallery.path.name
        groups = tuple(
            replace(
                group,
                keep_gallery=name,
                members=tuple(replace(m, path=self._shown_paths[m.id], gallery=name) for m in group.members),
            )
            for group in report.groups
        )
        return replace(
            report,
            gallery=name,
            provenance=self.provenance(),
            groups=groups,
            notes=tuple(self.hide_paths(note) for note in report.notes),
        )

    # -- lookups --
    def image_member(self, gallery_id: int) -> tuple[bytes, str] | None:
        """(bytes, media type) of a webdataset sample's image, read from its tar; None for an ordinary file."""
        recorded = self._paths[self.check_id(gallery_id)]
        if not is_member_path(recorded) or os.path.isfile(recorded):
            return None
        try:
            member = find_member(recorded)
            return read_member(recorded), mimetypes.guess_type(member.name)[0] or "application/octet-stream"
        except OSError as exc:
            raise NotFound(
                f"the image of gallery id {gallery_id} cannot be read from its tar shard"
                f" ({self._shown_paths[gallery_id]}: {exc.strerror or type(exc).__name__}); the shard was moved,"
                " rewritten or deleted after extraction"
            ) from exc

    def image_path(self, gallery_id: int) -> Path:
        """The file behind a gallery id: paths come from the gallery's metadata, never from a request."""
        recorded = self._paths[self.check_id(gallery_id)]
        path = Path(recorded)
        if not path.is_file():
            if not has_image_file(recorded):
                raise NotFound(
                    f"gallery id {gallery_id} has no image: its embedding was written from an array"
                    f" ({self._shown_paths[gallery_id]}), not extracted from a file"
                )
            raise NotFound(
                f"the image file of gallery id {gallery_id} is missing ({self._shown_paths[gallery_id]}); the"
                " collection was moved or deleted after extraction"
            )
        return path

    def row(self, gallery_id: int) -> dict[str, Any]:
        """A gallery row as the API shows it: the path is relative to the collection root, never a server path."""
        return {
            "id": gallery_id,
            "path": self._shown_paths[gallery_id],
            "label": self._labels[gallery_id],
            "label_name": self._label_names[gallery_id],
            "split": self._splits[gallery_id],
        }

    def results(
        self, hits: list[tuple[int, float]], query_label: str | None, exact_ids: set[int] | None = None
    ) -> list[dict[str, Any]]:
        """Result rows as the API shows them; `in_exact` says whether each is among `exact_ids` (null when not
        comparing)."""
        out = []
        for rank, (gallery_id, score) in enumerate(hits, 1):
            row = self.row(gallery_id)
            same = None if not query_label or not row["label"] else row["label"] == query_label
            in_exact = None if exact_ids is None else gallery_id in exact_ids
            out.append({"rank": rank, **row, "score": score, "same_label": same, "in_exact": in_exact})
        return out

    # -- description --
    @property
    def real(self) -> bool:
        return self.gallery.is_real

    def warnings(self) -> list[str]:
        return [self.hide_paths(warning) for warning in self.gallery.manifest.warnings()]

    def provenance(self) -> str:
        """The gallery's provenance line as answers show it: folders by their names, never where they lie."""
        return self.hide_paths(self.gallery.provenance(names_only=True))

    def hide_paths(self, text: str) -> str:
        """`text` with the server's own folders (the gallery's, the collection's) replaced by their names.

        Answers are built from names in the first place; this catches what a message from a lower
        layer (an OSError, a decoder) may still carry."""
        for private, shown in self._hidden:
            text = text.replace(private, shown)
        return text

    def info(self) -> dict[str, Any]:
        """The manifest summary behind GET /api/gallery and the page's provenance panel."""
        m = self.gallery.manifest
        model, data = m.model, m.data
        return {
            "path": self.gallery.path.name,
            "model": model.name,
            "arch": model.arch,
            "dim": self.gallery.dim,
            "count": self.gallery.count,
            "image_size": model.image_size,
            "precision": model.precision_name,
            "backend": model.backend_name,
            "weights": {
                **model.weights.to_dict(),
                "source": Path(model.weights.source).name if model.weights.kind == "file" else model.weights.source,
            },
            "data": {
                "kind": data.kind,
                "root": data.shown_root(),
                "synthetic": data.synthetic,
                "splits": data.splits,
                "note": (data.generator or {}).get("note") or data.extra.get("note"),
            },
            "real": self.real,
            "provenance": self.provenance(),
            "warnings": self.warnings(),
            "fingerprint": self.gallery.fingerprint,
            "created": m.created,
            "database": self.searcher.describe_database(),
            "notes": [self.hide_paths(note) for note in self.notes],
            "has_labels": any(label for label in self._labels),
            "labels": sorted({label for label in self._labels if label})[:FILTER_LABELS],
            "uploads": self.embedder is not None,
            "text": self.no_text() is None,
            "text_note": self.no_text(),
            "text_backend": self.text_backend(),
            "exact_method": EXACT_METHOD,
            "default_method": {
                "method": self.default_method,
                "params": self.default_params(self.default_method),
                "reason": self.default.reason if self.default is not None else "too few rows to measure: exact search",
            },
            "methods": [describe_method(entry, self.config.max_k) for entry in self.methods.values()],
            "limits": {
                "max_k": self.config.max_k,
                "max_upload_bytes": self.config.max_upload_bytes,
                "max_pixels": self.config.max_pixels,
            },
            "threads": dict(self.job_threads),
            "compute_slots": self.config.compute_slots,
        }

    def text_backend(self) -> dict[str, str] | None:
        """The text tower's backend, precision and why (measured for this gallery here, see embed.text_choice); None
        before the first text query, or without a text tower."""
        record = None if self.embedder is None else self.embedder.text_inference
        if record is None:
            return None
        inference = record.inference
        return {"backend": inference.backend, "precision": inference.precision, "reason": inference.reason}

    def too_large_message(self, size: int | None = None) -> str:
        limit_mb = self.config.max_upload_bytes / 2**20
        got = f" ({size} bytes)" if size else ""
        return (
            f"the upload{got} is over the {limit_mb:g} MB limit; send a smaller image or start the server with a larger"
            " --max-upload-mb"
        )


def private_paths(gallery: Gallery) -> list[tuple[str, str]]:
    """(absolute folder, name shown instead) for the gallery's and the collection's folders, longest first.

    Both as recorded and resolved (a symlinked folder has two spellings), so `hide_paths` catches either."""
    pairs: dict[str, str] = {}
    root = gallery.manifest.data.root
    folders = [(gallery.path, gallery.path.name)]
    if root and os.path.isabs(root):
        folders.append((Path(root), Path(root).name))
    for folder, name in folders:
        for spelling in {str(folder.absolute()), os.path.realpath(folder)}:
            if len(spelling) > 1:  # never "/": it would mangle every path
                pairs[spelling] = name
    return sorted(pairs.items(), key=lambda pair: -len(pair[0]))
