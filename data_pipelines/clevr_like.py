"""Procedural CLEVR-like scenes: static CLEVR images, no download.

An offline stand-in for CLEVR (Johnson et al. 2017) as object-centric papers
use it: CLEVR10 (3 to 10 objects, CLEVR's own range; the default) and CLEVR6
(at most 6 objects; preset ``clevr6``), e.g. DeepMind's ``clevr_with_masks``
(`data_pipelines.multi_object`) and AST-Seg's CLEVR (paper 003). A scene is
``min_objects``..``max_objects`` CLEVR objects: a shape of ``shapes``
(sphere, cube, cylinder), rubber or metal, one of CLEVR's 8 colours, a size
of ``sizes`` (CLEVR's small and large, r = 0.35 and 0.7: a sphere's radius, a
cylinder's radius and half-height, a cube's half-diagonal, i.e. half-side
r / sqrt(2)), a uniform yaw; attributes are drawn independently, as CLEVR
draws them (repeats allowed). The grey floor, the shading (Lambert rubber,
shiny metal, cast shadows from one light) and the per-pixel ground truth come
from the ray caster of `data_pipelines.clevrer_like` (`render_frame`, with
``supersampling``^2 rays per pixel).

Placement follows CLEVR's generator (``render_images.py``): object centres
are uniform in ``[-floor_extent, floor_extent]^2`` (CLEVR: 3); a new object
is rejected if its footprint circle (radius r, which holds a cube's corners)
comes within ``min_distance`` of another's (CLEVR's ``--min_dist`` 0.25; so
objects never interpenetrate), or if it is within ``margin`` of another along
the camera's left-right or front-back axis (CLEVR's ``--margin`` 0.4); after
50 rejections of one object all are placed anew (``--max_retries``). Unlike
CLEVR, whose square crops lose objects near the sides, an object's centre
must project inside the image. Minimum visibility: a placed scene is rendered
and its objects are placed anew if one keeps fewer than
``min_visible_pixels`` pixels in the segmentation (given at 64x64, scaled by
``(image_size / 64)^2``; 22 is CLEVR's ``--min_pixels_per_object`` 200 in
the 192x192 crop that 64 pixels show: 200 (64 / 192)^2), so no object is
hidden or cut down to a sliver.

Camera: approximately CLEVR's (``base_scene.blend``: at about (7.48, -6.51,
5.34), a 35 mm lens, 32 mm sensor across 320 pixels), here looking at the
origin: ``camera_distance`` 11.26, ``camera_elevation`` 28.3 degrees,
``camera_azimuth`` -41 degrees. ``field_of_view`` 30.7 degrees is the centre
192x192 crop of CLEVR's 320x240 images that GENESIS-V2 and AST-Seg use (37.8:
the whole 240x240 square). ``camera_jitter`` moves the camera (not its
orientation) by up to that much along each axis, per scene, as CLEVR's
``--camera_jitter`` (0.5) does; 0 fixes it. CLEVR's light jitter is not
reproduced (one fixed light).

``image`` float32 ``[S, S, 3]`` in [0, 1] (8-bit levels: on the fly and on
disk alike); ``segmentation`` int32 ``[S, S]``, 0 = floor, objects 1..n in
placement order (a pixel's label is the majority over its rays).

Determinism and streaming as in `data_pipelines.sprites`: a scene is a pure
function of ``(content_seed, split, index)`` and the scene fields (None: the
content follows ``get_dataset``'s seed, which otherwise only shuffles); the
shared index stream of `data_pipelines.stream` (a fresh permutation per
epoch, O(1) ``start_step``, evaluation padding marked ``valid``).

Rendering is slow (one CPU core: about 20 images/s at 64x64, 10 at 128x128,
with ``supersampling`` 2); so that training does not wait for it, write the
dataset once, ``python -m data_pipelines.generate clevr_like --out=DIR``
(scenes stored as one-frame episodes, about 2 KB each at 64x64), and read it
with ``data.data_dir=DIR`` (the same scenes as on the fly for the same
content seed), or keep the scenes rendered in the first epoch in memory with
``cache_episodes``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import ml_collections
from ml_collections import config_dict
import numpy as np

from data_pipelines import clevrer_like as cl
from data_pipelines import stream
from data_pipelines import video_common as vc

NAME = "clevr_like"
_DATASET_TAG = 6  # Second word of the content seeds (datasets never collide).
_REFERENCE_SIZE = 64  # min_visible_pixels is given for 64x64 images.
_MAX_RETRIES = 50  # Positions tried per object (CLEVR's --max_retries).
_MAX_SCENE_TRIES = 500  # Placements tried per scene before giving up.
COLOUR_NAMES = tuple(cl.COLOURS)
GENERATION_FIELDS = (
    "image_size", "min_objects", "max_objects", "shapes", "sizes",
    "floor_extent", "min_distance", "margin", "min_visible_pixels",
    "supersampling", "camera_distance", "camera_elevation", "camera_azimuth",
    "field_of_view", "camera_jitter", "content_seed")


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = NAME
  # Directory written by `python -m data_pipelines.generate clevr_like`;
  # empty: render on the fly.
  c.data_dir = ""
  c.image_size = 64  # Height = width, pixels.
  c.min_objects = 3  # Objects per scene, uniform in [min, max] (CLEVR10).
  c.max_objects = 10
  c.shapes = cl.SHAPES  # Drawn uniformly; a subset of clevrer_like.SHAPES.
  c.sizes = (0.35, 0.7)  # CLEVR's small and large r, drawn uniformly.
  c.floor_extent = 3.0  # Centres uniform in [-e, e]^2 (units).
  c.min_distance = 0.25  # Between footprint circles (CLEVR --min_dist).
  c.margin = 0.4  # Along the camera's horizontal axes (CLEVR --margin).
  # Every object keeps this many visible pixels (at 64x64; scaled by
  # (image_size/64)^2); 0: no check.
  c.min_visible_pixels = 22
  c.supersampling = 2  # Rays per pixel along each axis.
  c.camera_distance = 11.26  # From the look-at point (0, 0, 0), units.
  c.camera_elevation = 28.3  # Degrees above the floor.
  c.camera_azimuth = -41.0  # Degrees around the vertical.
  c.field_of_view = 30.7  # Degrees (CLEVR's 192x192 centre crop).
  c.camera_jitter = 0.5  # Camera shift per axis, uniform (CLEVR: 0.5).
  c.num_train = 50_000  # GENESIS' CLEVR: 50K train images.
  c.num_validation = 1_000
  c.num_test = 1_000
  # Seed of the scenes' content (generate --seed); None: content follows
  # get_dataset's seed.
  c.content_seed = config_dict.FieldReference(0, field_type=int)
  c.cache_episodes = False  # Keep rendered scenes in memory (on the fly).
  c.num_parallel_calls = 2  # tf.data: batches produced in parallel.
  c.prefetch = 2  # tf.data: batches prefetched.
  return c


PRESETS = {
    "clevr6": dict(max_objects=6),  # CLEVR6: CLEVR scenes with <= 6 objects.
    "clevr10": dict(max_objects=10),  # CLEVR10: all of CLEVR (3-10).
}


def preset_config(preset: str) -> ml_collections.ConfigDict:
  return stream.preset(NAME, PRESETS, default_config, preset)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Validated scene fields (hashable and picklable, for generator workers).

  The camera and sampling fields are those `clevrer_like.camera_rays` and
  `clevrer_like.render_frame` read.
  """
  image_size: int
  min_objects: int
  max_objects: int
  shapes: tuple[str, ...]
  sizes: tuple[float, ...]
  floor_extent: float
  min_distance: float
  margin: float
  min_visible_pixels: int  # At image_size.
  supersampling: int
  camera_distance: float
  camera_elevation: float
  camera_azimuth: float
  field_of_view: float
  camera_jitter: float
  content_seed: int | None  # None: get_dataset's seed.


