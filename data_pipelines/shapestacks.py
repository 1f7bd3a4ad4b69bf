"""ShapeStacks (Groth et al., ECCV 2018) with instance masks, as in GENESIS.

Published layout (``DIR`` = the extracted ``shapestacks`` folder)::

  DIR/recordings/<scenario>/rgb-w=W-f=F-l=L-c=C-cam_N-mono-0.png  224x224
  DIR/splits/<split_name>/{train,eval,test}.txt    one scenario per line
  DIR/iseg/<scenario>/iseg-w=0-f=0-l=0-c=original-cam_N-mono-0.map

The RGB recordings and splits come from ``shapestacks-rgb.tar.gz`` and
``shapestacks-meta.tar.gz``; the instance maps (``iseg``) were published
separately by the GENESIS authors. A ``.map`` file is a PNG whose red channel
holds ``label * 32`` (label 0 = background, objects 1..6); every RGB view of
camera N shares the camera's map. Labels are decoded as uint8 integers and
divided by 32 (GENESIS reads them with ``plt.imread``, which in recent
matplotlib returns floats in [0, 1] for PNG data and silently turns every
label into 0).

Preprocessing (GENESIS ``datasets/shapestacks_config.py``): the image is
centre-cropped to 196 and resized to 64 with torchvision's (PIL's)
antialiased bilinear filter; the label map is centre-cropped to 196 and
resized with ``F.interpolate``'s nearest rule. Splits: the official
``train`` / ``eval`` / ``test`` scenario lists (``eval`` is our
"validation"), every RGB view of a scenario in its split.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import ml_collections

from data_pipelines import image_common as ic
from data_pipelines import stream

WHERE = ("https://shapestacks.robots.ox.ac.uk (shapestacks-rgb.tar.gz, "
         "shapestacks-meta.tar.gz from http://shapestacks-file.robots.ox.ac."
         "uk/static/download/v1/); instance maps (iseg) from the GENESIS "
         "README, https://github.com/applied-ai-lab/genesis#shapestacks")
EXPECTED = """\
  DIR/recordings/<scenario>/rgb-w=*-f=*-l=*-c=*-cam_N-mono-0.png (224x224 RGB)
  DIR/splits/<split_name>/train.txt, eval.txt, test.txt (scenario names)
  DIR/iseg/<scenario>/iseg-w=0-f=0-l=0-c=original-cam_N-mono-0.map"""
IMAGE_SIZE = 224
LABEL_BIN = 32  # 256 levels / 8 labels.
SPLIT_FILES = {"train": "train.txt", "validation": "eval.txt",
               "test": "test.txt"}
_RGB = re.compile(r"^rgb-.*-cam_(\d+)-mono-0\.png$")


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section (GENESIS's ShapeStacks protocol)."""
  c = ml_collections.ConfigDict()
  c.name = "shapestacks"
  c.data_dir = ""  # The folder holding recordings/, splits/, iseg/.
  c.variant = ""  # Unused.
  c.split_name = "default"  # splits/<split_name>/ (or blocks_all, css_all).
  c.image_size = 64  # Output height = width.
  c.crop_size = 196  # Centre crop of the 224x224 views.
  # Segmentation metrics: GENESIS-V2 reports ARI-FG / MSC-FG here.
  c.metrics_include_background = False
  c.num_parallel_calls = 2
  c.prefetch = 2
  return c


@dataclasses.dataclass(frozen=True)
class _Files:
  images: list[str]
  maps: list[str]


def _root(data_dir: str) -> str:
  """The folder with recordings/ (DIR or DIR/shapestacks)."""
  nested = os.path.join(data_dir, "shapestacks")
  if (not os.path.isdir(os.path.join(data_dir, "recordings"))
      and os.path.isdir(os.path.join(nested, "recordings"))):
    return nested
  return data_dir


_INDEX: dict[tuple[str, str, str], _Files] = {}


