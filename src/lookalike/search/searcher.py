"""Searching one gallery with any query form: an image file, image bytes, a PIL image, a vector, a gallery id or text.

Why a class: the query model and each search method are loaded once and kept, so a Python user
calling `gallery.search(...)` in a loop pays for them once, as the server does. The CLI, the API
(`Gallery.search`, `Gallery.compare`) and the server all query through a `Searcher`, so a query is
checked, embedded and searched the same way whatever door it came in by.

`searcher_for` keeps one searcher per gallery (by folder, content fingerprint and database), so
the front doors on `Gallery` stay stateless and `api.build_index` can tell the searchers of a
gallery that one of its indexes was rebuilt (`forget_index`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LookalikeError, TextQueryError
from ..gallery import Gallery
from .base import SearchMethod
from .compare import EXACT_METHOD, Comparison, compare_search, exact_twin
from .filters import FilterError, Where
from .hits import Hit, Query, Text, hits_of
from .storage import HELD_ROWS, database_rows, describe_database, get_method, held_rows, load_method

if TYPE_CHECKING:
    from ..embed.query import QueryEmbedder, QueryTimings

__all__ = [
    "Hit",
    "Query",
    "Text",
    "Searcher",
    "LoadedMethod",
    "hits_of",
    "searcher_for",
    "forget_index",
    "combine_examples",
    "NEGATIVE_WEIGHT",
    "MAX_EXAMPLES",
]

# Several examples per query (`search(positive=…, negative=…)`): the query is the normalised mean of the positives
# minus NEGATIVE_WEIGHT × the mean of the negatives (Rocchio's rule, as rclip and Qdrant's recommend API combine
# them), each example a unit vector first. At most MAX_EXAMPLES examples in all.
NEGATIVE_WEIGHT = 0.5
MAX_EXAMPLES = 32
FILTERS_KEPT = 32  # filters whose rows a searcher keeps (`rows_within`), least recent out
SEARCHERS_KEPT = 4  # galleries whose searcher (query model and methods) `searcher_for` keeps loaded, least recent out


@dataclass(frozen=True)
class LoadedMethod:
    """A method as a searcher holds it: loaded from the gallery's saved index, or built at first use."""

    name: str
    method: SearchMethod
    saved: bool  # loaded from <gallery>/indexes/ (False: built now over the searched rows)
    load_seconds: float
    note: str | None = None  # why a saved index of this name was not used (it holds other rows)


