"""The FastAPI app of `lookalike serve`: a JSON API over one gallery and the single page that uses it.

    POST /api/search             multipart: image (file), id or text (CLIP: an image or id and a text together);
                                 positive/negative ids, negative_text; method, k, nprobe/efSearch/k_factor,
                                 compare, where → results + latency
    GET  /api/images/{id}        the original image file of a gallery id
    GET  /api/images/{id}/thumb  a JPEG thumbnail (made once, then cached)
    GET  /api/gallery            manifest summary, provenance, methods and their parameter ranges
    GET  /api/duplicates         near-duplicate groups among every row (threshold or preset; format json or csv)
    GET  /healthz                liveness
    GET  /openapi.json           the API description (FastAPI's /docs page is off: it loads from a CDN)
    GET  /                       the page (static/, no build step, nothing fetched from outside)

Every failure is a JSON `ErrorBody` with a 4xx status; a 500 would be a bug. CPU-heavy work
runs in worker threads behind one limiter (see service.py and docs/server.md).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which use their enclosing
# function's locals.
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadImageError, LookalikeError
from ..search.dupes import PRESETS, resolve_threshold
from ..search.registry import PARAMS
from .schemas import (
    Comparison,
    DuplicatesResponse,
    ErrorBody,
    GalleryInfo,
    Health,
    QueryInfo,
    SearchResponse,
    SearchTimings,
)
from .service import Invalid, RequestError, SearchService, ServerConfig, TooLarge

log = logging.getLogger(__name__)

STATIC_DIR = FilePath(__file__).parent / "static"
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small text fields beside the image
IMAGE_CACHE = {"Cache-Control": "public, max-age=3600"}  # a gallery does not change while it is served
# The page may load only what this server serves: a stray CDN link would fail here as it would offline.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
}
UPLOAD_EXTENSIONS_HINT = "upload a JPEG, PNG, WebP or BMP image"


def create_app(gallery_dir: str | FilePath, config: ServerConfig | None = None) -> FastAPI:
    """Load the gallery, model and methods (GalleryError if anything is missing or inconsistent), then build the app."""
    return build_app(SearchService.load(gallery_dir, config))


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    reasons = {
        400: "unreadable image, or both an image and an id",
        415: "a JSON body: the query is sent as form fields",
        404: "unknown gallery id, or its image file is missing",
        409: "the gallery's files changed or vanished since extraction (duplicates are checked against them)",
        413: "upload over the size limit",
        422: (
            "missing or invalid field: unknown method, k or a search parameter out of range, empty or over-long text,"
            " text for a model without a text tower, wrong type"
        ),
    }
    return {code: {"model": ErrorBody, "description": reasons[code]} for code in codes}


def _error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        ErrorBody(error=message, status=status, field=field).model_dump(), status_code=status, headers=headers
    )


class BodyTooLarge(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(413, "request body over the limit")


class UploadSizeLimit:
    """Refuse request bodies over a route's limit with a 413, without ever buffering them whole.

    A declared Content-Length over the limit is refused before reading; a body without one
    (chunked) is counted while the form parser reads it. The rest of the body is then read
    and dropped (up to DRAIN_BYTES) before answering: closing a socket with unread data makes
    the kernel send a reset, and clients that write the whole body before reading (httpx,
    requests) would lose the 413 and see a broken connection instead. A client that sent
    `Expect: 100-continue` (curl) gets the 413 before it sends the body at all.
    """

    DRAIN_BYTES = 64 * 2**20

    def __init__(self, app: ASGIApp, limits: dict[str, int], message: str):
        self.app = app
        self.limits = limits
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            if headers.get("expect", "").lower() != "100-continue" and int(declared) <= self.DRAIN_BYTES:
                await self._drain(receive, int(declared))
            await _error(413, self.message, "image", headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if message.get("more_body"):
                        await self._drain(receive, self.DRAIN_BYTES)
                    raise BodyTooLarge()  # an HTTPException: FastAPI re-raises it from form parsing, on_http answers
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _drain(receive: Receive, budget: int) -> None:
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            budget -= len(message.get("body", b""))


class LoopbackHostOnly:
    """Refuse requests whose Host header is not one of `allowed` (any port): DNS-rebinding protection.

    A page on evil.example can make a browser resolve its own name to 127.0.0.1 and then read
    this server's answers as same-origin; the browser still sends `Host: evil.example`, so a
    server meant for this machine only answers to its loopback names.
    """

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]):
        self.app = app
        self.allowed = {name.lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host", "")
            if host_name(host) not in self.allowed:
                shown = host[:100] or "(none)"
                message = (
                    f"Host {shown!r} is not this server's loopback address; open it as http://127.0.0.1:<port>/ or "
                    "http://localhost:<port>/ (other host names are refused to block DNS rebinding; start with "
                    "--host and --allow-remote to serve other names)"
                )
                await _error(400, message, "host")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """The name part of a Host header, lower-cased: 'LocalHost:8000' → 'localhost', '[::1]:80' → '[::1]'."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.split(":", 1)[0]


