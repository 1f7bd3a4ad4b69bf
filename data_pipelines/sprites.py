"""Procedural multi-sprite scenes: the embedded default dataset (no download).

Each scene is an ``image_size`` x ``image_size`` RGB image of
``min_objects``..``max_objects`` flat-coloured, hard-edged sprites (square,
circle, triangle, ellipse, diamond, heart, star; randomly rotated where that
makes sense) on a plain or low-contrast textured background (gradient,
stripes, checkers, smooth noise), with its exact instance segmentation:
int32 ``[H, W]``, 0 = background, objects 1..n in drawing order; later
objects occlude earlier ones.

Guarantees: every object keeps at least ``min_visible_pixels`` (and
``min_visible_fraction`` of its in-frame area) visible, its colour is at
least ``min_color_distance`` (RGB, Euclidean) from every background colour
and ``min_object_distance`` from the other objects' colours.

Determinism: an example is a pure function of ``(seed, split, index)`` and
of the scene fields of the config (``seed`` is ``get_dataset``'s, or
``content_seed`` when set); the splits seed their generators differently,
so they never share content. The train stream visits indices
``0..num_train-1`` in a fresh permutation per epoch (a function of seed,
split and epoch); global batch ``s`` is positions ``s*G .. s*G+G-1`` of that
stream and process ``p`` renders its contiguous slice, so ``start_step``
costs O(1). Evaluation streams (``repeat=False``) visit the split in order,
once, padding the last batch with zero rows marked ``valid=False``.

Rendering is vectorised NumPy per example (each sprite is rasterised in its
bounding box), run by tf.data through ``tf.numpy_function`` with bounded
parallelism.

Public API: `default_config`, `get_dataset`, `num_examples` (the dataset
contract), plus `render_example`, `render_batch` and `step_indices` for
direct NumPy use (figures, tests, other generators).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import ml_collections
from ml_collections import config_dict
import numpy as np

from data_pipelines import stream

SHAPES = ("square", "circle", "triangle", "ellipse", "diamond", "heart",
          "star")
TEXTURES = ("gradient", "stripes", "checkers", "noise")
BACKGROUNDS = ("plain", "textured", "mixed")
_MIN_IMAGE_SIZE = 16
_REFERENCE_SIZE = 64  # Pixel-valued fields are given for 64x64 images.
# First word of the seed sequences, so content and shuffling never collide.
_CONTENT_STREAM, _SHUFFLE_STREAM = 0, 1
_MAX_TRIES_PER_OBJECT = 64
_MAX_SCENE_TRIES = 32


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = "sprites"
  c.data_dir = ""  # Unused: the data are procedural.
  c.image_size = 64  # Height = width, pixels; >= 16.
  c.min_objects = 2  # Objects per scene, drawn uniformly in [min, max].
  c.max_objects = 5
  c.background = "mixed"  # "plain", "textured" or "mixed" (half each).
  c.num_train = 100_000  # Examples per split.
  c.num_validation = 1_000
  c.num_test = 1_000
  # Seed of the scenes' content, so runs with different training seeds see
  # the same scenes (get_dataset's seed only shuffles). None: content follows
  # get_dataset's seed.
  c.content_seed = config_dict.FieldReference(0, field_type=int)
  # Sprite kinds drawn uniformly; a subset of SHAPES.
  c.shapes = SHAPES
  # Background textures drawn uniformly; a subset of TEXTURES.
  c.textures = TEXTURES
  # Sprite radius range in pixels of a 64x64 image; scaled by image_size/64.
  c.min_radius = 6.0
  c.max_radius = 14.0
  # Largest RGB distance between a textured background's two colours is
  # texture_contrast (drawn in [0.5, 1] x texture_contrast).
  c.texture_contrast = 0.2
  # Minimum RGB (Euclidean, in [0, 1]^3) distance of a sprite colour from
  # every background colour, and from the other sprites' colours.
  c.min_color_distance = 0.3
  c.min_object_distance = 0.25
  # Every sprite keeps at least this many visible pixels (at 64x64; scaled
  # by (image_size/64)^2) and this fraction of its in-frame area.
  c.min_visible_pixels = 16
  c.min_visible_fraction = 0.25
  # tf.data: parallel rendering calls (also the private thread-pool size)
  # and batches prefetched. Small, so tf.data does not starve XLA.
  c.num_parallel_calls = 2
  c.prefetch = 2
  return c


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Validated, plain-Python copy of the scene fields of a config."""
  image_size: int
  min_objects: int
  max_objects: int
  background: str
  shapes: tuple[str, ...]
  textures: tuple[str, ...]
  min_radius: float  # Pixels at image_size.
  max_radius: float
  texture_contrast: float
  min_color_distance: float
  min_object_distance: float
  min_visible_pixels: int  # Pixels at image_size.
  min_visible_fraction: float
  content_seed: int | None  # None: the caller's seed.


