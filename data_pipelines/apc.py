"""APC 2016: the MIT-Princeton "Object Segmentation Training Dataset".

As preprocessed for GENESIS-V2 (paper 002 App. D). Published layout (the
unpacked ``training.zip``; ``DIR`` holds ``training/``)::

  DIR/training/<shelf|tote>/<object>/scene-XXXX/frame-XXXXXX.color.png
  DIR/training/<shelf|tote>/<object>/scene-XXXX/masks/frame-XXXXXX.mask.png

Colour frames are 480x640 RGB; each mask is a grayscale PNG of the one
challenge object in the scene (non-zero = object). Scenes without a
``masks/`` folder (empty scenes) are all background, as in the GENESIS code.

Preprocessing: the shorter side is resized to 128 (torchvision ``Resize``:
PIL's antialiased bilinear filter for images, ``NEAREST`` for masks; 480x640
becomes 128x170), then the centre 128x128 is kept. The segmentation is the
binary mask: 1 = the object, 0 = everything else.

Splits are by scene (no scene in two splits): the sorted scene folders are
shuffled with Python's ``random.Random(split_seed)`` (GENESIS: seed 0);
validation = the first 10%, test = the next 10%, train = the rest. Because
there is a single object, GENESIS-V2 reports ARI and MSC on all pixels
(``metrics_include_background = True``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import ml_collections

from data_pipelines import image_common as ic
from data_pipelines import stream

WHERE = ("http://apc.cs.princeton.edu (the \"Object Segmentation Training "
         "Dataset\", http://3dvision.princeton.edu/projects/2016/apc/"
         "downloads/training.zip, about 130 GB; unzip into DIR)")
EXPECTED = """\
  DIR/training/<shelf|tote>/<object>/scene-XXXX/frame-XXXXXX.color.png (480x640)
  DIR/training/<shelf|tote>/<object>/scene-XXXX/masks/frame-XXXXXX.mask.png"""
RAW_SIZE = (480, 640)
_FRAME = re.compile(r"^(frame-\d+)\.color\.png$")


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section (paper 002 App. D)."""
  c = ml_collections.ConfigDict()
  c.name = "apc"
  c.data_dir = ""  # The folder holding training/.
  c.variant = ""  # Unused.
  c.image_size = 128  # Shorter side resized to this, then centre crop.
  c.split_seed = 0  # random.Random(split_seed) shuffles the scenes.
  c.eval_fraction = 0.1  # Of the scenes, for validation and for test.
  # GENESIS-V2 reports APC's ARI / MSC on all pixels (one object).
  c.metrics_include_background = True
  c.num_parallel_calls = 2
  c.prefetch = 2
  return c


@dataclasses.dataclass(frozen=True)
class _Files:
  images: list[str]
  masks: list[str]  # "" = no mask (all background).
  scenes: list[str]


def _training_dir(data_dir: str) -> str:
  t = os.path.join(data_dir, "training")
  if os.path.isdir(t):
    return t
  if any(os.path.isdir(os.path.join(data_dir, d)) for d in ("shelf", "tote")):
    return data_dir
  return ic.require_path(t, what="APC training/ folder", expected=EXPECTED,
                         where=WHERE, kind="dir")


def scenes(data_dir: str) -> list[str]:
  """Sorted scene folders, relative to training/ ("shelf/obj/scene-0000")."""
  root = _training_dir(data_dir)
  out = []
  for location in ic.list_dirs(root):
    for obj in ic.list_dirs(os.path.join(root, location)):
      for scene in ic.list_dirs(os.path.join(root, location, obj)):
        if scene.startswith("scene-"):
          out.append(f"{location}/{obj}/{scene}")
  if not out:
    raise stream.DatasetNotFoundError(
        f"APC: no scene folders under {root!r}.\nExpected layout:\n"
        f"{EXPECTED}\nGet the data from: {WHERE}")
  return sorted(out)


_INDEX: dict[tuple[Any, ...], _Files] = {}


def _files(config: Any, split: str) -> _Files:
  cfg = stream.resolve(config, default_config())
  data_dir = ic.require_data_dir(cfg, what="APC", expected=EXPECTED,
                                 where=WHERE)
  seed = stream.check_int(cfg.split_seed, "split_seed", 0)
  frac = float(cfg.eval_fraction)
  if not 0.0 <= frac < 0.5:
    raise ValueError(f"data.eval_fraction={frac} is invalid; expected "
                     "[0, 0.5).")
  key = (os.path.realpath(data_dir), seed, frac, split)
  if key in _INDEX:
    return _INDEX[key]
  root = _training_dir(data_dir)
  chosen = stream.split_groups(scenes(data_dir), seed=seed,
                               eval_fraction=frac)[split]
  if not chosen:
    raise ValueError(f"APC split {split!r} has no scenes "
                     f"(data.eval_fraction={frac}).")
  images, masks = [], []
  for scene in sorted(chosen):
    scene_dir = os.path.join(root, scene)
    mask_dir = os.path.join(scene_dir, "masks")
    have_masks = os.path.isdir(mask_dir)
    mask_names = set(ic.list_files(mask_dir))
    for name in ic.list_files(scene_dir):
      m = _FRAME.match(name)
      if not m:
        continue
      images.append(os.path.join(scene_dir, name))
      mask_name = f"{m.group(1)}.mask.png"
      if have_masks and mask_name not in mask_names:
        raise stream.DatasetNotFoundError(
            f"APC mask {os.path.join(mask_dir, mask_name)!r} (for "
            f"{images[-1]!r}) not found.\nExpected layout:\n{EXPECTED}\n"
            f"Get the data from: {WHERE}")
      masks.append(os.path.join(mask_dir, mask_name) if have_masks else "")
  if not images:
    raise stream.DatasetNotFoundError(
        f"APC split {split!r}: no frame-*.color.png files in its "
        f"{len(chosen)} scenes under {root!r}.\nExpected layout:\n"
        f"{EXPECTED}\nGet the data from: {WHERE}")
  _INDEX[key] = _Files(images, masks, sorted(chosen))
  return _INDEX[key]