class ComputeSlots:
    """CPU-heavy jobs run in worker threads, at most `slots` at once; waiting requests queue on the event loop."""

    def __init__(self, service: SearchService):
        self.service = service
        self.limiter = anyio.CapacityLimiter(service.config.compute_slots)

    async def run(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        """Run `fn(*args)` once a slot is free; also return the wait in ms."""
        queued = time.perf_counter()

        def job() -> tuple[Any, float]:
            started = time.perf_counter()
            # sets the threads in this worker thread (OpenMP's are per thread)
            return (self.service.run_job(fn, *args), started)

        result, started = await anyio.to_thread.run_sync(job, limiter=self.limiter)
        return result, 1000 * (started - queued)


def build_app(service: SearchService) -> FastAPI:
    """The app: middleware, JSON error handlers, the API routes and the page, over one loaded service."""
    info = GalleryInfo(**service.info())  # computed once: methods' memory_bytes serialises each index
    app = _new_app(service)
    _add_error_handlers(app, service)
    _add_api(app, service, info, ComputeSlots(service))
    _add_page(app)
    return app


def _new_app(service: SearchService) -> FastAPI:
    config = service.config
    app = FastAPI(
        title="lookalike",
        version=_version(),
        summary="Image similarity search over one gallery.",
        description=(
            f"Serving `{service.gallery.path.name}`: {service.provenance()}.\n\n"
            "Every error is a JSON `ErrorBody` with a 4xx status. The interactive /docs page is disabled "
            "because it loads Swagger UI from a CDN; read this document, or open it in any OpenAPI viewer."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        form_limits={"max_files": 1, "max_fields": 16},
    )
    app.state.service = service
    search_body_limit = config.max_upload_bytes + FORM_OVERHEAD_BYTES
    app.add_middleware(UploadSizeLimit, limits={"/api/search": search_body_limit}, message=service.too_large_message())
    if config.allowed_hosts is not None:
        app.add_middleware(LoopbackHostOnly, allowed=config.allowed_hosts)  # added last: runs first
    return app


def _add_error_handlers(app: FastAPI, service: SearchService) -> None:
    """Every failure is a JSON ErrorBody of one sentence; an unexpected one is logged, not echoed."""

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, service.hide_paths(str(exc)), exc.field)

    @app.exception_handler(BadImageError)
    async def on_bad_image(request: Request, exc: BadImageError) -> JSONResponse:
        reason = service.hide_paths(str(exc).removesuffix("; remove or replace the file"))
        return _error(400, f"{reason}; {UPLOAD_EXTENSIONS_HINT}", "image")

    @app.exception_handler(LookalikeError)
    async def on_lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        return _error(400, service.hide_paths(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, field = [], None
        for err in exc.errors():
            loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path", "form", "header")]
            name = ".".join(loc) or "request"
            field = field or name
            problems.append(f"{name}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid request — " + "; ".join(problems), field)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:
            message, field = service.too_large_message(), "image"
        elif exc.status_code == 404:
            message, field = (
                f"no such endpoint: {request.method} {request.url.path}; the API is described at /openapi.json",
                None,
            )
        elif exc.status_code == 405:
            message, field = f"{request.method} is not allowed on {request.url.path}; see /openapi.json", None
        else:
            message, field = str(exc.detail), None
        return _error(exc.status_code, message, field, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The text of an unexpected exception can hold paths and internals: it goes to the log only,
        # under a reference the client can quote.
        reference = uuid.uuid4().hex[:12]
        log.error("unexpected error %s on %s %s", reference, request.method, request.url.path, exc_info=exc)
        return _error(
            500,
            f"internal error (reference {reference}); this is a bug in lookalike, please report it with the server log",
        )


def _add_api(app: FastAPI, service: SearchService, info: GalleryInfo, compute: ComputeSlots) -> None:
    config = service.config

    @app.post(
        "/api/search",
        response_model=SearchResponse,
        responses=_errors(400, 404, 413, 415, 422),
        summary=(
            "Find the gallery images nearest to an uploaded image, a gallery image or a text (CLIP galleries), or to"
            " several examples at once"
        ),
    )
    async def search(
        request: Request,
        image: Annotated[
            UploadFile | None,
            File(
                description=(f"the query image; give this or id, and/or text (at most {config.max_upload_bytes} bytes)")
            ),
        ] = None,
        gallery_id: Annotated[
            int | None,
            Form(
                alias="id", description="a gallery id to search from (its stored embedding; no decoding or embedding)"
            ),
        ] = None,
        text: Annotated[
            str | None,
            Form(
                description=(
                    "a text query, e.g. 'a red car', embedded by the text tower of the gallery's model (CLIP galleries"
                    " only; at most its context of 77 tokens); beside an image or id it is one more positive example:"
                    " image + 'at night' searches 'this image, but at night'"
                )
            ),
        ] = None,
        method: Annotated[
            str | None,
            Form(
                description=(
                    "brute, flat, ivf or a saved index; see GET /api/gallery (default: its default_method, measured on"
                    " this gallery at start)"
                )
            ),
        ] = None,
        k: Annotated[int, Form(description="results wanted; 1..min(max_k, method's ntotal)")] = 10,
        nprobe: Annotated[
            int | None,
            Form(
                description=(
                    f"{PARAMS['nprobe'].meaning}; within the method's param_ranges (GET /api/gallery); default: the"
                    " method's own"
                )
            ),
        ] = None,
        ef_search: Annotated[
            int | None,
            Form(
                alias="efSearch",
                description=(
                    f"{PARAMS['efSearch'].meaning}; within the method's param_ranges; default: the method's own"
                ),
            ),
        ] = None,
        k_factor: Annotated[
            int | None,
            Form(
                description=f"{PARAMS['k_factor'].meaning}; within the method's param_ranges; default: the method's own"
            ),
        ] = None,
        compare: Annotated[
            str | None,
            Form(
                description=(
                    "exact: also search exactly over the same rows and report recall@k, the missed ids and both"
                    " latencies"
                )
            ),
        ] = None,
        positive: Annotated[
            str | None,
            Form(
                description=(
                    "gallery ids, comma-separated: more examples like the query; the query searched is"
                    " normalise(mean(query, text and positives) − 0.5 × mean(negatives and negative_text)), and the"
                    " example ids are left out of the results"
                )
            ),
        ] = None,
        negative: Annotated[
            str | None,
            Form(description="gallery ids, comma-separated: examples the results should not look like"),
        ] = None,
        negative_text: Annotated[
            str | None,
            Form(
                description=(
                    "a text the results should not look like, a negative example beside the query (CLIP galleries"
                    " only), e.g. image + negative_text 'at night'"
                )
            ),
        ] = None,
        where: Annotated[
            str | None,
            Form(
                description=(
                    'a JSON object: search only the rows it keeps, e.g. {"label": "cat", "split": "val", "path":'
                    ' "*/2024/*", "mtime": ["2024-01-01", null], "ids": [1, 2]} (every condition must hold)'
                )
            ),
        ] = None,
    ) -> SearchResponse:
        started = time.perf_counter()
        if request.headers.get("content-type", "").startswith("application/json"):
            raise RequestError(
                "send the query as multipart/form-data fields (image, id or text, method, k, nprobe), not as JSON",
                "image",
                status=415,
            )
        if image is not None and gallery_id is not None:
            raise RequestError(
                "give one image to search from — an upload or a gallery id — not both image and id; send more gallery"
                " ids as positive examples",
                "id",
            )
        form = await request.form()
        for name in ("text", "negative_text"):
            if form.get(name) == "":  # FastAPI reads an empty form field as absent: an empty text is refused
                service.check_text("", name)  # raises: the gallery has no text tower, or the text is empty
        for name, value in (("text", text), ("negative_text", negative_text)):
            if value is not None:
                service.check_text(value, name)  # cheap (text over the context's length is refused untokenized)
        if image is None and gallery_id is None and text is None:
            raise Invalid(
                "missing query: send an image file in field 'image', a gallery id in field 'id' or a text in field"
                " 'text'" + (" (negative_text only says what to move away from)" if negative_text is not None else ""),
                "image",
            )
        plan = service.plan(method, k, {"nprobe": nprobe, "efSearch": ef_search, "k_factor": k_factor}, compare)
        parts = sum(value is not None for value in (image, gallery_id, text, negative_text))
        examples = service.examples(positive, negative, parts)
        plan = replace(
            plan,
            positive=examples[0],
            negative=examples[1],
            negative_text=negative_text,
            text=text if image is not None or gallery_id is not None else None,  # a text alone is the query itself
            rows=service.rows_within(where),
        )
        query_label = None
        if image is not None:
            service.check_uploads()
            if image.size is not None and image.size > config.max_upload_bytes:
                raise TooLarge(service.too_large_message(image.size), "image")
            data = await image.read()
            outcome, wait_ms = await compute.run(service.search_upload, data, plan)
            query = QueryInfo(kind="upload", filename=image.filename, bytes=len(data), text=text)
        elif gallery_id is not None:
            service.check_id(gallery_id)
            outcome, wait_ms = await compute.run(service.search_id, gallery_id, plan)
            row = service.row(gallery_id)
            query, query_label = (
                QueryInfo(kind="id", text=text, **{k_: row[k_] for k_ in ("id", "label", "label_name", "path")}),
                row["label"],
            )
        else:
            outcome, wait_ms = await compute.run(service.search_text, text, plan)
            query = QueryInfo(kind="text", text=text)
        latency = SearchTimings(
            decode_ms=outcome["decode_ms"],
            embed_ms=outcome["embed_ms"],
            search_ms=outcome["search_ms"],
            wait_ms=wait_ms,
            total_ms=1000 * (time.perf_counter() - started),
        )
        compared = outcome["compare"]
        return SearchResponse(
            query=query,
            method=plan.entry.name,
            metric=plan.entry.method.metric,
            params=plan.effective_params(),
            k=plan.k,
            results=service.results(
                outcome["hits"], query_label, None if compared is None else {h.id for h in compared.exact_hits}
            ),
            latency_ms=latency,
            positive=list(plan.positive),
            negative=list(plan.negative),
            negative_text=plan.negative_text,
            compare=(
                None
                if compared is None
                else Comparison(
                    exact_method=compared.exact_method,
                    exact_results=service.results([(h.id, h.score) for h in compared.exact_hits], query_label),
                    recall=compared.recall,
                    missed_ids=list(compared.missed),
                    method_ms=compared.method_ms,
                    exact_ms=compared.exact_ms,
                )
            ),
            provenance=info.provenance,
            real=info.real,
            warnings=info.warnings,
        )

    image_responses = {200: {"content": {"image/*": {}}, "description": "the image"}, **_errors(404, 422)}

    @app.get(
        "/api/images/{id}",
        response_class=FileResponse,
        responses=image_responses,
        summary="The original image file of a gallery id",
    )
    async def image_file(gallery_id: Annotated[int, Path(alias="id")]) -> Response:
        member = service.image_member(gallery_id)  # a webdataset sample: its bytes come from the tar
        if member is not None:
            return Response(member[0], media_type=member[1], headers=IMAGE_CACHE)
        return FileResponse(service.image_path(gallery_id), headers=IMAGE_CACHE)

    @app.get(
        "/api/images/{id}/thumb",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "the thumbnail"}, **_errors(404, 422)},
        summary="A JPEG thumbnail of a gallery image",
    )
    async def image_thumb(gallery_id: Annotated[int, Path(alias="id")]) -> Response:
        service.check_id(gallery_id)
        data = service.thumbs.get(gallery_id)
        if data is None:
            data, _ = await compute.run(service.thumbnail, gallery_id)
        return Response(data, media_type="image/jpeg", headers=IMAGE_CACHE)

    @app.get(
        "/api/duplicates",
        response_model=DuplicatesResponse,
        responses={
            200: {"content": {"text/csv": {}}, "description": "the report (JSON), or one CSV row per member"},
            **_errors(409, 422),
        },
        summary="Groups of near-duplicate images among every row of the gallery, with a suggested keeper each",
    )
    async def duplicates(
        threshold: Annotated[
            float | None,
            Query(
                description=(
                    "in (0, 1] on the normalised score (1: the same vector, 0: as alike as a typical 10th neighbour);"
                    " overrides preset"
                )
            ),
        ] = None,
        preset: Annotated[
            str | None, Query(description=f"one of {', '.join(PRESETS)} (default: the library's default preset)")
        ] = None,
        answer_format: Annotated[
            Literal["json", "csv"], Query(alias="format", description="json (default) or csv (one row per member)")
        ] = "json",
    ) -> Response | DuplicatesResponse:
        preset, threshold = service.duplicate_threshold(preset, threshold)
        report = service.cached_duplicates(preset, threshold)  # a slider moved back: no compute job
        if report is None:
            report, _ = await compute.run(service.duplicates, preset, threshold)
        if answer_format == "csv":
            return Response(
                report.to_csv(),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="duplicates-{threshold:g}.csv"'},
            )
        answer = report.to_json()
        for group in answer["groups"]:
            for member in group["members"]:
                row = service.row(member["id"])
                member |= {
                    "thumb": f"/api/images/{member['id']}/thumb",
                    "image": f"/api/images/{member['id']}",
                    **{key: row[key] for key in ("split", "label", "label_name")},
                }
        return DuplicatesResponse(**answer, presets=PRESETS, default_preset=resolve_threshold(None, None)[0])

    @app.get(
        "/api/map",
        responses=_errors(422),
        summary="Every row of the gallery placed in 2-D (PCA, or UMAP), compact: uint16 grid positions in base64",
    )
    async def gallery_map(
        method: Annotated[
            Literal["pca", "umap"], Query(description="pca (default: exact, fast at any size) or umap (the map extra)")
        ] = "pca",
    ) -> dict[str, Any]:
        """Row i is gallery id i: `x` and `y` are little-endian uint16 positions on a `grid` × `grid` square and
        `label_index` indexes `labels` (`grid`: no label), each base64. Computed once per gallery content and
        cached beside it (an update gets a new map)."""
        answer, _ = await compute.run(service.gallery_map, method)
        return answer

    @app.get(
        "/api/gallery",
        response_model=GalleryInfo,
        summary="The gallery's manifest summary, provenance and search methods",
    )
    async def gallery_info() -> GalleryInfo:
        return info

    @app.get("/healthz", response_model=Health, summary="Liveness: the gallery, model and methods are loaded")
    async def healthz() -> Health:
        return Health(
            status="ok",
            gallery=service.gallery.path.name,
            count=service.gallery.count,
            methods=list(service.methods),
            real=info.real,
        )


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _version() -> str:
    try:
        return metadata.version("lookalike")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