def _spec(config: Any) -> _Spec:
  """Validates the config's scene fields; raises ValueError naming a field.

  ``image_size``, ``min_objects``, ``max_objects`` and ``background`` are
  required; the other fields default to `default_config`'s.
  """
  d = default_config()
  size = stream.int_field(config, "image_size", _MIN_IMAGE_SIZE)
  lo = stream.int_field(config, "min_objects", 1)
  hi = stream.field(config, "max_objects")
  if not isinstance(hi, (int, np.integer)) or hi < lo:
    raise ValueError(
        f"data.max_objects={hi!r} is invalid; expected an int >= "
        f"data.min_objects={lo}.")
  background = stream.check_choice(stream.field(config, "background"),
                                   "background", BACKGROUNDS)
  shapes = tuple(stream.field(config, "shapes", d.shapes))
  if not shapes or any(s not in SHAPES for s in shapes):
    raise ValueError(f"data.shapes={shapes!r} is invalid; expected a "
                     f"non-empty subset of {SHAPES}.")
  textures = tuple(stream.field(config, "textures", d.textures))
  if background != "plain" and (
      not textures or any(t not in TEXTURES for t in textures)):
    raise ValueError(f"data.textures={textures!r} is invalid; expected a "
                     f"non-empty subset of {TEXTURES}.")
  scale = size / _REFERENCE_SIZE
  rmin = float(stream.field(config, "min_radius", d.min_radius))
  rmax = float(stream.field(config, "max_radius", d.max_radius))
  if not 0 < rmin <= rmax or rmax * scale > size / 3:
    raise ValueError(
        f"data.min_radius={rmin}, data.max_radius={rmax} are invalid; "
        f"expected 0 < min_radius <= max_radius <= {_REFERENCE_SIZE / 3:.1f} "
        "(pixels at 64x64).")
  if rmin * scale < 1.5:
    raise ValueError(
        f"data.min_radius={rmin} is {rmin * scale:.2f} pixels at "
        f"image_size={size}; expected at least 1.5 pixels.")
  fractions = {name: stream.float_field(config, name, 0, top, d[name])
               for name, top in (("texture_contrast", 1.0),
                                 ("min_color_distance", 1.0),
                                 ("min_object_distance", 1.0),
                                 ("min_visible_fraction", 0.9))}
  content_seed = config.get("content_seed")
  if content_seed is not None and not isinstance(content_seed,
                                                 (int, np.integer)):
    raise ValueError(f"data.content_seed={content_seed!r} is invalid; "
                     "expected an int or None.")
  min_px = stream.int_field(config, "min_visible_pixels", 1,
                            d.min_visible_pixels)
  return _Spec(
      image_size=size, min_objects=lo, max_objects=int(hi),
      background=background, shapes=shapes, textures=textures,
      min_radius=rmin * scale, max_radius=rmax * scale,
      min_visible_pixels=max(1, round(min_px * scale * scale)),
      content_seed=content_seed, **fractions)


def num_examples(config: Any, split: str) -> int:
  """Number of examples in a split (``config.num_<split>``)."""
  return stream.num_split_examples(config, split)