def spec_from_config(config: Any, seed: int | None = None) -> Spec:
  """Validates the scene fields; raises ValueError naming a field.

  ``seed`` (get_dataset's) stands in for ``content_seed=None``.
  """
  d = default_config()
  size = stream.int_field(config, "image_size", 8)
  lo = stream.int_field(config, "min_objects", 1)
  hi = stream.field(config, "max_objects")
  if (isinstance(hi, bool) or not isinstance(hi, (int, np.integer))
      or not lo <= hi <= 255):
    raise ValueError(f"data.max_objects={hi!r} is invalid; expected an int "
                     f"in [data.min_objects={lo}, 255].")
  shapes = stream.field(config, "shapes", d.shapes)
  if (isinstance(shapes, str) or not shapes
      or any(s not in cl.SHAPES for s in shapes)):
    raise ValueError(f"data.shapes={shapes!r} is invalid; expected a "
                     f"non-empty subset of {cl.SHAPES}.")
  sizes = stream.field(config, "sizes", d.sizes)
  try:
    sizes = tuple(float(r) for r in sizes)
  except (TypeError, ValueError):
    sizes = ()
  if not sizes or not all(0.05 <= r <= 2.0 for r in sizes):
    raise ValueError(f"data.sizes={stream.field(config, 'sizes')!r} is "
                     "invalid; expected object sizes r in [0.05, 2] (CLEVR: "
                     "(0.35, 0.7)).")
  extent = stream.float_field(config, "floor_extent", 0.5, 20.0,
                              d.floor_extent)
  min_px = stream.int_field(config, "min_visible_pixels", 0,
                            d.min_visible_pixels)
  content_seed = stream.field(config, "content_seed", 0)
  if content_seed is not None and (
      isinstance(content_seed, bool)
      or not isinstance(content_seed, (int, np.integer))):
    raise ValueError(f"data.content_seed={content_seed!r} is invalid; "
                     "expected an int or None.")
  if content_seed is None:
    content_seed = seed
  return Spec(
      image_size=size, min_objects=lo, max_objects=int(hi),
      shapes=tuple(shapes), sizes=sizes, floor_extent=extent,
      min_distance=stream.float_field(config, "min_distance", 0.0, 5.0,
                                      d.min_distance),
      margin=stream.float_field(config, "margin", 0.0, 5.0, d.margin),
      min_visible_pixels=(0 if not min_px else max(1, round(
          min_px * (size / _REFERENCE_SIZE) ** 2))),
      supersampling=stream.int_field(config, "supersampling", 1,
                                     d.supersampling),
      camera_distance=stream.float_field(config, "camera_distance", 1.0, 1e3,
                                         d.camera_distance),
      camera_elevation=stream.float_field(config, "camera_elevation", 5.0,
                                          90.0, d.camera_elevation),
      camera_azimuth=float(stream.field(config, "camera_azimuth",
                                        d.camera_azimuth)),
      field_of_view=stream.float_field(config, "field_of_view", 5.0, 120.0,
                                       d.field_of_view),
      camera_jitter=stream.float_field(config, "camera_jitter", 0.0, 5.0,
                                       d.camera_jitter),
      content_seed=None if content_seed is None else int(content_seed))


