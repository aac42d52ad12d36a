"""INT8 models: OpenVINO IR quantised post-training by NNCF, cached on disk like the converted ones.

Why int8: on a CPU with VNNI the int8 convolutions and matmuls run at about twice the bf16 rate
(measured on 2 Zen 4 cores, random weights, batch 16: ResNet-18 232 against 121 img/s, CLIP
ViT-B/32 83 against 44). Whether a job may use it is measured like every precision: the
calibration keeps it only within cosine 0.999 of fp32 torch on the job's own images.

Why generated images set the activation ranges, and not the job's: the quantised model must be a
function of the model, its weights and the library versions alone, so that a resumed run, a
query against the gallery and a Ray worker all rebuild the very model the gallery was embedded
with, even on a machine whose cache is empty. The images the cosine is measured on are the job's,
so a range that does not fit real images is caught there, and int8 is then not kept.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

from ..errors import BackendUnavailable
from .cache import ModelIdentity, cache_root, cached_ir, openvino_telemetry_off, openvino_version
from .transforms import Preprocess

log = logging.getLogger(__name__)

QUANTISE_IMAGES = 64  # generated images whose activations set the int8 ranges (NNCF's statistics pass)
QUANTISE_SEED = 0
# Recipes by architecture (ModelSpec.quantise). CLIP's ViT: NNCF's transformer scheme without SmoothQuant, which
# measured worse here (random weights, cosine min to fp32: 0.9981 with SmoothQuant at its default, 0.9996 without).
RECIPES = ("cnn", "transformer")


def nncf_version() -> str | None:
    """NNCF's version, None when it cannot be imported; read from its metadata, as importing it takes 0.7 s."""
    import importlib.metadata
    import importlib.util

    try:
        if importlib.util.find_spec("nncf") is None:
            return None
        return importlib.metadata.version("nncf").split("+")[0]
    # ValueError: sys.modules["nncf"] is None
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return None


def int8_note() -> str:
    """What the manifest says about an int8 candidate: whose quantisation, and from which images."""
    return f"quantised by NNCF {nncf_version()}, activation ranges from {QUANTISE_IMAGES} generated images"


def int8_folder(model: ModelIdentity) -> Path:
    """Where the model's int8 version is cached: keyed by model, weights sha256, input size, recipe and library
    versions."""
    size = model.preprocess.image_size
    recipe = f"{model.spec.quantise}-{QUANTISE_IMAGES}gen{QUANTISE_SEED}"
    versions = f"ov{openvino_version()}-int8-{recipe}-nncf{nncf_version()}"
    return cache_root() / "openvino" / f"{model.key}-{size}px-{versions}"


def is_quantised(model: ModelIdentity) -> bool:
    """Whether the model's int8 version is already on disk (so int8 costs a job nothing to try)."""
    return (
        nncf_version() is not None and openvino_version() is not None and (int8_folder(model) / "model.xml").is_file()
    )


def int8_model(model: ModelIdentity, fp32_xml: Path) -> Path:
    """The model's OpenVINO IR (`fp32_xml`) quantised to int8, made once and cached.

    Costs one fp32 pass over QUANTISE_IMAGES plus NNCF's bias correction: measured
    3-5 s for ResNet-18, 17 s for CLIP on 2 cores.
    """
    if nncf_version() is None:
        raise BackendUnavailable("int8 needs NNCF, which is not installed (pip install nncf)")
    folder = int8_folder(model)
    if not (folder / "model.xml").is_file():
        log.info("quantising %s to int8 once (cached in %s)", model.spec.name, folder)
    return cached_ir(folder, lambda: _quantise(model, fp32_xml), "NNCF could not quantise the model to int8")


