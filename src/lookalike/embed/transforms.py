"""Preprocessing configs and the transforms built from them.

Kept apart from the models (as timm does) so callers never hard-code normalisation
constants and data loading can change without touching model code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported when a transform is built, so the model registry (and the CLI) load without torch
    import torch
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Resize scales the short side, so a 1×65000 image would become 256×16.6M pixels before the
#: centre crop throws nearly all of them away. The crop only ever keeps the middle short-side
#: square, so longer images are first cut to this aspect ratio around their centre: the kept
#: region is the same and resize work is bounded by MAX_ASPECT × resize_size² whatever the input.
MAX_ASPECT = 4


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `resize_size`, centre-crop `image_size`, normalise."""

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def with_image_size(self, image_size: int) -> Preprocess:
        """Keep the model's resize/crop ratio (e.g. 256/224) at another input size."""
        ratio = self.resize_size / self.image_size
        return replace(self, image_size=image_size, resize_size=round(image_size * ratio))

    def to_dict(self) -> dict:
        return asdict(self)


def cap_aspect(image: Image.Image | np.ndarray, max_aspect: float = MAX_ASPECT) -> Image.Image | np.ndarray:
    """Centre-cut an image longer than `max_aspect` × its short side (a view of an (H, W, 3) array, or a PIL
    crop); other images are returned as they are."""
    height, width = image.shape[:2] if isinstance(image, np.ndarray) else image.size[::-1]
    short = max(1, min(width, height))
    keep = int(max_aspect * short)
    if max(width, height) <= keep:
        return image
    start = ((width if width > height else height) - keep) // 2
    if isinstance(image, np.ndarray):
        return image[:, start : start + keep] if width > height else image[start : start + keep]
    if width > height:
        return image.crop((start, 0, start + keep, height))
    return image.crop((0, start, width, start + keep))


@dataclass(frozen=True)
class PixelTransform:
    """RGB pixels ((H, W, 3) uint8 array, or a PIL image) → the model's input: an (S, S, 3) uint8 crop.

    Resize (short side to `resize_size`, antialiased, torch's uint8 kernels) and centre crop stay in uint8; the
    conversion to float and the normalisation run inside the model (`normalise_pixels` for torch, OpenVINO's
    PrePostProcessor), so the decode side never makes the 4-bytes-per-value tensor of S² × 3 floats per image.
    The crop is a view of the resize's output (HWC strides), copied once, into its batch (`write`).
    """

    preprocess: Preprocess

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        p = self.preprocess
        array = image if isinstance(image, np.ndarray) else np.array(image.convert("RGB"))
        chw = torch.from_numpy(cap_aspect(array)).permute(2, 0, 1)  # a view: channels-last strides, as torch's
        # uint8 resize kernels read them
        resized = F.resize(chw, [p.resize_size], interpolation=InterpolationMode(p.interpolation), antialias=True)
        return F.center_crop(resized, [p.image_size]).permute(1, 2, 0)


def build_transform(p: Preprocess) -> PixelTransform:
    """The model's input transform: RGB pixels → (S, S, 3) uint8; resize work is bounded (see MAX_ASPECT)."""
    return PixelTransform(p)


def normalise_pixels(pixels: torch.Tensor, p: Preprocess, channels_last: bool = False) -> torch.Tensor:
    """(B, S, S, 3) uint8 → (B, 3, S, S) float32 (x / 255 − mean) / std, as torchvision's ToDtype(scale=True) and
    Normalize compute it (to within 1e-6): torch's half of the model input, one new tensor and two in-place passes.

    `channels_last` keeps the NHWC memory order the pixels arrive in (what a CNN's convolutions read fastest);
    otherwise the result is contiguous NCHW.
    """
    import torch

    scale = torch.tensor([1 / (255 * s) for s in p.std], dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(p.mean, p.std)], dtype=torch.float32, device=pixels.device)
    nchw = pixels.permute(0, 3, 1, 2)
    x = nchw.to(torch.float32, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x.mul_(scale).add_(shift.view(1, 3, 1, 1))