# ----------------------------------------------------------------- scenes


@functools.lru_cache(maxsize=8)
def _camera(spec: Spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Eye [3], ray directions [R, R, 3] and the view's side planes [4, 3].

  A point ``p`` is in view when ``(p - eye) @ planes.T > 0`` everywhere
  (the planes through the corner rays; a shifted eye keeps them).
  """
  eye, dirs = cl.camera_rays(spec)
  corners = dirs[[0, 0, -1, -1], [0, -1, -1, 0]]  # [4, 3], around the view
  planes = np.cross(corners, np.roll(corners, -1, axis=0))  # [4, 3]
  planes *= np.sign(planes @ dirs[dirs.shape[0] // 2, dirs.shape[1] // 2])[
      :, None]  # Pointing inwards.
  for a in (eye, dirs, planes):
    a.flags.writeable = False
  return eye, dirs, planes


def _sample_objects(rng: np.random.Generator, spec: Spec, n: int):
  """n objects with CLEVR's independent attributes: (objects, colour names,
  r [n], yaw [n])."""
  objects, names, radii = [], [], np.zeros(n)
  for i in range(n):
    shape = spec.shapes[rng.integers(len(spec.shapes))]
    material = cl.MATERIALS[rng.integers(len(cl.MATERIALS))]
    names.append(COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))])
    radii[i] = spec.sizes[rng.integers(len(spec.sizes))]
    size = radii[i] / math.sqrt(2) if shape == "cube" else radii[i]
    objects.append(cl.SceneObject(
        shape, material, np.asarray(cl.COLOURS[names[-1]]) / 255.0, size))
  return objects, names, radii, rng.uniform(0, 2 * np.pi, n)


def _place(rng: np.random.Generator, spec: Spec, objects, radii: np.ndarray,
           eye: np.ndarray, planes: np.ndarray) -> np.ndarray | None:
  """CLEVR's rejection sampling of positions [n, 2]; None: start again."""
  az = math.radians(spec.camera_azimuth)
  axes = np.array([[-math.sin(az), math.cos(az)],  # Camera right.
                   [-math.cos(az), -math.sin(az)]])  # Camera forward.
  xy = np.zeros((len(objects), 2))
  for i, obj in enumerate(objects):
    for _ in range(_MAX_RETRIES):
      p = rng.uniform(-spec.floor_extent, spec.floor_extent, 2)
      d = p - xy[:i]  # [i, 2]
      gaps = np.linalg.norm(d, axis=1) - radii[:i] - radii[i]
      along = np.abs(d @ axes.T)  # [i, 2]
      centre = np.array([p[0], p[1], obj.size])
      if (np.all(gaps >= spec.min_distance)
          and np.all(along >= spec.margin)
          and np.all((centre - eye) @ planes.T > 0)):
        xy[i] = p
        break
    else:
      return None
  return xy