# ----------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel row and column coordinates, float32 [S, S] each (read-only)."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  y.flags.writeable = x.flags.writeable = False
  return y, x


def _background(rng: np.random.Generator, spec: _Spec, out: np.ndarray):
  """Paints out [S, S, 3]; returns the colours (c0, c1) spanning it."""
  s = spec.image_size
  c0 = rng.random(3)
  textured = spec.background == "textured" or (
      spec.background == "mixed" and rng.random() < 0.5)
  flat = out.reshape(-1, 3)  # [S*S, 3] view
  if not textured:
    for ch in range(3):  # Per channel: NumPy is slow on a trailing axis of 3.
      flat[:, ch] = c0[ch]
    return c0, c0
  direction = rng.normal(size=3)
  direction /= np.linalg.norm(direction) + 1e-12
  c1 = np.clip(c0 + rng.uniform(0.5, 1) * spec.texture_contrast * direction,
               0, 1)
  kind = spec.textures[rng.integers(len(spec.textures))]
  scale = s / _REFERENCE_SIZE
  y, x = _grid(s)  # [S, S] each
  if kind in ("gradient", "stripes"):
    angle = rng.uniform(0, 2 * np.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    if kind == "gradient":  # Ramp from 0 to 1 across the image.
      low = (s - 1) * (min(cos, 0) + min(sin, 0))
      span = (s - 1) * (abs(cos) + abs(sin))
      t = x * (cos / span) + y * (sin / span) - low / span
    else:
      freq = 2 / (rng.uniform(6, 16) * scale)  # Two stripes per period.
      shift = 2 * math.ceil((s - 1) * freq) + rng.uniform(0, 2)  # > 0
      t = (x * (cos * freq) + y * (sin * freq) + shift).astype(
          np.int32) & 1  # Shifted positive, so truncation = floor.
      t = t.astype(np.float32)
  elif kind == "checkers":
    inv_cell = 1 / (rng.uniform(6, 16) * scale)
    oy, ox = rng.uniform(0, 2, 2)
    t = ((y * inv_cell + oy).astype(np.int32)
         + (x * inv_cell + ox).astype(np.int32)) & 1
    t = t.astype(np.float32)
  else:  # Smooth noise: a coarse random grid, bilinearly upsampled.
    k = int(rng.integers(3, 7))
    grid = rng.random((k, k))
    pos = np.linspace(0, k - 1, s)
    interp = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(k)))  # [S, k]
    t = interp @ grid @ interp.T  # [S, S]
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
  t = t.ravel()
  for ch in range(3):
    flat[:, ch] = t * (c1[ch] - c0[ch]) + c0[ch]
  return c0, c1


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray,
                aspect: float) -> np.ndarray:
  """Inside test in the sprite's frame (unit radius, v pointing down)."""
  if shape == "circle":
    return u * u + v * v <= 1.0
  if shape == "ellipse":
    return u * u + (v * (1 / aspect)) ** 2 <= 1.0
  if shape == "square":
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85
  if shape == "diamond":
    return np.abs(u) * (1 / 1.15) + np.abs(v) * (1 / (1.15 * aspect)) <= 1.0
  if shape == "triangle":  # Equilateral, circumradius 1.3, apex up.
    inradius = 1.3 * math.cos(math.pi / 3)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    return ((v <= inradius) & (-c * u - s * v <= inradius)
            & (c * u - s * v <= inradius))
  if shape == "star":  # Five points, outer radius 1.3, inner radius 0.55.
    rho = np.hypot(u, v)
    sector = 2 * math.pi / 5
    psi = np.mod(np.arctan2(v, u), sector)
    psi = np.minimum(psi, sector - psi)  # Folded into [0, pi/5].
    px, py = rho * np.cos(psi), rho * np.sin(psi)
    ox, oy = 1.3, 0.0  # Outer vertex.
    ix, iy = 0.55 * math.cos(sector / 2), 0.55 * math.sin(sector / 2)
    # Same side of the edge (outer -> inner vertex) as the centre.
    return (ix - ox) * (py - oy) - (iy - oy) * (px - ox) >= 0
  if shape == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3, y up, centred.
    x, y = 1.15 * u, -1.15 * v + 0.12
    x2, y2 = x * x, y * y
    q = x2 + y2 - 1
    return q * q * q <= x2 * y2 * y
  raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def _sample_colours(rng: np.random.Generator, spec: _Spec, n: int,
                    bg0: np.ndarray, bg1: np.ndarray) -> list[list[float]]:
  """n colours far enough from the background segment and each other."""
  ab = bg1 - bg0
  inv = 1 / max(float(ab @ ab), 1e-12)
  bg_d2, obj_d2 = spec.min_color_distance ** 2, spec.min_object_distance ** 2
  chosen: list[list[float]] = []
  for _ in range(64):
    cand = rng.random((4 * n, 3))  # [4n, 3] candidates, tried in order.
    t = np.clip((cand - bg0) @ ab * inv, 0, 1)  # [4n]
    far = ((cand - bg0 - t[:, None] * ab) ** 2).sum(-1) >= bg_d2
    for r, g, b in cand[far].tolist():
      if all((r - o[0]) ** 2 + (g - o[1]) ** 2 + (b - o[2]) ** 2 >= obj_d2
             for o in chosen):
        chosen.append([r, g, b])
        if len(chosen) == n:
          return chosen
  # Only when the distances cannot be met: relax them.
  return chosen + rng.random((n - len(chosen), 3)).tolist()