def _files(config: Any, split: str) -> _Files:
  """RGB views of the split's scenarios and their label maps (cached)."""
  cfg = stream.resolve(config, default_config())
  data_dir = _root(ic.require_data_dir(cfg, what="ShapeStacks",
                                       expected=EXPECTED, where=WHERE))
  key = (os.path.realpath(data_dir), cfg.split_name, split)
  if key in _INDEX:
    return _INDEX[key]
  for sub in ("recordings", "splits", "iseg"):
    ic.require_path(os.path.join(data_dir, sub), what=f"ShapeStacks {sub}/",
                    expected=EXPECTED, where=WHERE, kind="dir")
  split_file = ic.require_path(
      os.path.join(data_dir, "splits", cfg.split_name, SPLIT_FILES[split]),
      what=f"ShapeStacks split file (data.split_name={cfg.split_name!r})",
      expected=EXPECTED, where=WHERE, kind="file")
  with open(split_file) as f:
    scenarios = [line.strip() for line in f if line.strip()]
  if not scenarios:
    raise stream.DatasetFormatError(f"{split_file}: lists no scenarios.")
  images, maps = [], []
  for scenario in scenarios:
    rec_dir = os.path.join(data_dir, "recordings", scenario)
    names = [n for n in ic.list_files(rec_dir) if _RGB.match(n)]
    if not names:
      raise stream.DatasetNotFoundError(
          f"ShapeStacks scenario {scenario!r} (listed in {split_file}) has no "
          f"rgb-*-cam_N-mono-0.png views in {rec_dir!r}.\nExpected layout:\n"
          f"{EXPECTED}\nGet the data from: {WHERE}")
    iseg_dir = os.path.join(data_dir, "iseg", scenario)
    have = set(ic.list_files(iseg_dir))
    for n in names:
      cam = _RGB.match(n).group(1)
      m = f"iseg-w=0-f=0-l=0-c=original-cam_{cam}-mono-0.map"
      if m not in have:
        raise stream.DatasetNotFoundError(
            f"ShapeStacks instance map {os.path.join(iseg_dir, m)!r} (for "
            f"{os.path.join(rec_dir, n)!r}) not found.\nExpected layout:\n"
            f"{EXPECTED}\nGet the data from: {WHERE}")
      images.append(os.path.join(rec_dir, n))
      maps.append(os.path.join(iseg_dir, m))
  _INDEX[key] = _Files(images, maps)
  return _INDEX[key]


def split_files(config: Any, split: str) -> list[tuple[str, str]]:
  """(RGB view, label map) paths of a split, in order."""
  stream.split_id(split)
  files = _files(config, split)
  return list(zip(files.images, files.maps))


def num_examples(config: Any, split: str) -> int:
  stream.split_id(split)
  return len(_files(config, split).images)


def decode_label_map(contents, path=""):
  """Label map of a ``.map`` file's bytes: int32 ``[H, W]`` in 0..7."""
  tf = stream.tf()
  rgb = ic.decode_png_checked(contents, path, channels=3,
                              shape=(IMAGE_SIZE, IMAGE_SIZE),
                              what="ShapeStacks label map")
  return tf.cast(rgb[..., 0], tf.int32) // LABEL_BIN


def _check_first(files: _Files) -> None:
  """Eager check of the first view and map: clear errors up front."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for path, what in ((files.images[0], "image"), (files.maps[0], "label map")):
    try:
      with Image.open(path) as im:
        size = im.size
    except (OSError, ValueError) as e:
      raise stream.DatasetFormatError(
          f"ShapeStacks {what} {path!r} cannot be read as a PNG ({e}).") \
          from None
    if size != (IMAGE_SIZE, IMAGE_SIZE):
      raise stream.DatasetFormatError(
          f"ShapeStacks {what} {path!r} is {size[0]}x{size[1]}; the "
          f"published views are {IMAGE_SIZE}x{IMAGE_SIZE}.")


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int = 0,
                process_count: int = 1, repeat: bool = False):
  """This process's batches: ``image`` [b, S, S, 3], ``segmentation`` [b, S, S].

  Without ``repeat`` also ``valid`` [b] (padding rows are zeros).
  """
  stream.check_stream_args(split, batch_size, start_step, process_index,
                           process_count)
  cfg = stream.resolve(config, default_config())
  size = stream.check_int(cfg.image_size, "image_size", 1)
  crop = stream.check_int(cfg.crop_size, "crop_size", 1)
  if crop > IMAGE_SIZE:
    raise ValueError(f"data.crop_size={crop} exceeds the {IMAGE_SIZE}x"
                     f"{IMAGE_SIZE} views.")
  files = _files(config, split)
  _check_first(files)
  tf = stream.tf()
  images = tf.constant(files.images)
  maps = tf.constant(files.maps)
  y, x = ic.center_crop_offsets(IMAGE_SIZE, IMAGE_SIZE, crop, crop)

  def load(index):
    image_path = tf.gather(images, index)
    map_path = tf.gather(maps, index)
    image = ic.read_png_checked(image_path, channels=3,
                                shape=(IMAGE_SIZE, IMAGE_SIZE),
                                what="ShapeStacks image")
    labels = decode_label_map(tf.io.read_file(map_path), map_path)
    image = image[y:y + crop, x:x + crop]
    labels = labels[y:y + crop, x:x + crop]
    image = ic.resize_image(image, (size, size), (crop, crop), "bilinear")
    labels = ic.resize_nearest(labels, (size, size), (crop, crop), "torch")
    return {"image": tf.ensure_shape(ic.to_unit(image), (size, size, 3)),
            "segmentation": tf.ensure_shape(labels, (size, size))}

  context = (f"ShapeStacks split {split!r} ({len(files.images)} views, "
             f"e.g. {files.images[0]})")
  return stream.indexed_dataset(
      load, num_examples=len(files.images), batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat, config=config,
      context=context)


def user_preprocessing(config: Any):
  """The centre crop of the 224x224 views, as a fraction, then bilinear."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  crop = int(config.get("crop_size", 196))
  return preprocess.fraction_crop(config, crop / IMAGE_SIZE, "bilinear",
                                  f"{crop} of {IMAGE_SIZE}")