def render_scene(spec: Spec, split: str, index: int) -> dict[str, Any]:
  """Scene ``index`` of ``split``: a dict with ``image`` uint8 [S, S, 3],
  ``segmentation`` uint8 [S, S] (0 = floor, objects 1..n), ``num_objects``,
  ``objects`` (per object: shape, material, colour name, r, x, y, yaw in
  radians, visible pixels) and ``eye`` [3] (the jittered camera)."""
  if spec.content_seed is None:
    raise ValueError("data.content_seed is None and no seed was given; set "
                     "data.content_seed to an int.")
  rng = np.random.default_rng([
      vc.CONTENT_STREAM, _DATASET_TAG, stream.seed_word(spec.content_seed),
      stream.split_id(split), int(index)])
  base_eye, dirs, planes = _camera(spec)
  n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
  # CLEVR jitters the camera once per scene, before placing the objects.
  eye = base_eye + rng.uniform(-spec.camera_jitter, spec.camera_jitter, 3)
  for _ in range(_MAX_SCENE_TRIES):
    objects, names, radii, yaw = _sample_objects(rng, spec, n)
    xy = _place(rng, spec, objects, radii, eye, planes)
    if xy is None:
      continue
    image, ids = cl.render_frame(objects, xy, yaw, eye, dirs, spec)
    visible = np.bincount(ids.ravel(), minlength=n + 1)[1:]  # [n]
    if np.all(visible >= spec.min_visible_pixels):
      break
  else:
    raise RuntimeError(
        f"Could not place {n} visible objects in {_MAX_SCENE_TRIES} tries "
        f"({split!r} scene {index}); lower data.max_objects, "
        "data.min_distance, data.margin or data.min_visible_pixels, or "
        "raise data.floor_extent or data.field_of_view.")
  return {
      "image": np.round(image * 255).astype(np.uint8),
      "segmentation": ids, "num_objects": n, "eye": eye,
      "objects": [dict(shape=o.shape, material=o.material,
                       colour=names[k], r=float(radii[k]), x=float(xy[k, 0]),
                       y=float(xy[k, 1]), yaw=float(yaw[k]),
                       visible_pixels=int(visible[k]))
                  for k, o in enumerate(objects)]}