class Searcher:
    """One gallery's query model and search methods over one database, loaded on first use and shared by later calls.

    `database` ("all" or "heldout", see `search.storage.DATABASES`) chooses the rows searched;
    `threads` is the inference threads of the query model (None: the library default). `engine`
    turns each loaded method into the one searched (`lookalike.distributed.fan_out` spreads an
    ivfpq-ondisk index over Ray actors); None searches in this process. The exact search a
    method is compared with always runs here.
    """

    def __init__(
        self,
        gallery: Gallery,
        device: str = "cpu",
        database: str = "all",
        threads: int | None = None,
        engine: Callable[[SearchMethod, Gallery], SearchMethod] | None = None,
    ):
        from ..runtime import configure_faiss

        configure_faiss()  # the library's FAISS settings, explicitly (the CLI applies them with its threads)
        self.gallery = gallery
        self.device = device
        self.database = database
        self.database_ids = database_rows(gallery, database)  # checks the name
        self.threads = threads
        self.engine = engine
        self._embedder: QueryEmbedder | None = None
        self._methods: dict[tuple[str, str], LoadedMethod] = {}
        self._exact: dict[tuple[str, str], SearchMethod] = {}  # (method, metric) → the exact search it is compared with
        self._lock = threading.Lock()
        self._embedder_lock = threading.Lock()
        self._filtered: OrderedDict[Where, np.ndarray] = OrderedDict()  # a filter → its rows (`rows_within`)

    def describe_database(self) -> str:
        """What this searcher searches, in words ("all 1899 images", or which rows are left out and why)."""
        return describe_database(self.gallery, self.database)

    # -- query → vector --
    def no_model(self) -> str | None:
        """Why no image can be embedded like this gallery's rows (no model made them), or None when one can."""
        from ..embed.registry import MODELS

        if self.gallery.manifest.weights.kind == "none" or self.gallery.model not in MODELS:
            return (
                f"this gallery's embeddings were generated without a model ({self.gallery.model}), so an image cannot"
                " be embedded like them; query by gallery id or vector"
            )
        return None

    @property
    def embedder(self) -> QueryEmbedder:
        """The gallery's own model, weights and preprocessing (embed.query.QueryEmbedder), loaded once."""
        if self._embedder is None:
            reason = self.no_model()
            if reason is not None:
                raise LookalikeError(reason)
            from ..embed.query import QueryEmbedder

            with self._embedder_lock:
                if self._embedder is None:
                    self._embedder = QueryEmbedder(self.gallery, self.device, self.threads)
        return self._embedder

    def no_text(self) -> str | None:
        """Why this gallery cannot be searched by text, or None when it can (the registry says, before loading)."""
        from ..embed.registry import MODELS
        from ..embed.text import no_text_message

        spec = MODELS.get(self.gallery.model)
        if spec is None or not spec.has_text or self.no_model() is not None:
            return no_text_message(self.gallery.model)
        if self._embedder is not None and self._embedder.text is None:
            return self._embedder.no_text or "this gallery's model cannot embed text"
        return None

    def check_text(self, text: str) -> None:
        """TextQueryError unless `text` can be searched: the model has a text tower, and the text is a string that fits
        it."""
        reason = self.no_text()
        if reason is not None:
            raise TextQueryError(reason)
        if not isinstance(text, str):
            raise TextQueryError(f"text must be a string, not a {type(text).__name__}")
        self.embedder.check_text(text)

    def check_id(self, gallery_id: int) -> int:
        """`gallery_id` when the gallery has such a row, else LookalikeError naming the range."""
        if not 0 <= gallery_id < self.gallery.count:
            raise LookalikeError(f"no gallery image with id {gallery_id}; ids run from 0 to {self.gallery.count - 1}")
        return int(gallery_id)

    def embed(
        self, query: Query | None = None, text: str | None = None, max_pixels: int | None = None
    ) -> tuple[np.ndarray, QueryTimings | None]:
        """(1, d) float32 unit vector of any query form, with its decode and embed times (None for an id or a vector).

        `max_pixels` caps a decoded image (the server's upload limit); None keeps the library's default.
        """
        limit = {} if max_pixels is None else {"max_pixels": max_pixels}
        if text is not None:
            if query is not None:
                raise LookalikeError("give either a query (image, vector or gallery id) or text, not both")
            self.check_text(text)
            return self.embedder.embed_text(text)
        if query is None:
            raise LookalikeError(
                "nothing to search with: pass a query (an image path, image bytes, a PIL image, a vector or a gallery"
                " id) or text=..."
            )
        if isinstance(query, Text):
            return self.embed(text=query.text)
        if isinstance(query, (bool, np.bool_)):
            raise LookalikeError("a query is an image path, a PIL image, a vector or a gallery id, not a bool")
        if isinstance(query, (int, np.integer)):
            gallery_id = self.check_id(int(query))
            return np.array(self.gallery.embeddings[gallery_id : gallery_id + 1], dtype=np.float32), None
        if isinstance(query, np.ndarray):
            return self._checked_vector(query), None
        if isinstance(query, (bytes, bytearray)):
            return self.embedder.embed_bytes(bytes(query), **limit)
        if isinstance(query, (str, os.PathLike)):
            if not os.path.isfile(query):
                raise LookalikeError(f"query image {os.fspath(query)!r} does not exist or is not a file")
            return self.embedder.embed_path(os.fspath(query), **limit)
        from PIL import Image

        if isinstance(query, Image.Image):
            return self.embedder.embed_image(query.convert("RGB"))
        raise LookalikeError(
            f"cannot search with a {type(query).__name__}; pass an image path, image bytes, a PIL image, a numpy vector"
            " or a gallery id"
        )

    def vector(self, query: Query | None = None, text: str | None = None) -> np.ndarray:
        """(1, d) float32 unit vector for any query form, or for `text` with a model that has a text tower (CLIP)."""
        return self.embed(query, text)[0]

    def text_vector(self, text: str) -> np.ndarray:
        """(1, d) unit vector of `text` from the text tower of the gallery's own model, or TextQueryError.

        A gallery of a model without a text tower is refused from the registry, before any model is loaded."""
        return self.embed(text=text)[0]

    def _checked_vector(self, query: np.ndarray) -> np.ndarray:
        vector = (
            np.asarray(query, dtype=np.float32).reshape(1, -1)
            if query.ndim == 1
            else np.asarray(query, dtype=np.float32)
        )
        if vector.shape != (1, self.gallery.dim):
            raise LookalikeError(
                f"a query vector must have shape ({self.gallery.dim},) or (1, {self.gallery.dim}) for this gallery, got"
                f" {query.shape}"
            )
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise LookalikeError("the query vector is zero or not finite; it has no direction to search along")
        return vector / norm  # the gallery holds unit vectors: cosine is the inner product only for unit queries

    # -- methods --
    def loaded(self, name: str, metric: str = "ip", build: bool = True) -> LoadedMethod:
        """The method `name` over this searcher's rows: the saved index when it holds them, else (named methods, with
        `build`) the method built now; kept for later calls.

        With `build=False` a saved index over other rows is refused (IndexMismatchError) instead of rebuilt: the
        server does so for the indexes it only offers because they are saved.
        """
        key = (name, metric)
        with self._lock:
            if key not in self._methods:
                started = time.perf_counter()
                if build:
                    method, built = get_method(self.gallery, name, metric, self.database_ids)
                else:
                    method, built = load_method(self.gallery, name, metric, self.database_ids), False
                held = held_rows(self.gallery, name, metric) if built else None
                note = None
                if held is not None:
                    why = (
                        f"it holds {HELD_ROWS.get(held, held)}"
                        if held != self.database
                        else "it was built for another version of the gallery"
                    )
                    note = f"the saved index {name} was not used ({why}); built now over {self.describe_database()}"
                if self.engine is not None and name != EXACT_METHOD:
                    method = self.engine(method, self.gallery)
                self._methods[key] = LoadedMethod(name, method, not built, time.perf_counter() - started, note)
            return self._methods[key]

    def method(self, name: str, metric: str = "ip") -> SearchMethod:
        """The saved index `name` when the gallery has one over the searched rows, else the method built now over
        them."""
        return self.loaded(name, metric).method

    def forget(self, name: str, metric: str = "ip") -> None:
        """Drop a cached method, e.g. after its index was rebuilt and saved."""
        with self._lock:
            self._methods.pop((name, metric), None)
            self._exact.pop((name, metric), None)

    def exact(self, method: SearchMethod) -> SearchMethod:
        """The exact search `method` is compared with: brute force over its very rows (see compare.exact_twin), kept."""
        key = (method.name, method.metric)
        with self._lock:
            known = self._exact.get(key)
        if known is None:
            # outside the lock: making it may load or build methods through self.method
            known = exact_twin(self.gallery, method, self.method(EXACT_METHOD, method.metric))
            with self._lock:
                known = self._exact.setdefault(key, known)
        return known

    # -- the search --
    def search(
        self,
        query: Query | None = None,
        k: int = 10,
        method: str = "flat",
        metric: str = "ip",
        *,
        text: str | None = None,
        positive: Sequence[Query] = (),
        negative: Sequence[Query] = (),
        alpha: float | None = None,
        where: Mapping[str, Any] | Where | None = None,
        **params: Any,
    ) -> list[Hit]:
        """The k nearest gallery images to `query` (or `text`), best first; `params` (nprobe, efSearch, k_factor) apply
        to this call only.

        With `positive` and `negative` examples (any query form; `Text("…")` for a text), or both `query` and
        `text` ("this image, but at night"), `query` and `text` count as positives, and the vector searched is
        `combine_examples`'. Gallery ids given as examples are left out of the results: the person has them.

        `where` ({"label": …, "split": …, "path": glob, "mtime": (lo, hi), "ids": […]}, see `filters.Where`) searches
        only the rows it keeps (`SearchMethod.search_within`)."""
        rows = self.rows_within(where)
        if not positive and not negative and (query is None or text is None):
            vector, examples = self.vector(query, text), set()
        else:
            positives = [
                *([query] if query is not None else []),
                *([Text(text)] if text is not None else []),
                *positive,
            ]
            weight = NEGATIVE_WEIGHT if alpha is None else alpha
            vector, examples = self.examples_vector(positives, list(negative), weight)
        chosen = self.method(method, metric)
        want = k + len(examples)
        if rows is None:
            scores, ids = chosen.search(vector, want, params or None)
        else:
            scores, ids = chosen.search_within(vector, want, rows, params or None)
        if not examples:  # the plain query: nothing to leave out
            return self.hits(scores[0], ids[0])
        keep = ~np.isin(ids[0], list(examples))
        return self.hits(scores[0][keep][:k], ids[0][keep][:k])

    def rows_within(self, where: Mapping[str, Any] | Where | None) -> np.ndarray | None:
        """The searched rows a filter keeps (None: no filter); FilterError when it keeps none of them."""
        parsed = Where.parse(where)
        if parsed is None:
            return None
        rows = self._filtered.get(parsed)
        if rows is None:  # evaluated once per filter: a person refining a query keeps it, and so do the pages after
            rows = np.intersect1d(parsed.rows(self.gallery), self.database_ids)
            if not len(rows):
                raise FilterError(f"no image searched here matches the filter ({parsed.describe()}); loosen it")
            rows.flags.writeable = False
            with self._lock:
                self._filtered[parsed] = rows
                while len(self._filtered) > FILTERS_KEPT:
                    self._filtered.popitem(last=False)
        return rows

    def examples_vector(
        self, positive: Sequence[Query], negative: Sequence[Query], alpha: float = NEGATIVE_WEIGHT
    ) -> tuple[np.ndarray, set[int]]:
        """The (1, d) unit vector of several examples (`combine_examples`), and the gallery ids among them."""
        if not positive:
            raise LookalikeError(
                "a query needs at least one positive example (an image, a gallery id or a text); negatives only say"
                " what to move away from"
            )
        if len(positive) + len(negative) > MAX_EXAMPLES:
            raise LookalikeError(
                f"at most {MAX_EXAMPLES} examples per query, got {len(positive) + len(negative)}; keep the ones that"
                " matter most"
            )
        if not np.isfinite(alpha) or alpha < 0:
            raise LookalikeError(f"alpha weighs the negatives and must be ≥ 0, got {alpha}")
        rows = [np.vstack([self.vector(q) for q in side]) if side else None for side in (positive, negative)]
        ids = {int(q) for q in (*positive, *negative) if isinstance(q, (int, np.integer)) and not isinstance(q, bool)}
        return combine_examples(rows[0], rows[1], alpha), ids

    def compare(
        self,
        query: Query | None = None,
        k: int = 10,
        method: str = "ivf",
        metric: str = "ip",
        *,
        text: str | None = None,
        where: Mapping[str, Any] | Where | None = None,
        **params: Any,
    ) -> Comparison:
        """`query` (or `text`) searched with `method` and with exact search over the same rows (search.compare); with
        `where`, both over the rows it keeps: the method's recall under the filter."""
        vector = self.vector(query, text)
        chosen = self.method(method, metric)
        return compare_search(self.gallery, chosen, self.exact(chosen), vector, k, params, self.rows_within(where))

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        """Hits for one query's (scores, ids); −1 ids (fewer results than k) are dropped."""
        return hits_of(self.gallery, scores, ids)