def _render(spec: _Spec, seed: int, split_id: int, index: int,
            image: np.ndarray, seg: np.ndarray) -> None:
  """Renders one scene into image [S, S, 3] float32 and seg [S, S] int32."""
  if spec.content_seed is not None:
    seed = spec.content_seed
  rng = np.random.default_rng(
      [_CONTENT_STREAM, stream.seed_word(seed), split_id, int(index)])
  s = spec.image_size
  num_shapes = len(spec.shapes)
  for _ in range(_MAX_SCENE_TRIES):
    bg0, bg1 = _background(rng, spec, image)
    seg[...] = 0
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    visible = np.zeros(n + 1, np.int64)  # Visible pixels per label.
    needed = np.zeros(n + 1, np.int64)  # Pixels each label must keep.
    colours = _sample_colours(rng, spec, n, bg0, bg1)
    for label, colour in enumerate(colours, 1):
      for _ in range(_MAX_TRIES_PER_OBJECT):
        p_shape, p_radius, p_y, p_x, p_angle, p_aspect = rng.random(6).tolist()
        shape = spec.shapes[int(p_shape * num_shapes)]
        radius = spec.min_radius + p_radius * (spec.max_radius -
                                               spec.min_radius)
        margin = 0.8 * radius
        cy = margin + p_y * (s - 2 * margin)
        cx = margin + p_x * (s - 2 * margin)
        angle = ((p_angle - 0.5) * 1.2 if shape == "heart"
                 else p_angle * 2 * math.pi)
        aspect = 0.5 + 0.25 * p_aspect
        extent = 1.35 * radius + 1
        y0, y1 = max(0, int(cy - extent)), min(s, int(cy + extent) + 2)
        x0, x1 = max(0, int(cx - extent)), min(s, int(cx + extent) + 2)
        cos, sin = math.cos(angle) / radius, math.sin(angle) / radius
        dy = (np.arange(y0, y1, dtype=np.float32) + (0.5 - cy))[:, None]
        dx = np.arange(x0, x1, dtype=np.float32) + (0.5 - cx)  # [w]
        u = cos * dx + sin * dy  # [h, w]
        v = cos * dy - sin * dx  # [h, w]
        mask = _shape_mask(shape, u, v, aspect)  # [h, w] bool
        patch = seg[y0:y1, x0:x1]  # [h, w] view
        covered = patch[mask]
        left = visible - np.bincount(covered, minlength=n + 1)
        left[label] = covered.size
        needed[label] = max(spec.min_visible_pixels,
                            math.ceil(spec.min_visible_fraction *
                                      covered.size))
        if (left[1:label + 1] >= needed[1:label + 1]).all():
          break
      else:
        break  # This object does not fit: draw a new scene.
      visible = left
      patch[mask] = label
      for ch in range(3):
        image[y0:y1, x0:x1, ch][mask] = colour[ch]
    else:
      return
  raise RuntimeError(
      f"Could not place {spec.max_objects} visible sprites in a {s}x{s} "
      "image; lower data.max_objects, data.max_radius or "
      "data.min_visible_pixels / data.min_visible_fraction.")


