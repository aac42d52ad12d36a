"""Inference backends: one module, several ways to run it.

A backend maps a batch of model-input pixels (B, S, S, 3 uint8, as `transforms.PixelTransform` crops them) to
L2-normalised float32 embeddings. The conversion to float, the normalisation and the change to the model's
layout run inside the backend, not on the decode side: `torch` in one step on the device the model runs on (a GPU
gets a quarter of the bytes float32 would take), `openvino` in the compiled graph (its PrePostProcessor). `torch`
runs the module eagerly (CUDA when the embedder is on a GPU); `openvino` converts it once to OpenVINO IR, cached
on disk, and runs it on the CPU plugin. Which backend and
precision a job uses is decided by measurement (`embed.calibrate`), never assumed: on one CPU
bf16 autocast doubles a CNN's speed and slows CLIP down.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from ..errors import BackendUnavailable, LookalikeError
from .cache import ModelIdentity, cache_root, cached_ir, openvino_version
from .registry import BACKENDS, PRECISIONS  # noqa: F401 (re-exported)
from .transforms import Preprocess, normalise_pixels

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# ours → OpenVINO's INFERENCE_PRECISION_HINT; int8's quantised layers run in int8 whatever the hint, the rest in
# fp32 (measured: as fast as in bf16 on 2 cores, ResNet-18 235 against 232 img/s)
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
T = TypeVar("T")


class NonFiniteEmbeddings(LookalikeError):
    """A backend returned NaN or inf for some images: such output is never stored, searched or kept by calibration.

    Seen on an Intel Xeon with AMX: OpenVINO bf16 gave all-NaN CLIP embeddings for one set of random weights and
    finite ones for another, so no backend is trusted on a CPU by its kind; every batch is checked instead.
    """

    def __init__(self, choice: Choice | None, bad_rows: int, rows: int, advice: str = "", unit: str = "images"):
        self.choice, self.bad_rows, self.rows, self.unit = choice, bad_rows, rows, unit
        who = str(choice) if choice is not None else "the model"
        self.what = f"{who} produced non-finite embeddings (NaN or inf) for {bad_rows} of {rows} {unit}"
        super().__init__(f"{self.what}; {advice}" if advice else self.what)


@dataclass(frozen=True)
class Choice:
    """A backend and the precision it runs at: what the calibration decides and the manifest records."""

    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}"


class Backend(Protocol):
    choice: Choice

    def __call__(self, images: torch.Tensor) -> np.ndarray: ...


def normalise(features: np.ndarray, choice: Choice | None = None, unit: str = "images") -> np.ndarray:
    """Rows to unit length in float32, as torch's F.normalize does (eps 1e-12); NonFiniteEmbeddings for NaN or inf.

    Every backend's output passes through here, so no non-finite row reaches a gallery, a query or a calibration.
    The check costs one pass over B × d floats, against a forward pass of millions of operations per image.
    """
    features = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, as one error
        norms = np.linalg.norm(features, axis=1, keepdims=True)
    if not np.isfinite(norms).all():  # a NaN or inf anywhere in a row makes its norm non-finite (overflow too)
        raise NonFiniteEmbeddings(choice, int((~np.isfinite(norms)).sum()), len(features), unit=unit)
    return features / np.maximum(norms, 1e-12)


class TorchBackend:
    """Eager torch; bf16/fp16 through autocast, so weights stay fp32 and only the matmuls drop precision.

    `module` is any callable of a tensor (the text tower passes CLIP's token → feature function); `unit` names its
    rows in errors ("images", "texts"). With `pixels` (the model's preprocessing), the input is uint8 pixels
    (B, S, S, 3), moved to the device as they are and normalised there (`normalise_pixels`)."""

    def __init__(
        self,
        module: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        device: str,
        precision: str,
        channels_last: bool,
        unit: str = "images",
        pixels: Preprocess | None = None,
    ):
        import torch

        self.choice = Choice("torch", precision)
        self.module, self.device, self.channels_last, self.unit = module, device, channels_last, unit
        self.pixels = pixels
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendUnavailable("torch fp16 runs only on CUDA here; the CPU has no fast fp16 path")
        if precision == "int8":
            raise BackendUnavailable("lookalike runs int8 with openvino only (--backend openvino)")

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        import torch

        x = images.to(self.device, non_blocking=True)
        if self.pixels is not None:
            x = normalise_pixels(x, self.pixels, self.channels_last)
        elif self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type="cuda" if self.device.startswith("cuda") else "cpu",
                dtype=self.dtype or torch.float32,
                enabled=self.dtype is not None,
            ),
        ):
            features = self.module(x)
        return normalise(features.float().flatten(1).cpu().numpy(), self.choice, self.unit)


class OpenVINOBackend:
    """OpenVINO's CPU plugin, in one of its two modes.

    `streams` 1 (queries): its latency mode, one stream whose threads share each call; one infer
    request per calling thread, so the server's concurrent queries never share one.
    `streams` None or n > 1 (extraction): its throughput mode, n streams (None: as many as
    OpenVINO picks for `threads`, usually one per thread) side by side, so no thread waits for
    another inside a layer: a call splits its batch over them, `map_batches` gives each a batch. Measured end to end on
    2 cores, the
    two modes interleaved (OpenVINO bf16): MobileNetV2 228 against 202 img/s, CLIP 40.1 against
    39.0, ResNet-18 a tie (bench_extract's model-only table shows both modes).
    `dtype`: what the model's input is fed as (float32; int64 token ids for the text tower); `unit` names
    its rows in errors. With `pixels` (the model's preprocessing), the input is uint8 pixels (B, S, S, 3): the
    compiled graph converts, normalises and transposes them (`with_pixel_input`).
    """

    def __init__(
        self,
        model_xml: Path,
        precision: str,
        threads: int | None,
        streams: int | None = 1,
        dtype: type = np.float32,
        unit: str = "images",
        pixels: Preprocess | None = None,
    ):
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise BackendUnavailable(f"openvino runs fp32, bf16 or int8 on the CPU, not {precision}")
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailable("this CPU has no bf16 support in OpenVINO")
        # Compiled blobs are cached (CACHE_DIR) for int8 only. Measured on the CPU plugin (OpenVINO 2026.4, 2 cores):
        # CLIP's int8 text tower compiles in 1.2 s and loads from its blob in 0.24 s, while fp32 and bf16 models
        # compile in 0.07-0.53 s, a blob saving at most 0.2 s of that at a first-compile cost of 2 s and 335 MB (CLIP).
        if precision == "int8":
            core.set_property({"CACHE_DIR": str(cache_root() / "openvino" / "compiled")})
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams not in (None, 1):
            config["NUM_STREAMS"] = int(streams)
        self.choice = Choice("openvino", precision)
        self.dtype, self.unit = (np.uint8, unit) if pixels is not None else (dtype, unit)
        model = core.read_model(str(model_xml))
        self.compiled = core.compile_model(with_pixel_input(model, pixels) if pixels else model, "CPU", config)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self._local = threading.local()

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        pixels = _pixels(images, self.dtype)
        if self.streams == 1 or len(pixels) == 1:
            request = getattr(self._local, "request", None)
            if request is None:
                request = self._local.request = self.compiled.create_infer_request()
            return normalise(request.infer({0: pixels}, share_inputs=True)[0], self.choice, self.unit)
        import torch

        # the batch split into one part per stream, run at once; the parts depend only on the batch, so a
        # resumed extraction embeds every image exactly as an uninterrupted one does
        parts = np.array_split(pixels, min(self.streams, len(pixels)))
        return np.concatenate(
            [embedded for _, embedded in self.map_batches((i, torch.from_numpy(part)) for i, part in enumerate(parts))]
        )

    def map_batches(self, items: Iterable[tuple[T, torch.Tensor | None]]) -> Iterator[tuple[T, np.ndarray | None]]:
        """(tag, batch) → (tag, embeddings), in order, each batch whole on one stream and `streams` batches at once.

        Extraction's loop: a stream never waits for another, as the parts of one split batch do
        (measured: 8% more images/s for resnet18 beside a decode thread on 2 cores). A batch
        embeds to the same bytes whole or split (the kernels work image by image), so calibration's
        split calls measure what this runs. A None batch (every image in it failed) passes through.
        """
        if self.streams == 1:
            yield from sequential(self, items)
            return
        import openvino as ov

        queue = ov.AsyncInferQueue(self.compiled, self.streams)
        finished: dict[int, np.ndarray] = {}
        queue.set_callback(lambda request, i: finished.__setitem__(i, request.get_output_tensor(0).data.copy()))
        # holds each batch's pixels until it is done (share_inputs)
        pending: deque[tuple[int, T, np.ndarray | None]] = deque()
        try:
            for i, (tag, images) in enumerate(items):
                pixels = None if images is None else _pixels(images, self.dtype)
                if pixels is not None:
                    queue.start_async({0: pixels}, i, share_inputs=True)  # waits while every stream is busy
                pending.append((i, tag, pixels))
                while pending and (pending[0][2] is None or pending[0][0] in finished):
                    j, done_tag, pixels = pending.popleft()
                    yield done_tag, None if pixels is None else normalise(finished.pop(j), self.choice, self.unit)
            queue.wait_all()
            for j, done_tag, pixels in pending:
                yield done_tag, None if pixels is None else normalise(finished.pop(j), self.choice, self.unit)
        finally:
            queue.wait_all()  # nothing may still read a batch's pixels once this returns (an interrupted run too)


def with_pixel_input(model, p: Preprocess):
    """The OpenVINO model taking uint8 NHWC pixels: its PrePostProcessor adds the conversion to float32,
    (x − 255·mean) / (255·std) and the transpose to NCHW to the graph, where the plugin fuses them into the first
    layer's input, instead of a float tensor being made per image on the decode side."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean([255 * m for m in p.mean]).scale(
        [255 * s for s in p.std]
    )
    return ppp.build()


def _pixels(images: torch.Tensor, dtype: type = np.float32) -> np.ndarray:
    return np.ascontiguousarray(images.detach().cpu().numpy(), dtype=dtype)


def sequential(run: Backend, items: Iterable[tuple[T, torch.Tensor | None]]) -> Iterator[tuple[T, np.ndarray | None]]:
    """`map_batches` for a backend that runs one batch at a time."""
    for tag, images in items:
        yield tag, None if images is None else run(images)


def map_batches(run: Backend, items: Iterable[tuple[T, torch.Tensor | None]]) -> Iterator[tuple[T, np.ndarray | None]]:
    """(tag, batch) → (tag, embeddings) in order, as many batches at once as the backend runs well."""
    pipelined = getattr(run, "map_batches", None)
    return pipelined(items) if pipelined is not None else sequential(run, items)


def make_backend(
    choice: Choice,
    module: nn.Module,
    identity: Callable[[], ModelIdentity],
    device: str,
    channels_last: bool,
    threads: int | None = None,
    streams: int | None = 1,
    preprocess: Preprocess | None = None,
) -> Backend:
    """The backend for `choice` over `module`: fed uint8 pixels, normalised as `preprocess` says (None: fed what
    `module` takes). `identity` is asked for only by OpenVINO, whose converted and quantised models it names (for
    random weights it hashes every tensor: 0.2 s for CLIP, which torch never pays).

    `streams` (OpenVINO only): 1 for queries, None or n > 1 for extraction (see `OpenVINOBackend`)."""
    if choice.backend == "torch":
        return TorchBackend(module, device, choice.precision, channels_last, pixels=preprocess)
    if choice.backend != "openvino":
        raise BackendUnavailable(f"unknown inference backend {choice.backend!r}; choose one of {', '.join(BACKENDS)}")
    if device != "cpu":
        raise BackendUnavailable(f"lookalike runs openvino on the CPU only, and this model is on {device}")
    model = identity()
    xml = openvino_model(module, model)
    if choice.precision == "int8":
        from .quantise import int8_model

        xml = int8_model(model, xml)
    return OpenVINOBackend(xml, choice.precision, threads, streams, pixels=preprocess)


def openvino_model(module: nn.Module, model: ModelIdentity) -> Path:
    """The module as OpenVINO IR on disk, converted once per (model, weights, input size, OpenVINO version)."""
    version = openvino_version()
    if version is None:
        raise BackendUnavailable("openvino is not installed (pip install openvino)")
    image_size = model.preprocess.image_size

    def convert():
        import openvino as ov
        import torch

        example = torch.zeros(1, 3, image_size, image_size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notices, about OpenVINO's internals
            return ov.convert_model(
                module.eval(), example_input=example, input=[ov.PartialShape([-1, 3, image_size, image_size])]
            )

    folder = cache_root() / "openvino" / f"{model.key}-{image_size}px-ov{version}"
    return cached_ir(folder, convert, "openvino could not convert the model")
