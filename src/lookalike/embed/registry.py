"""The model registry: each model as data (dimension, preprocessing, weights source) plus its builders.

Importing this module costs no torch import, so the CLI takes its `--model` choices from here and
`lookalike --help` stays fast; the builders import torchvision or open_clip when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import LookalikeError
from .transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocess

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .text import TextTower


def torchvision_architecture(spec: ModelSpec, image_size: int | None) -> nn.Module:
    """The torchvision network with untrained weights (any input size: the CNNs pool globally)."""
    import torchvision

    return torchvision.models.get_model(spec.arch, weights=None)


def open_clip_architecture(spec: ModelSpec, image_size: int | None) -> nn.Module:
    """The whole open_clip model (image and text towers) with untrained weights, at `image_size`."""
    import open_clip

    return open_clip.create_model(spec.arch, pretrained=None, force_image_size=image_size)


def replace_with_identity(attribute: str) -> Callable[[nn.Module], nn.Module]:
    """A head that drops the classifier `attribute`, leaving the globally pooled feature."""

    def head(model: nn.Module) -> nn.Module:
        from torch import nn

        setattr(model, attribute, nn.Identity())
        return model

    return head


def clip_image_tower(model: nn.Module) -> nn.Module:
    """CLIP's image tower: the projected image embedding."""
    return model.visual


def open_clip_text_tower(spec: ModelSpec, model: nn.Module) -> TextTower:
    """CLIP's text tower, taken from the very model the image tower came from, so both share one set of weights.

    The tokenizer is open_clip's own for `spec.arch`; its BPE vocabulary ships inside the open_clip
    package, so text search works offline.
    """
    import open_clip

    from .text import TextTower

    tokenizer = open_clip.get_tokenizer(spec.arch)
    cut = causal_text_module(model)
    return TextTower(causal_text_encoder(model, cut), tokenizer, int(tokenizer.context_length), model, cut)


def causal_text_module(model: nn.Module) -> nn.Module | None:
    """CLIP's text tower as a module of token ids cut after the end-of-text token (`text.CausalText`), or None for a
    model whose mask is not causal or whose pooling reads another position (it keeps open_clip's `encode_text`)."""
    import torch

    from .text import CausalText

    mask = getattr(model, "attn_mask", None)
    pool = getattr(model, "text_pool_type", "argmax")
    if mask is None or pool != "argmax" or not hasattr(model, "token_embedding"):
        return None
    n = mask.shape[0]
    if not torch.equal(torch.isinf(mask), torch.ones(n, n, dtype=torch.bool).triu(1)):
        return None
    return CausalText(model)


def causal_text_encoder(model: nn.Module, module: nn.Module | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """CLIP's `encode_text`, run on the tokens up to the pooled (end-of-text) one only.

    A query of a few words then costs a few positions instead of the 77 of the full context (the
    answer the same to float rounding; a test compares it with open_clip's own). Why it is exact:
    see `text.CausalText`. A model whose tower cannot be cut keeps open_clip's `encode_text`.
    `module`: the model's `causal_text_module`, when the caller has it already.
    """
    from .text import cut_tokens

    module = module if module is not None else causal_text_module(model)
    if module is None:
        return model.encode_text
    return lambda text: module(cut_tokens(text))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dim: int
    family: str  # "torchvision" | "open_clip": where pretrained weights are fetched from
    arch: str  # torchvision builder name, or open_clip model name
    pretrained: str  # torchvision weights enum, or open_clip pretrained tag
    preprocess: Preprocess
    channels_last: bool  # convolutional nets gain from NHWC on CPU; ViTs do not
    build: Callable[[ModelSpec, int | None], nn.Module]  # the untrained architecture at an input size
    head: Callable[[nn.Module], nn.Module]  # whole model → image feature extractor
    optional_keys: tuple[str, ...]  # state-dict prefixes a weights file may lack: the parts `head` drops
    # whole model → its text tower in the same embedding space (CLIP); None: the model cannot embed text
    text_tower: Callable[[ModelSpec, nn.Module], TextTower] | None = None
    quantise: str = "cnn"  # the int8 recipe (embed.quantise.RECIPES)

    @property
    def has_text(self) -> bool:
        return self.text_tower is not None


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(
        name="resnet18",
        dim=512,
        family="torchvision",
        arch="resnet18",
        pretrained="ResNet18_Weights.IMAGENET1K_V1",
        preprocess=Preprocess(224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        channels_last=True,
        build=torchvision_architecture,
        head=replace_with_identity("fc"),  # global-average-pooled 512-d
        optional_keys=("fc.",),
    ),
    "mobilenet": ModelSpec(
        name="mobilenet",
        dim=1280,
        family="torchvision",
        arch="mobilenet_v2",
        pretrained="MobileNet_V2_Weights.IMAGENET1K_V2",
        preprocess=Preprocess(224, 232, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        channels_last=True,
        build=torchvision_architecture,
        head=replace_with_identity("classifier"),  # global-average-pooled 1280-d
        optional_keys=("classifier.",),
    ),
    "clip": ModelSpec(
        name="clip",
        dim=512,
        family="open_clip",
        arch="ViT-B-32-quickgelu",  # the 'openai' weights were trained with QuickGELU
        pretrained="openai",
        preprocess=Preprocess(224, 224, CLIP_MEAN, CLIP_STD, "bicubic"),
        channels_last=False,
        build=open_clip_architecture,
        head=clip_image_tower,  # projected 512-d image embedding
        optional_keys=(
            "transformer.",
            "token_embedding",
            "ln_final",
            "text_projection",
            "positional_embedding",
            "logit_",
        ),
        text_tower=open_clip_text_tower,
        quantise="transformer",
    ),
}
MODEL_NAMES = tuple(MODELS)
TEXT_MODEL_NAMES = tuple(name for name, spec in MODELS.items() if spec.has_text)  # the models a text query can search

# : Inference backends (embed.backends) and the precisions they may run at; which one a job uses is measured
# (embed.calibrate).
BACKENDS = ("torch", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # fp16: torch on CUDA; int8: OpenVINO on the CPU (embed.quantise)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise LookalikeError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
