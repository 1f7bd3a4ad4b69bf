"""Procedural Tetrominoes-like scenes: an easy benchmark, no download.

A procedural analogue of DeepMind's Tetrominoes (multi_object_datasets:
35x35 images of three tetrominoes on black): ``num_objects`` tetrominoes,
each one of the 19 fixed orientations of the seven pieces (I, O, T, S, Z,
J, L), built of ``block_size`` x ``block_size`` pixel squares in one of
``num_colours`` flat colours (red, green, blue, yellow, magenta, cyan; with
``distinct_colours`` no two pieces of a scene share one), placed
at any pixel position on a black background, never overlapping and at least
``gap`` pixels apart (so pieces of one colour never merge). The segmentation is
exact: int32 ``[H, W]``, 0 = background, pieces 1..n.

Determinism and streaming are those of `data_pipelines.sprites` (the shared
index stream of `data_pipelines.stream`): an example is a pure function of
``(content_seed, split, index)``; the train stream visits a fresh permutation
per epoch; ``start_step`` costs O(1); evaluation streams visit the split in
order with ``valid`` padding.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict
import numpy as np

from data_pipelines import stream

NAME = "tetrominoes_like"
_DATASET_TAG = 5  # First word of the content seeds (datasets never collide).
_SHUFFLE_STREAM = 1
_MAX_TRIES = 200

# The seven tetrominoes in all their distinct rotations: 19 shapes, each as
# (row, column) cells.
_PIECES = {
    "I": [((0, 0), (0, 1), (0, 2), (0, 3)), ((0, 0), (1, 0), (2, 0), (3, 0))],
    "O": [((0, 0), (0, 1), (1, 0), (1, 1))],
    "T": [((0, 0), (0, 1), (0, 2), (1, 1)), ((0, 1), (1, 0), (1, 1), (2, 1)),
          ((1, 0), (1, 1), (1, 2), (0, 1)), ((0, 0), (1, 0), (2, 0), (1, 1))],
    "S": [((0, 1), (0, 2), (1, 0), (1, 1)), ((0, 0), (1, 0), (1, 1), (2, 1))],
    "Z": [((0, 0), (0, 1), (1, 1), (1, 2)), ((0, 1), (1, 0), (1, 1), (2, 0))],
    "J": [((0, 0), (1, 0), (1, 1), (1, 2)), ((0, 0), (0, 1), (1, 0), (2, 0)),
          ((0, 0), (0, 1), (0, 2), (1, 2)), ((0, 1), (1, 1), (2, 1), (2, 0))],
    "L": [((0, 2), (1, 0), (1, 1), (1, 2)), ((0, 0), (1, 0), (2, 0), (2, 1)),
          ((0, 0), (0, 1), (0, 2), (1, 0)), ((0, 0), (0, 1), (1, 1), (2, 1))],
}
SHAPES = tuple(cells for rotations in _PIECES.values() for cells in rotations)
COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1],
                    [0, 1, 1]], np.float32)


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = NAME
  c.data_dir = ""  # Unused: the data are procedural.
  c.image_size = 32  # Height = width (DeepMind's Tetrominoes: 35).
  c.num_objects = 3  # Tetrominoes per scene.
  c.block_size = 4  # Pixels per tetromino cell (a piece spans <= 4 cells).
  c.gap = 1  # Minimum pixels between two pieces.
  c.num_colours = 6  # The first n of red, green, blue, yellow, magenta, cyan.
  # Every piece of a scene in a different colour (DeepMind's may repeat one;
  # pieces never touch, so a repeat is never ambiguous, only harder).
  c.distinct_colours = False
  # Also give each scene's background (black) as batch["background"]: what a
  # model whose background is learned beforehand (AST-Seg's curriculum) reads.
  c.with_background = False
  c.num_train = 60_000
  c.num_validation = 1_000
  c.num_test = 1_000
  # Seed of the scenes' content (get_dataset's seed only shuffles); None:
  # content follows get_dataset's seed.
  c.content_seed = config_dict.FieldReference(0, field_type=int)
  c.num_parallel_calls = 2
  c.prefetch = 2
  return c


def _spec(config: Any) -> dict[str, Any]:
  size = stream.int_field(config, "image_size", 8)
  block = stream.int_field(config, "block_size", 1, default=4)
  if 4 * block > size:
    raise ValueError(f"data.block_size={block} is too large for "
                     f"data.image_size={size}: a piece spans 4 blocks.")
  colours = stream.int_field(config, "num_colours", 1, default=6)
  if colours > len(COLOURS):
    raise ValueError(f"data.num_colours={colours} is invalid; expected at "
                     f"most {len(COLOURS)}.")
  distinct = bool(stream.field(config, "distinct_colours", False))
  num_objects = stream.int_field(config, "num_objects", 1, default=3)
  if distinct and num_objects > colours:
    raise ValueError(f"data.distinct_colours needs data.num_colours >= "
                     f"data.num_objects; got {colours} < {num_objects}.")
  return dict(size=size, block=block, colours=colours, distinct=distinct,
              num_objects=num_objects,
              gap=stream.int_field(config, "gap", 0, default=1),
              content_seed=stream.field(config, "content_seed", 0))


def num_examples(config: Any, split: str) -> int:
  return stream.num_split_examples(config, split)


def _piece_mask(cells, block: int) -> np.ndarray:
  rows = max(r for r, _ in cells) + 1
  cols = max(c for _, c in cells) + 1
  mask = np.zeros((rows * block, cols * block), bool)
  for r, c in cells:
    mask[r * block:(r + 1) * block, c * block:(c + 1) * block] = True
  return mask


def render_example(spec: dict[str, Any], seed: int, split_id: int,
                   index: int, image: np.ndarray, seg: np.ndarray) -> None:
  """Draws example ``index`` into ``image [S, S, 3]`` and ``seg [S, S]``."""
  content = seed if spec["content_seed"] is None else spec["content_seed"]
  rng = np.random.default_rng([_DATASET_TAG, stream.seed_word(content),
                               split_id, int(index)])
  s, gap = spec["size"], spec["gap"]
  colour_ids = (rng.permutation(spec["colours"])[:spec["num_objects"]]
                if spec["distinct"] else None)
  # Pixels a new piece may not touch: earlier pieces grown by the gap.
  blocked = np.zeros((s, s), bool)
  for label in range(1, spec["num_objects"] + 1):
    for _ in range(_MAX_TRIES):
      mask = _piece_mask(SHAPES[rng.integers(len(SHAPES))], spec["block"])
      h, w = mask.shape
      top = int(rng.integers(0, s - h + 1))
      left = int(rng.integers(0, s - w + 1))
      if not np.any(blocked[top:top + h, left:left + w] & mask):
        break
    else:  # The scene is full: fewer pieces (never in the default setting).
      break
    colour = COLOURS[colour_ids[label - 1] if spec["distinct"]
                     else rng.integers(spec["colours"])]
    window = (slice(top, top + h), slice(left, left + w))
    image[window][mask] = colour
    seg[window][mask] = label
    grown = np.zeros((s + 2 * gap, s + 2 * gap), bool)
    for dy in range(2 * gap + 1):
      for dx in range(2 * gap + 1):
        grown[top + dy:top + dy + h, left + dx:left + dx + w] |= mask
    blocked |= grown[gap:gap + s, gap:gap + s]


def render_batch(config: Any, split: str, indices: Any,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Scenes for ``indices`` [b]: images [b, S, S, 3], segs [b, S, S]."""
  spec = _spec(config)
  indices = np.asarray(indices, np.int64)
  s = spec["size"]
  images = np.zeros((len(indices), s, s, 3), np.float32)
  segs = np.zeros((len(indices), s, s), np.int32)
  for row, index in enumerate(indices):
    render_example(spec, seed, stream.split_id(split), int(index),
                   images[row], segs[row])
  return images, segs


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int | None = None,
                process_count: int | None = None,
                repeat: bool | None = None):
  """This process's batches as a `tf.data.Dataset` (the dataset contract)."""
  spec = _spec(config)
  split_id = stream.split_id(split)
  s = spec["size"]

  def load_rows(indices, valid):
    images = np.zeros((len(indices), s, s, 3), np.float32)
    segs = np.zeros((len(indices), s, s), np.int32)
    for row, (index, ok) in enumerate(zip(indices, valid)):
      if ok:
        render_example(spec, seed, split_id, int(index), images[row],
                       segs[row])
    out = {"image": images, "segmentation": segs}
    if with_background:
      out["background"] = np.zeros_like(images)
    return out

  features = {"image": stream.Feature((s, s, 3), np.float32),
              "segmentation": stream.Feature((s, s), np.int32)}
  with_background = bool(stream.field(config, "with_background", False))
  if with_background:
    features["background"] = stream.Feature((s, s, 3), np.float32)
  return stream.make_dataset(
      load_rows, features,
      n=num_examples(config, split), split=split, batch_size=batch_size,
      seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat,
      shuffle_stream=_SHUFFLE_STREAM, options=stream.stream_options(config))


def user_preprocessing(config: Any):
  """Own images for a model trained on these scenes (square)."""
  from data_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  return preprocess.square(config)
