"""How to prepare a user's own image as a dataset's training images were.

Each dataset module may define ``user_preprocessing(config) -> Preprocess``
(`data_pipelines.preprocessing_for` asks it); datasets without one get
`square`: a centre crop to a square, then a bilinear resize.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from data_pipelines import image_common

RESIZES = image_common.RESIZE_METHODS  # How a dataset resized its images.


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Centre crop (a fraction of the shorter side), then a square resize.

  Attributes:
    size: output height = width (the model's resolution).
    crop_fraction: side of the square centre crop over the shorter side.
    resize: "bilinear" (PIL, antialiased), "nearest_torch" (PyTorch's
      ``F.interpolate`` rule) or "nearest_pil".
    description: what is done, in words (for the JSON summary).
  """
  size: int
  crop_fraction: float = 1.0
  resize: str = "bilinear"
  description: str = ""

  def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, side, side)`` of the centre crop."""
    side = max(1, min(height, width,
                      int(self.crop_fraction * min(height, width))))
    return (height - side) // 2, (width - side) // 2, side, side

  def __call__(self, image: np.ndarray):
    """uint8 ``[H, W, 3]`` -> (float32 ``[S, S, 3]`` in [0, 1], crop box)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    top, left, h, w = self.crop_box(*image.shape[:2])
    crop = image[top:top + h, left:left + w]
    s = self.size
    if (h, w) != (s, s):
      if self.resize == "nearest_torch":
        rows = image_common.torch_nearest_indices(h, s)
        cols = image_common.torch_nearest_indices(w, s)
        crop = crop[rows][:, cols]
      else:
        method = {"bilinear": Image.BILINEAR,
                  "nearest_pil": Image.NEAREST}[self.resize]
        crop = np.asarray(Image.fromarray(crop).resize((s, s), method))
    return crop.astype(np.float32) / 255.0, (top, left, h, w)


def square_text(size: int) -> str:
  return (f"centre crop to a square (no-op for square images), then resize "
          f"to {size}x{size}")


def square(config: Any, note: str = "") -> Preprocess:
  """The default: centre crop to a square, bilinear resize."""
  size = int(config.image_size)
  text = f"{config.name}: {note or square_text(size) + ' (bilinear)'}"
  return Preprocess(size, 1.0, "bilinear", text)


def fraction_crop(config: Any, fraction: float, resize: str,
                  what: str) -> Preprocess:
  """A centre crop of ``fraction`` x the shorter side (``what`` says how the
  dataset's own files were cropped), then a resize."""
  size = int(config.image_size)
  return Preprocess(size, fraction, resize, (
      f"{config.name}: centre crop of {fraction:.3g} x the shorter side (as "
      f"{what}), then resize to {size}x{size} ({resize})"))