def render_example(config: Any, split: str, index: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
  """One scene: (image [S, S, 3] float32 in [0, 1], seg [S, S] int32).

  ``seed`` seeds the content unless ``config.content_seed`` is set.
  """
  spec = _spec(config)
  s = spec.image_size
  image, seg = np.empty((s, s, 3), np.float32), np.empty((s, s), np.int32)
  _render(spec, seed, stream.split_id(split), index, image, seg)
  return image, seg


def _render_rows(spec: _Spec, seed: int, split_id: int, indices: np.ndarray,
                 valid: np.ndarray):
  """Renders rows; invalid rows are zeros. [b] -> [b, S, S, 3], [b, S, S]."""
  s = spec.image_size
  images = np.zeros((len(indices), s, s, 3), np.float32)
  segs = np.zeros((len(indices), s, s), np.int32)
  for row, (index, ok) in enumerate(zip(indices, valid)):
    if ok:
      _render(spec, seed, split_id, index, images[row], segs[row])
  return images, segs


def render_batch(config: Any, split: str, indices: Any,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Scenes for ``indices`` [b]: images [b, S, S, 3], segs [b, S, S]."""
  indices = np.asarray(indices, np.int64)
  return _render_rows(_spec(config), seed, stream.split_id(split), indices,
                      np.ones(len(indices), bool))


# ------------------------------------------------------------- index stream


def step_indices(config: Any, split: str, step: int, *, batch_size: int,
                 seed: int, process_index: int = 0, process_count: int = 1,
                 repeat: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Example indices of this process's rows of global batch ``step``.

  Returns:
    (indices [b], valid [b]) with ``b = batch_size // process_count``;
    padding rows (only when not repeating) have index 0 and valid False.
  """
  if repeat is None:
    repeat = split == "train"
  return stream.step_rows(
      step, num_examples(config, split), split=stream.split_id(split),
      batch_size=batch_size, seed=seed, process_index=process_index,
      process_count=process_count, repeat=repeat, stream=_SHUFFLE_STREAM)


# ------------------------------------------------------------------ tf.data


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int | None = None,
                process_count: int | None = None,
                repeat: bool | None = None):
  """This process's batches as a `tf.data.Dataset` (see module doc).

  Elements are dicts: ``image`` float32 [b, S, S, 3] in [0, 1],
  ``segmentation`` int32 [b, S, S] and, when not repeating, ``valid`` bool
  [b]; ``b = batch_size // process_count``.

  ``repeat`` (default: ``split == "train"``) gives the endless stream with a
  new permutation per epoch, for any split; ``repeat=False`` visits the
  split once, in order, the last batch padded with ``valid=False`` rows.
  ``start_step`` skips that many global batches in O(1).
  """
  spec = _spec(config)
  split_id = stream.split_id(split)
  s = spec.image_size

  def load_rows(indices, valid):
    images, segs = _render_rows(spec, seed, split_id, indices, valid)
    return {"image": images, "segmentation": segs}

  return stream.make_dataset(
      load_rows, {"image": stream.Feature((s, s, 3), np.float32),
                  "segmentation": stream.Feature((s, s), np.int32)},
      n=num_examples(config, split), split=split, batch_size=batch_size,
      seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat,
      shuffle_stream=_SHUFFLE_STREAM, options=stream.stream_options(config))


def user_preprocessing(config: Any):
  """Own images for a model trained on sprites (square, procedural)."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  return preprocess.square(config, "sprites (procedural, square): " +
                           preprocess.square_text(int(config.image_size)) +
                           " (bilinear)")