def combine_examples(positive: np.ndarray, negative: np.ndarray | None, alpha: float = NEGATIVE_WEIGHT) -> np.ndarray:
    """normalise(mean(positive) − alpha · mean(negative)) as a (1, d) float32 row; the rows are unit vectors.

    LookalikeError when the examples cancel out (nothing is left to search along)."""
    combined = positive.mean(axis=0) - (alpha * negative.mean(axis=0) if negative is not None else 0.0)
    norm = float(np.linalg.norm(combined))
    if not np.isfinite(norm) or norm < 1e-6:
        raise LookalikeError("the positive and negative examples cancel out: nothing is left to search along")
    return (combined / norm).astype(np.float32).reshape(1, -1)


_SEARCHERS: OrderedDict[tuple[str, str, str], Searcher] = OrderedDict()
_SEARCHERS_LOCK = threading.Lock()


def searcher_for(gallery: Gallery, database: str = "all") -> Searcher:
    """The searcher of `gallery` over `database`, made once and kept (for the SEARCHERS_KEPT most recent galleries).

    Keyed by the gallery's folder and content fingerprint, so a gallery opened twice shares one
    query model, and an updated gallery (a new fingerprint) never gets the searcher of its old rows.
    """
    key = (os.path.realpath(gallery.path), gallery.fingerprint, database)
    with _SEARCHERS_LOCK:
        searcher = _SEARCHERS.get(key)
        if searcher is not None:
            _SEARCHERS.move_to_end(key)
            return searcher
    searcher = Searcher(gallery, database=database)  # outside the lock: the partition of a big gallery takes a while
    with _SEARCHERS_LOCK:
        searcher = _SEARCHERS.setdefault(key, searcher)
        _SEARCHERS.move_to_end(key)
        while len(_SEARCHERS) > SEARCHERS_KEPT:
            _SEARCHERS.popitem(last=False)
    return searcher


def forget_index(gallery: Gallery, name: str, metric: str = "ip") -> None:
    """Tell every kept searcher of `gallery` that its index `name` was rebuilt: the next search loads the new one."""
    folder = os.path.realpath(gallery.path)
    with _SEARCHERS_LOCK:
        searchers = [s for (path, _, _), s in _SEARCHERS.items() if path == folder]
    for searcher in searchers:
        searcher.forget(name, metric)
