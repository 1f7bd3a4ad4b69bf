"""Sketchy (Cabi et al. 2019) as preprocessed for GENESIS-V2 (paper 002 App. D).

Published format: every *episode file* (extracted from the
``lift_green__demos`` and ``stack_green_on_red__demos`` archives of
github.com/deepmind/deepmind-research/tree/master/sketchy) is an
uncompressed TFRecord file of ``tf.train.Example`` timesteps, the camera
images being JPEG bytes (``pixels/basket_front_left``,
``pixels/basket_front_right``: 600x960 RGB). Layout::

  DIR/records/<episode file>   (as GENESIS expects; DIR itself also works)

Preprocessing (App. D and the GENESIS ``sketchy_preparation.py`` protocol):
both front cameras of every timestep are cropped to 448x672 (144 pixels off
the left and right; top/bottom 71/81 for front-left, 91/61 for front-right);
from that crop come the centre 448x448 square and the six 352x352 squares at
the top and bottom left, centre and right; each is resized to 128x128 with
PIL's antialiased bilinear filter (rounded to uint8, as the saved PNGs
were). One timestep gives 14 examples (view-major: centre, top-left,
top-centre, top-right, bottom-left, bottom-centre, bottom-right). No masks.

Split by episode (no episode in two splits): the episode files are sorted by
name; validation = the first 10%, test = the next 10%, train = the rest, as
the GENESIS code splits them (``split_seed = -1``). A ``split_seed >= 0``
shuffles the sorted episodes with ``random.Random(split_seed)`` first.

Episodes are indexed by record offset once (headers only), so any example
is one record read away: training visits all examples in a fresh permutation
per epoch and resumes in O(1). Every example decodes its full JPEG (a cropped
decode differs from TF's full decode in chroma upsampling at the crop edge).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import image_common as ic
from data_pipelines import stream

WHERE = ("https://github.com/deepmind/deepmind-research/tree/master/sketchy "
         "(download.sh: the `lift_green__demos` and "
         "`stack_green_on_red__demos` shards; extract.sh unpacks the episode "
         "files)")
EXPECTED = """\
  DIR/records/<episode file>   one uncompressed TFRecord file per episode:
                               timesteps with JPEG features
                               pixels/basket_front_left and
                               pixels/basket_front_right (600x960);
                               DIR/<episode file> also works"""
RAW_SIZE = (600, 960)
CAMERAS = ("pixels/basket_front_left", "pixels/basket_front_right")
# Rows cut from the top of each camera (paper 002 App. D); 144 px off the
# left and right of both, giving 448 x 672.
_TOP = (71, 91)
_LEFT = 144
_SHORT, _LONG = 448, 672
_CROP = _SHORT - 64 - 32  # 352.
EXAMPLES_PER_VIEW = 7
EXAMPLES_PER_TIMESTEP = 2 * EXAMPLES_PER_VIEW
_SKIP_SUFFIXES = (".tar", ".bz2", ".gz", ".zip", ".sqlite", ".txt", ".json",
                  ".md", ".py", ".sh", ".png", ".jpg", ".pt")


def crop_windows() -> np.ndarray:
  """``[2, 7, 3]`` (top, left, size) of each view's crops in the raw frame."""
  out = np.zeros((2, EXAMPLES_PER_VIEW, 3), np.int64)
  mid = _LONG // 2 - _CROP // 2
  for view, top in enumerate(_TOP):
    out[view, 0] = (top, _LEFT + _LONG // 2 - _SHORT // 2, _SHORT)
    c = 1
    for y in (0, _SHORT - _CROP):
      for x in (0, mid, _LONG - _CROP):
        out[view, c] = (top + y, _LEFT + x, _CROP)
        c += 1
  return out


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section (paper 002 App. D)."""
  c = ml_collections.ConfigDict()
  c.name = "sketchy"
  c.data_dir = ""  # The folder holding records/ (or the episode files).
  c.variant = ""  # Unused.
  c.image_size = 128  # Output height = width.
  # -1: sorted episodes, first 10% validation, next 10% test (GENESIS);
  # >= 0: shuffle the episodes with this seed first.
  c.split_seed = -1
  c.eval_fraction = 0.1  # Of the episodes, for validation and for test.
  c.metrics_include_background = True  # No masks: metrics do not apply.
  c.num_parallel_calls = 2
  c.prefetch = 2
  return c


@dataclasses.dataclass(frozen=True)
class _Index:
  files: list[str]  # Episode files of the split.
  sizes: np.ndarray  # [E] file sizes.
  frame_file: np.ndarray  # [F] episode of each timestep.
  frame_offset: np.ndarray  # [F]
  frame_length: np.ndarray  # [F]


def _episode_files(data_dir: str) -> list[str]:
  records = os.path.join(data_dir, "records")
  root = records if os.path.isdir(records) else data_dir
  names = [n for n in ic.list_files(root)
           if not n.startswith(".") and not n.lower().endswith(_SKIP_SUFFIXES)]
  if not names:
    raise stream.DatasetNotFoundError(
        f"Sketchy: no episode files in {root!r}.\nExpected layout:\n"
        f"{EXPECTED}\nGet the data from: {WHERE}")
  return [os.path.join(root, n) for n in names]


_INDEX: dict[tuple[Any, ...], _Index] = {}


def _index(config: Any, split: str) -> _Index:
  cfg = stream.resolve(config, default_config())
  data_dir = ic.require_data_dir(cfg, what="Sketchy", expected=EXPECTED,
                                 where=WHERE)
  seed = cfg.split_seed
  seed = None if seed == -1 else stream.check_int(seed, "split_seed", 0)
  frac = float(cfg.eval_fraction)
  if not 0.0 <= frac < 0.5:
    raise ValueError(f"data.eval_fraction={frac} is invalid; expected "
                     "[0, 0.5).")
  files = _episode_files(data_dir)
  key = (tuple(files), seed, frac, split)
  if key in _INDEX:
    return _INDEX[key]
  groups = stream.split_groups(files, seed=seed, eval_fraction=frac)[split]
  if not groups:
    raise ValueError(
        f"Sketchy split {split!r} has no episodes ({len(files)} episode "
        f"files, data.eval_fraction={frac}).")
  frame_file, offsets, lengths, sizes = [], [], [], []
  for e, path in enumerate(groups):
    off, length = stream.scan_tfrecord(path)
    if not len(off):
      raise stream.DatasetFormatError(f"Sketchy episode {path!r} is empty.")
    frame_file.append(np.full(len(off), e, np.int64))
    offsets.append(off)
    lengths.append(length)
    sizes.append(os.path.getsize(path))
  _INDEX[key] = _Index(groups, np.asarray(sizes, np.int64),
                       np.concatenate(frame_file), np.concatenate(offsets),
                       np.concatenate(lengths))
  return _INDEX[key]


def split_episodes(config: Any, split: str) -> list[str]:
  """The episode files of a split."""
  stream.split_id(split)
  return list(_index(config, split).files)


def num_examples(config: Any, split: str) -> int:
  stream.split_id(split)
  return len(_index(config, split).frame_offset) * EXAMPLES_PER_TIMESTEP


def _parse_cameras(record):
  tf = stream.tf()
  spec = {k: tf.io.FixedLenFeature([1], tf.string) for k in CAMERAS}
  ex = tf.io.parse_single_example(record, spec)
  return tf.stack([ex[CAMERAS[0]][0], ex[CAMERAS[1]][0]])


def _check_first(idx: _Index) -> None:
  """Eager check of the first timestep: both cameras, JPEG, 600x960."""
  tf = stream.tf()
  path = idx.files[0]
  try:
    record = stream.read_record(path, idx.frame_offset[0],
                                idx.frame_length[0], idx.sizes[0])
    jpegs = _parse_cameras(record)
    shapes = [tf.io.extract_jpeg_shape(j).numpy().tolist()[:2]
              for j in jpegs]
  except (tf.errors.OpError, ValueError) as e:
    raise stream.DatasetFormatError(
        f"Sketchy episode {path!r}: timestep 0 is not a Sketchy example with "
        f"JPEG features {CAMERAS} "
        f"({stream.tf_message(e)}).\n"
        f"Expected layout:\n{EXPECTED}\nGet the data from: {WHERE}") from None
  for cam, shape in zip(CAMERAS, shapes):
    if tuple(shape) != RAW_SIZE:
      raise stream.DatasetFormatError(
          f"Sketchy episode {path!r}: {cam} is {shape[0]}x{shape[1]}; the "
          f"published frames are {RAW_SIZE[0]}x{RAW_SIZE[1]}.")


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int = 0,
                process_count: int = 1, repeat: bool = False):
  """This process's batches: ``image`` [b, S, S, 3] (no segmentation).

  Without ``repeat`` also ``valid`` [b] (padding rows are zeros).
  """
  stream.check_stream_args(split, batch_size, start_step, process_index,
                           process_count)
  cfg = stream.resolve(config, default_config())
  size = stream.check_int(cfg.image_size, "image_size", 1)
  idx = _index(config, split)
  _check_first(idx)
  tf = stream.tf()
  files = tf.constant(idx.files)
  sizes = tf.constant(idx.sizes)
  frame_file = tf.constant(idx.frame_file)
  frame_offset = tf.constant(idx.frame_offset)
  frame_length = tf.constant(idx.frame_length)
  windows = tf.constant(crop_windows())  # [2, 7, 3]
  first_frame = tf.constant(  # [E] first timestep of each episode.
      np.searchsorted(idx.frame_file, np.arange(len(idx.files))))

  def load(index):
    frame = index // EXAMPLES_PER_TIMESTEP
    view = (index % EXAMPLES_PER_TIMESTEP) // EXAMPLES_PER_VIEW
    crop = index % EXAMPLES_PER_VIEW
    episode = tf.gather(frame_file, frame)
    path = tf.gather(files, episode)
    record = stream.read_record(path, tf.gather(frame_offset, frame),
                                tf.gather(frame_length, frame),
                                tf.gather(sizes, episode))
    jpeg = tf.gather(_parse_cameras(record), view)
    image = tf.io.decode_jpeg(jpeg, channels=3)
    image = ic.assert_shape(image, RAW_SIZE,
                            ["Sketchy episode", path, "timestep",
                             frame - tf.gather(first_frame, episode)])
    top, left, side = tf.unstack(windows[view, crop])
    image = tf.slice(image, tf.stack([top, left, 0]),
                     tf.stack([side, side, 3]))
    image = ic.resize_bilinear_uint8(image, (size, size))
    return {"image": tf.ensure_shape(ic.to_unit(image), (size, size, 3))}

  context = (f"Sketchy split {split!r} ({len(idx.files)} episodes, e.g. "
             f"{idx.files[0]})")
  return stream.indexed_dataset(
      load, num_examples=len(idx.frame_offset) * EXAMPLES_PER_TIMESTEP,
      batch_size=batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count,
      repeat=repeat, config=config, context=context)


def user_preprocessing(config: Any):
  """A square centre crop (training used fixed crops of the front views)."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  size = int(config.image_size)
  return preprocess.square(config, (
      f"{preprocess.square_text(size)} (bilinear); training used fixed crops "
      "of the front cameras' frames"))