def calibration_pixels(preprocess: Preprocess):
    """QUANTISE_IMAGES generated 64 px images (the data generator's, fixed seed), preprocessed as the model's inputs."""
    import numpy as np
    import torch

    from ..data.images import load_rgb
    from ..data.synthetic import generate_collection
    from .transforms import build_transform, normalise_pixels

    transform = build_transform(preprocess)
    with tempfile.TemporaryDirectory(prefix="lookalike-int8-") as tmp:
        root = generate_collection(
            Path(tmp) / "images", n_classes=QUANTISE_IMAGES // 8, train_per_class=8, val_per_class=0, seed=QUANTISE_SEED
        )
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        # the float IR's input: the normalisation the compiled model's PrePostProcessor adds in front of it
        pixels = normalise_pixels(torch.stack([transform(load_rgb(f)) for f in files]), preprocess).numpy()
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _quantise(model: ModelIdentity, fp32_xml: Path):
    import openvino as ov

    recipe = model.spec.quantise
    if recipe not in RECIPES:
        raise BackendUnavailable(f"no int8 recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    pixels = calibration_pixels(model.preprocess)
    batches = [pixels[i : i + 8] for i in range(0, len(pixels), 8)]
    return _nncf_quantize(ov.Core().read_model(fp32_xml), batches, recipe)


def _nncf_quantize(ir, batches: list, recipe: str):
    """NNCF's post-training quantisation of the OpenVINO model `ir`, its activation ranges from `batches`."""
    import nncf

    openvino_telemetry_off()  # NNCF's, now that it is loaded
    options: dict = {}
    if recipe == "transformer":
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

        options = {
            "model_type": nncf.ModelType.TRANSFORMER,
            "advanced_parameters": AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)
            ),
        }
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)  # its progress notes would interleave with extraction's own
    try:
        # and its progress bars (rich, on stdout) would land in the output of `lookalike extract --json`
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return nncf.quantize(ir, nncf.Dataset(batches), subset_size=len(batches), **options)
    finally:
        nncf_log.setLevel(level)


# --- the text tower (CLIP): the same recipe, its activation ranges from generated texts ---

QUANTISE_TEXTS = 64  # generated texts whose activations set the text tower's int8 ranges
# words the generated texts are drawn from (fixed, so the quantised model is a function of model, weights and versions)
TEXT_WORDS = (
    "a an the photo picture of dog cat car bird tree house street beach mountain river city night day red blue green"
    " old small large two three people man woman child playing standing sitting on in under near with at sunset snow"
    " rain field boat bridge flowers table food window light dark white black yellow wooden stone close-up view"
).split()


def text_int8_note() -> str:
    """What the record says about the text tower's int8 candidate: whose quantisation, and from which texts."""
    return f"quantised by NNCF {nncf_version()}, activation ranges from {QUANTISE_TEXTS} generated texts"


def text_int8_folder(text_key: str) -> Path:
    """Where the text tower's int8 model is cached: keyed by the text model's key and the library versions."""
    versions = f"ov{openvino_version()}-int8-transformer-{QUANTISE_TEXTS}txt{QUANTISE_SEED}-nncf{nncf_version()}"
    return cache_root() / "openvino" / f"{text_key}-dynamic-{versions}"


def is_text_quantised(text_key: str) -> bool:
    return (
        nncf_version() is not None
        and openvino_version() is not None
        and (text_int8_folder(text_key) / "model.xml").is_file()
    )


def calibration_texts() -> list[str]:
    """QUANTISE_TEXTS generated texts of 1 to 16 words (fixed seed): what sets the text tower's activation ranges.

    Not the texts the calibration measures the cosine on (`text_choice.SAMPLE_TEXTS`), so a range that
    fits only its own inputs is caught there."""
    import numpy as np

    rng = np.random.default_rng(QUANTISE_SEED)
    return [" ".join(rng.choice(TEXT_WORDS, size=int(rng.integers(1, 17)))) for _ in range(QUANTISE_TEXTS)]


def int8_text_model(text_key: str, fp32_xml: Path, tokenize) -> Path:
    """The text tower's OpenVINO IR (`fp32_xml`, dynamic length) quantised to int8, made once and cached.

    `tokenize(str)` gives (1, context) ids; each generated text is cut after its end-of-text token, as
    queries are, so the ranges are taken over the lengths queries have.
    """
    if nncf_version() is None:
        raise BackendUnavailable("int8 needs NNCF, which is not installed (pip install nncf)")
    folder = text_int8_folder(text_key)
    if not (folder / "model.xml").is_file():
        log.info("quantising the text tower to int8 once (cached in %s)", folder)

    def make():
        import numpy as np
        import openvino as ov

        from .text import cut_tokens

        batches = [np.ascontiguousarray(cut_tokens(tokenize(t)).numpy(), dtype=np.int64) for t in calibration_texts()]
        return _nncf_quantize(ov.Core().read_model(fp32_xml), batches, "transformer")

    return cached_ir(folder, make, "NNCF could not quantise the text tower to int8")
