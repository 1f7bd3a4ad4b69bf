"""Image grids: inputs, reconstructions, segmentations, components, samples.

Every function returns a uint8 ``[H, W, 3]`` array; `save_png` writes one.
One row per example, one tile per quantity, separated by a 2-pixel border.
"""

from __future__ import annotations

import os

import numpy as np

from data_pipelines import palette as palette_lib

# One palette for every figure (label 0 black, then 20 colours, cycling).
PALETTE = palette_lib.PALETTE
labels_to_rgb = palette_lib.labels_to_rgb
BORDER = 2


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Float [0, 1] (or uint8) -> uint8, with RGB for one-channel images."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.round(np.asarray(image, np.float32) * 255), 0, 255)
    image = image.astype(np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def masks_to_rgb(masks: np.ndarray) -> np.ndarray:
  """Soft masks ``[K, H, W, 1]`` -> argmax colours, slot k -> palette k+1."""
  masks = np.asarray(masks)[..., 0]
  return labels_to_rgb(np.argmax(masks, axis=0) + 1)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour enlargement of ``[h, w, ...]`` by an integer factor:
  pixel ``i`` becomes ``[f i, f i + f)``, its centre at ``f i + (f - 1) / 2``.
  """
  image = np.asarray(image)
  if factor <= 1:
    return image
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def draw_marker(image: np.ndarray, x: float, y: float, colour,
                radius: int = 2) -> np.ndarray:
  """A cross of ``colour`` (RGB) centred at pixel ``(x, y)`` on a copy.

  Args:
    image: ``[H, W, 3]`` (uint8, or float in [0, 1]).
    x, y: column and row in pixels (pixel centres at integers; rounded half
      up).
    colour: ``[3]`` uint8-like.
    radius: arm length in pixels; the arms are clipped to the image.

  Returns:
    uint8 ``[H, W, 3]``.
  """
  out = to_uint8(image).copy()
  h, w = out.shape[:2]
  c, r = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
  colour = np.asarray(colour, np.uint8)
  if 0 <= c < w:
    out[max(r - radius, 0):max(min(r + radius + 1, h), 0), c] = colour
  if 0 <= r < h:
    out[r, max(c - radius, 0):max(min(c + radius + 1, w), 0)] = colour
  return out


def tile_rows(rows: list[list[np.ndarray]], border: int = BORDER,
              fill: int = 255) -> np.ndarray:
  """Lays out ``rows[r][c]`` (each ``[h, w, 3]`` uint8) into one image."""
  h = max(t.shape[0] for row in rows for t in row)
  w = max(t.shape[1] for row in rows for t in row)
  ncol = max(len(row) for row in rows)
  out = np.full((len(rows) * (h + border) + border,
                 ncol * (w + border) + border, 3), fill, np.uint8)
  for r, row in enumerate(rows):
    for c, tile in enumerate(row):
      y = border + r * (h + border)
      x = border + c * (w + border)
      out[y:y + tile.shape[0], x:x + tile.shape[1]] = to_uint8(tile)
  return out


def component_tiles(components: np.ndarray, masks: np.ndarray,
                    background: float = 1.0) -> list[np.ndarray]:
  """Per-slot appearance shown where the slot's mask is: ``pi mu + (1-pi)``."""
  components = np.asarray(components, np.float32)
  masks = np.asarray(masks, np.float32)
  return [to_uint8(masks[k] * components[k] + (1 - masks[k]) * background)
          for k in range(components.shape[0])]


def reconstruction_grid(images, recon, segmentations=None, masks=None,
                        components=None, segmentation=None,
                        max_rows: int = 8) -> np.ndarray:
  """Rows: input | [ground truth] | recon | one argmax map per named
  segmentation (in order) | per-slot components (each shown through
  ``masks``).

  Args:
    images, recon: ``[B, H, W, C]`` in [0, 1].
    segmentations: ``{name: soft masks [B, K, H, W, 1]}`` (optional).
    masks: the model's reported masks ``[B, K, H, W, 1]`` (for components).
    components: ``[B, K, H, W, C]`` (optional; needs ``masks``).
    segmentation: ground truth ``[B, H, W]`` int (optional).
  """
  segmentations = segmentations or {}
  rows = []
  for b in range(min(len(images), max_rows)):
    row = [to_uint8(images[b])]
    if segmentation is not None:
      row.append(labels_to_rgb(segmentation[b]))
    row.append(to_uint8(recon[b]))
    for m in segmentations.values():
      row.append(masks_to_rgb(m[b]))
    if masks is not None and components is not None:
      row.extend(component_tiles(components[b], masks[b]))
    rows.append(row)
  return tile_rows(rows)


def sample_grid(images, masks=None, components=None,
                max_rows: int = 16) -> np.ndarray:
  """Rows: sample | its segmentation | per-slot components."""
  rows = []
  for b in range(min(len(images), max_rows)):
    row = [to_uint8(images[b])]
    if masks is not None:
      row.append(masks_to_rgb(masks[b]))
      if components is not None:
        row.extend(component_tiles(components[b], masks[b]))
    rows.append(row)
  return tile_rows(rows)


def image_mosaic(images, columns: int = 8) -> np.ndarray:
  """A plain mosaic of ``[N, H, W, C]`` images."""
  images = [to_uint8(x) for x in images]
  rows = [images[i:i + columns] for i in range(0, len(images), columns)]
  return tile_rows(rows)


def save_png(path: str, image: np.ndarray) -> str:
  """Writes ``image`` (uint8 or [0, 1] float) to ``path``; returns it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.png"
  Image.fromarray(to_uint8(image)).save(tmp)
  os.replace(tmp, path)
  return path