def split_scenes(config: Any, split: str) -> list[str]:
  """The scenes of a split (relative to training/)."""
  stream.split_id(split)
  return list(_files(config, split).scenes)


def split_images(config: Any, split: str) -> list[str]:
  """The colour frames of a split, in order."""
  stream.split_id(split)
  return list(_files(config, split).images)


def num_examples(config: Any, split: str) -> int:
  stream.split_id(split)
  return len(_files(config, split).images)


def resize_geometry(size: int, raw=RAW_SIZE):
  """torchvision ``Resize(size)`` + ``CenterCrop(size)``: (resized, top, left).

  ``Resize`` maps the shorter side to ``size`` (the longer one
  ``int(size * long / short)``); ``CenterCrop`` starts at
  ``int(round((resized - size) / 2))``.
  """
  h, w = raw
  if h <= w:
    oh, ow = size, int(size * w / h)
  else:
    oh, ow = int(size * h / w), size
  top = int(round((oh - size) / 2.0))
  left = int(round((ow - size) / 2.0))
  return (oh, ow), top, left


def _check_first(files: _Files) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for path, what in ((files.images[0], "image"),
                     (next((m for m in files.masks if m), ""), "mask")):
    if not path:
      continue
    try:
      with Image.open(path) as im:
        w, h = im.size
    except (OSError, ValueError) as e:
      raise stream.DatasetFormatError(
          f"APC {what} {path!r} cannot be read as a PNG ({e}).") from None
    if (h, w) != RAW_SIZE:
      raise stream.DatasetFormatError(
          f"APC {what} {path!r} is {h}x{w}; the published frames are "
          f"{RAW_SIZE[0]}x{RAW_SIZE[1]}.")


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int = 0,
                process_count: int = 1, repeat: bool = False):
  """This process's batches: ``image`` [b, S, S, 3], ``segmentation`` [b, S, S].

  ``segmentation`` is 1 on the object, 0 elsewhere. Without ``repeat`` also
  ``valid`` [b] (padding rows are zeros).
  """
  stream.check_stream_args(split, batch_size, start_step, process_index,
                           process_count)
  cfg = stream.resolve(config, default_config())
  size = stream.check_int(cfg.image_size, "image_size", 1)
  files = _files(config, split)
  _check_first(files)
  tf = stream.tf()
  images = tf.constant(files.images)
  masks = tf.constant(files.masks)
  (oh, ow), top, left = resize_geometry(size)

  def load(index):
    image_path = tf.gather(images, index)
    mask_path = tf.gather(masks, index)
    image = ic.read_png_checked(image_path, channels=3, shape=RAW_SIZE,
                                what="APC image")
    image = ic.resize_bilinear_uint8(image, (oh, ow))
    image = image[top:top + size, left:left + size]

    def read_mask():
      m = ic.read_png_checked(mask_path, channels=1, shape=RAW_SIZE,
                              what="APC mask")
      return tf.cast(m[..., 0] > 0, tf.int32)

    mask = tf.cond(tf.strings.length(mask_path) > 0, read_mask,
                   lambda: tf.zeros(RAW_SIZE, tf.int32))
    mask = ic.resize_nearest(mask, (oh, ow), RAW_SIZE, "pil")
    mask = mask[top:top + size, left:left + size]
    return {"image": tf.ensure_shape(ic.to_unit(image), (size, size, 3)),
            "segmentation": tf.ensure_shape(mask, (size, size))}

  context = (f"APC split {split!r} ({len(files.scenes)} scenes, "
             f"{len(files.images)} frames, e.g. {files.images[0]})")
  return stream.indexed_dataset(
      load, num_examples=len(files.images), batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat, config=config,
      context=context)


def user_preprocessing(config: Any):
  """Shorter side to the model's size and a centre crop."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  size = int(config.image_size)
  return preprocess.square(config, (
      f"shorter side to {size} and centre crop, i.e. "
      f"{preprocess.square_text(size)} (bilinear)"))