def generate_episode(spec: Spec, split: str, index: int) -> dict[str, Any]:
  """The scene as a one-frame episode, as `data_pipelines.generate` writes
  it: ``video`` uint8 [1, S, S, 3], ``segmentation`` uint8 [1, S, S]."""
  scene = render_scene(spec, split, index)
  return {"video": scene["image"][None],
          "segmentation": scene["segmentation"][None],
          "num_objects": scene["num_objects"]}


def render_batch(config: Any, split: str, indices: Any,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Scenes for ``indices`` [b], rendered (``data_dir`` is not read):
  images float32 [b, S, S, 3], segs int32 [b, S, S]. ``seed`` stands in for
  ``content_seed=None``."""
  spec = spec_from_config(config, seed)
  scenes = [render_scene(spec, split, int(i)) for i in np.ravel(indices)]
  s = spec.image_size
  images = np.zeros((len(scenes), s, s, 3), np.float32)
  segs = np.zeros((len(scenes), s, s), np.int32)
  for row, scene in enumerate(scenes):
    images[row] = scene["image"] / np.float32(255)
    segs[row] = scene["segmentation"]
  return images, segs


# ------------------------------------------------------------------ tf.data


def source(config: Any, split: str, seed: int | None = None):
  """``(n, (1, S, S), scene(index) -> (video [1, S, S, 3] uint8, seg))``:
  rendered, or read from ``data_dir`` (`video_common.episodes_source`)."""
  spec = spec_from_config(config, seed)
  return vc.episodes_source(
      config, split, name=NAME,
      generate=lambda s, i: generate_episode(spec, s, i),
      episode_shape=(1, spec.image_size, spec.image_size),
      generation_fields=GENERATION_FIELDS, cache_key=spec)


def num_examples(config: Any, split: str) -> int:
  """Examples in a split: ``num_<split>``, or those in ``data_dir``."""
  return source(config, split)[0]


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int | None = None,
                process_count: int | None = None,
                repeat: bool | None = None):
  """This process's batches (see ``data_pipelines/__init__.py``).

  Elements: ``image`` float32 [b, S, S, 3] in [0, 1], ``segmentation`` int32
  [b, S, S] and, when not repeating, ``valid`` bool [b].
  """
  n, (t, h, w), scene = source(config, split, seed)
  if t != 1:
    raise ValueError(f"data.data_dir={stream.field(config, 'data_dir')!r} "
                     f"holds episodes of {t} frames; clevr_like scenes are "
                     "one frame.")

  def load_rows(indices, valid):
    images = np.zeros((len(indices), h, w, 3), np.float32)
    segs = np.zeros((len(indices), h, w), np.int32)
    for row, (index, ok) in enumerate(zip(indices, valid)):
      if ok:
        video, seg = scene(index)
        images[row] = video[0] / np.float32(255)
        segs[row] = seg[0]
    return {"image": images, "segmentation": segs}

  return stream.make_dataset(
      load_rows, {"image": stream.Feature((h, w, 3), np.float32),
                  "segmentation": stream.Feature((h, w), np.int32)},
      n=n, split=split, batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat,
      options=stream.stream_options(config))


def user_preprocessing(config: Any):
  """Own images for a model trained on these scenes (square)."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  return preprocess.square(config)
