"""CLEVRTEX (Karazija et al., NeurIPS 2021 datasets) and its OOD / CAMO sets.

Published layout (the unpacked ``clevrtex_<variant>*.tar.gz``)::

  DIR/clevrtex_<variant>/<bucket>/CLEVRTEX_<variant>_NNNNNN.png    240x320
  DIR/clevrtex_<variant>/<bucket>/CLEVRTEX_<variant>_NNNNNN_flat.png
  DIR/clevrtex_<variant>/<bucket>/CLEVRTEX_<variant>_NNNNNN.json

(``DIR`` may also be the ``clevrtex_<variant>`` folder itself.) Images are
RGBA (alpha dropped); ``_flat.png`` is a palette PNG whose *indices* are the
segmentation (0 = background, 1..N objects), read with PIL as integers (a
palette-expanding decoder would return colours, not labels).

Preprocessing and splits follow the benchmark's ``clevrtex_eval.py``: centre
crop of ``int(0.8 * 240) = 192`` pixels square, resized to 128 (PIL's
antialiased bilinear for images, ``NEAREST`` for masks); examples are
numbered 0..N-1 and split by index fraction: test = [0, 0.1 N), validation =
[0.1 N, 0.2 N), train = [0.2 N, N). ``outd`` (OOD) has no splits: its
"test" is the whole set. Variants: full, outd, camo (also pbg, vbg,
grassbg).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import image_common as ic
from data_pipelines import stream

WHERE = ("https://www.robots.ox.ac.uk/~vgg/data/clevrtex/ (clevrtex_full_part"
         "{1..5}.tar.gz, clevrtex_outd.tar.gz, clevrtex_camo.tar.gz)")
VARIANTS = ("full", "outd", "camo", "pbg", "vbg", "grassbg")
RAW_SIZE = (240, 320)
# The benchmark's splits: (start, end) fractions of the indices.
SPLITS = {"test": (0.0, 0.1), "validation": (0.1, 0.2), "train": (0.2, 1.0)}


def _expected(variant: str) -> str:
  v = variant
  return (f"  DIR/clevrtex_{v}/<bucket>/CLEVRTEX_{v}_NNNNNN.png (240x320)\n"
          f"  DIR/clevrtex_{v}/<bucket>/CLEVRTEX_{v}_NNNNNN_flat.png (index "
          "mask)")


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section (the CLEVRTEX benchmark's protocol)."""
  c = ml_collections.ConfigDict()
  c.name = "clevrtex"
  c.data_dir = ""  # The folder holding clevrtex_<variant>/.
  c.variant = "full"  # full, outd (OOD test set), camo; pbg, vbg, grassbg.
  c.image_size = 128  # Output height = width.
  c.crop_fraction = 0.8  # Centre crop of int(0.8 * min(H, W)) pixels.
  c.metrics_include_background = False  # mIoU / ARI-FG as the benchmark.
  c.num_parallel_calls = 2
  c.prefetch = 2
  return c


@dataclasses.dataclass(frozen=True)
class _Files:
  images: list[str]  # By index 0..N-1.
  masks: list[str]


def _base(data_dir: str, variant: str) -> str:
  sub = f"clevrtex_{variant}"
  if os.path.basename(os.path.normpath(data_dir)) == sub:
    return data_dir
  return ic.require_path(os.path.join(data_dir, sub),
                         what=f"CLEVRTEX {variant} folder",
                         expected=_expected(variant), where=WHERE,
                         kind="dir")


_INDEX: dict[tuple[str, str], _Files] = {}


def _all_files(data_dir: str, variant: str) -> _Files:
  """Every example of a variant, by index (cached)."""
  base = _base(data_dir, variant)
  key = (os.path.realpath(base), variant)
  if key in _INDEX:
    return _INDEX[key]
  pattern = re.compile(rf"^CLEVRTEX_{variant}_(\d{{6}})\.png$")
  found: dict[int, tuple[str, str]] = {}
  for root, _, names in os.walk(base):
    have = set(names)
    for name in names:
      m = pattern.match(name)
      if not m:
        continue
      index = int(m.group(1))
      mask = name[:-len(".png")] + "_flat.png"
      if mask not in have:
        raise stream.DatasetNotFoundError(
            f"CLEVRTEX mask {os.path.join(root, mask)!r} (for "
            f"{os.path.join(root, name)!r}) not found.\nExpected layout:\n"
            f"{_expected(variant)}\nGet the data from: {WHERE}")
      if index in found:
        raise stream.DatasetFormatError(
            f"CLEVRTEX index {index} appears twice: "
            f"{found[index][0]!r} and {os.path.join(root, name)!r}.")
      found[index] = (os.path.join(root, name), os.path.join(root, mask))
  if not found:
    raise stream.DatasetNotFoundError(
        f"CLEVRTEX: no CLEVRTEX_{variant}_NNNNNN.png files under {base!r}.\n"
        f"Expected layout:\n{_expected(variant)}\nGet the data from: {WHERE}")
  n = max(found) + 1
  missing = [i for i in range(n) if i not in found]
  if missing:
    raise stream.DatasetNotFoundError(
        f"CLEVRTEX {variant}: {len(missing)} of the indices 0..{n - 1} are "
        f"missing under {base!r} (first: {missing[:5]}); the benchmark's "
        f"index-based splits need them all. Get the data from: {WHERE}")
  files = _Files([found[i][0] for i in range(n)],
                 [found[i][1] for i in range(n)])
  _INDEX[key] = files
  return files


