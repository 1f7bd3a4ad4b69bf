"""Video figures: a model's view of a clip as a strip (PNG) and an animation.

For each clip, time runs left to right and the rows are: the input frames |
the ground-truth tracks | the reconstruction | one row per segmentation the
model exposes (argmax over slots, slot k drawn in the colour of label k + 1,
so an object tracked in one slot keeps one colour over time) | one row per
slot's component shown through the reported masks. `strip` returns the PNG
image; `animation_frames` the same rows laid side by side, one image per
time step, which `save_gif` writes as an animated GIF.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from ocjax.viz import grids


def _rows(video, recon, segmentations: Mapping[str, np.ndarray], masks,
          components, segmentation) -> list[np.ndarray]:
  """One clip's rows, each ``[T, H, W, 3]`` uint8."""
  rows = [grids.to_uint8(video)]
  if segmentation is not None:
    rows.append(grids.labels_to_rgb(np.asarray(segmentation)))
  rows.append(grids.to_uint8(recon))
  for m in segmentations.values():  # [T, K, H, W, 1]
    rows.append(grids.labels_to_rgb(np.argmax(np.asarray(m)[..., 0], 1) + 1))
  if masks is not None and components is not None:
    masks = np.asarray(masks, np.float32)
    components = np.asarray(components, np.float32)
    for k in range(components.shape[1]):
      m = masks[:, k]
      rows.append(grids.to_uint8(m * components[:, k] + (1 - m)))
  return rows


def strip(videos, recon, segmentations=None, masks=None, components=None,
          segmentation=None, *, max_clips: int = 2,
          max_frames: int = 10) -> np.ndarray:
  """The strip of up to ``max_clips`` clips (uint8 ``[H', W', 3]``).

  Args:
    videos, recon: ``[B, T, H, W, C]`` in [0, 1].
    segmentations: ``{name: [B, T, K, H, W, 1]}``.
    masks, components: the reported masks and per-slot appearance
      (``[B, T, K, H, W, 1 or C]``).
    segmentation: ground-truth track ids ``[B, T, H, W]``.
  """
  segmentations = segmentations or {}
  grid_rows = []
  t = min(np.shape(videos)[1], max_frames)
  for b in range(min(len(videos), max_clips)):
    pick = lambda a: None if a is None else np.asarray(a)[b, :t]
    rows = _rows(pick(videos), pick(recon),
                 {k: pick(v) for k, v in segmentations.items()}, pick(masks),
                 pick(components), pick(segmentation))
    grid_rows += [list(r) for r in rows]
  return grids.tile_rows(grid_rows)


def animation_frames(video, recon, segmentations=None, masks=None,
                     components=None, segmentation=None) -> list[np.ndarray]:
  """One clip's rows side by side, one uint8 image per time step."""
  rows = _rows(video, recon, segmentations or {}, masks, components,
               segmentation)
  return [grids.tile_rows([[row[t] for row in rows]])
          for t in range(len(rows[0]))]


def save_gif(path: str, frames: list[np.ndarray],
             seconds_per_frame: float = 0.25) -> str:
  """An animated GIF of ``frames`` (looping); returns ``path``."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  images = [Image.fromarray(grids.to_uint8(f)) for f in frames]
  tmp = f"{path}.tmp.gif"
  images[0].save(tmp, save_all=True, append_images=images[1:], loop=0,
                 duration=int(seconds_per_frame * 1000))
  os.replace(tmp, path)
  return path