def _variant(cfg) -> str:
  return stream.check_choice(cfg.variant or "full", "variant", VARIANTS)


def split_range(n: int, variant: str, split: str) -> tuple[int, int]:
  """[start, end) indices of a split, as the benchmark computes them."""
  if variant == "outd":
    if split != "test":
      raise ValueError("CLEVRTEX outd (OOD) is a test set; only split "
                       "'test' exists (the whole set).")
    return 0, n
  lo, hi = SPLITS[split]
  return int(lo * n), int(hi * n)


def _files(config: Any, split: str) -> tuple[_Files, int, int, str]:
  cfg = stream.resolve(config, default_config())
  variant = _variant(cfg)
  data_dir = ic.require_data_dir(cfg, what=f"CLEVRTEX ({variant})",
                                 expected=_expected(variant), where=WHERE)
  files = _all_files(data_dir, variant)
  start, end = split_range(len(files.images), variant, split)
  if end <= start:
    raise ValueError(f"CLEVRTEX {variant} split {split!r} is empty "
                     f"({len(files.images)} examples).")
  return files, start, end, variant


def num_examples(config: Any, split: str) -> int:
  stream.split_id(split)
  _, start, end, _ = _files(config, split)
  return end - start


def read_index_png(contents: bytes) -> np.ndarray:
  """The integer pixel values of a palette / grayscale PNG (PIL)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(contents)) as im:
    a = np.asarray(im)
  if a.ndim != 2:
    raise ValueError(f"expected a single-channel (palette) mask, got shape "
                     f"{a.shape}")
  return a.astype(np.int32)


def _check_first(files: _Files, start: int) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image, mask = files.images[start], files.masks[start]
  try:
    with Image.open(image) as im:
      w, h = im.size
    with open(mask, "rb") as f:
      m = read_index_png(f.read())
  except (OSError, ValueError) as e:
    raise stream.DatasetFormatError(
        f"CLEVRTEX example {image!r} / {mask!r} cannot be read ({e}).") \
        from None
  if (h, w) != RAW_SIZE or m.shape != RAW_SIZE:
    raise stream.DatasetFormatError(
        f"CLEVRTEX {image!r} is {h}x{w} (mask {m.shape[0]}x{m.shape[1]}); "
        f"the published images are {RAW_SIZE[0]}x{RAW_SIZE[1]}.")


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
  frac = float(cfg.crop_fraction)
  if not 0.0 < frac <= 1.0:
    raise ValueError(f"data.crop_fraction={frac} is invalid; expected "
                     "(0, 1].")
  files, start, end, variant = _files(config, split)
  _check_first(files, start)
  tf = stream.tf()
  images = tf.constant(files.images[start:end])
  masks = tf.constant(files.masks[start:end])
  crop = int(frac * float(min(RAW_SIZE)))
  # The benchmark's PIL box: ((W - c) // 2, (H - c) // 2, ...).
  y, x = ic.center_crop_offsets(RAW_SIZE[0], RAW_SIZE[1], crop, crop)

  def decode_mask(contents, path):
    try:
      m = read_index_png(contents)
    except (OSError, ValueError) as e:
      raise ValueError(f"CLEVRTEX mask {path.decode()!r}: {e}") from None
    return m

  def load(index):
    image_path = tf.gather(images, index)
    mask_path = tf.gather(masks, index)
    image = ic.read_png_checked(image_path, channels=3, shape=RAW_SIZE,
                                what="CLEVRTEX image")
    mask = tf.numpy_function(decode_mask,
                             [tf.io.read_file(mask_path), mask_path],
                             tf.int32, stateful=False)
    mask = ic.assert_shape(tf.ensure_shape(mask, [None, None]), RAW_SIZE,
                           ["CLEVRTEX mask", mask_path])
    image = image[y:y + crop, x:x + crop]
    mask = mask[y:y + crop, x:x + crop]
    image = ic.resize_image(image, (size, size), (crop, crop), "bilinear")
    mask = ic.resize_nearest(mask, (size, size), (crop, crop), "pil")
    return {"image": tf.ensure_shape(ic.to_unit(image), (size, size, 3)),
            "segmentation": tf.ensure_shape(mask, (size, size))}

  context = (f"CLEVRTEX {variant} split {split!r} (indices {start}.."
             f"{end - 1}, e.g. {files.images[start]})")
  return stream.indexed_dataset(
      load, num_examples=end - start, batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat, config=config,
      context=context)


def user_preprocessing(config: Any):
  """CLEVRTEX's centre crop fraction, then bilinear."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  frac = float(config.get("crop_fraction", 0.8))
  size = int(config.image_size)
  return preprocess.Preprocess(size, frac, "bilinear", (
      f"clevrtex: centre crop of {frac:.3g} x the shorter side, then resize "
      f"to {size}x{size} (bilinear)"))
