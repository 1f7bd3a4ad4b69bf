"""Bouncing Balls as published by R-NEM (HDF5), read from ``data.data_dir``.

The files ``balls4mass64.h5`` and ``balls678mass64.h5`` of van Steenkiste et
al. (2018) hold groups ``training``, ``validation`` and ``test``, each with
time-major datasets (R-NEM ``datasets.py``)::

  features  [T, N, 64, 64, 1]  binary frames (float/bool/uint8), T = 51
  groups    [T, N, 64, 64, 1]  object id per pixel, 0 = background

(and ``collisions``, ``positions``, ... which are not read). Paper 004 trains
on the first 40 frames of ``balls4mass64`` and tests on its test group and on
the test group of ``balls678mass64`` (Sec. 4.1): set ``test_file`` for the
latter. Its colour variant is made "using the segmentation masks"
(App. B): ``variant="colour"`` paints ball ``g`` of a video with a colour
drawn as in `bouncing_balls.ball_colours` from the first ``num_colours``
palette entries, seeded by ``(content_seed, split, index)``.

Splits map ``train -> training``, ``validation -> validation``,
``test -> test``; ``segmentation`` is ``groups`` (track ids stable over
time).
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import bouncing_balls
from data_pipelines import stream
from data_pipelines import video_common as vc

NAME = "bouncing_balls_rnem"
_DATASET_TAG = 2
H5_GROUPS = {"train": "training", "validation": "validation", "test": "test"}

PRESETS = {
    "balls4mass64": dict(file="balls4mass64.h5", test_file=""),
    "balls678mass64": dict(file="balls4mass64.h5",
                           test_file="balls678mass64.h5"),
}


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = NAME
  c.data_dir = ""  # Directory holding the R-NEM .h5 files (required).
  c.file = "balls4mass64.h5"  # Train/validation (and test) file.
  c.test_file = ""  # Test split's file when not `file` (balls678mass64.h5).
  c.num_frames = 40  # First frames of each video (paper 004 trains on 40).
  c.variant = "binary"  # "binary" or "colour" (painted from `groups`).
  c.num_colours = 4  # Colour variant: first colours of the palette (4/8).
  c.content_seed = 0  # Seeds the colour assignment of the colour variant.
  c.num_parallel_calls = 2  # tf.data: batches produced in parallel.
  c.prefetch = 2  # tf.data: batches prefetched.
  return c


def preset_config(preset: str) -> ml_collections.ConfigDict:
  return stream.preset(NAME, PRESETS, default_config, preset)


class _H5Split:
  """One split of an R-NEM file: lazily opened, validated, thread-safe."""

  def __init__(self, path: str, group: str):
    import h5py  # pylint: disable=g-import-not-at-top
    self.path, self.group = path, group
    try:
      self.file = h5py.File(path, "r")
    except OSError as e:
      raise ValueError(f"{path}: cannot open as HDF5 ({e}).") from e
    if group not in self.file:
      raise ValueError(f"{path}: group {group!r} is missing; expected the "
                       f"R-NEM groups {sorted(H5_GROUPS.values())}, found "
                       f"{sorted(self.file)}.")
    g = self.file[group]
    for key in ("features", "groups"):
      if key not in g:
        raise ValueError(f"{path}: dataset {group}/{key} is missing; "
                         f"found {sorted(g)}.")
    self.features, self.groups = g["features"], g["groups"]
    shape = self.features.shape
    if (len(shape) not in (4, 5) or (len(shape) == 5 and shape[-1] != 1)):
      raise ValueError(
          f"{path}: {group}/features has shape {shape}; expected time-major "
          "[T, N, H, W, 1].")
    if self.groups.shape != shape:
      raise ValueError(f"{path}: {group}/groups has shape "
                       f"{self.groups.shape}, {group}/features {shape}; "
                       "expected equal shapes.")
    self.num_frames, self.num_videos = shape[0], shape[1]
    self.height, self.width = shape[2], shape[3]
    self._lock = threading.Lock()

  def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames float32 [T, H, W] in [0, 1], ids int32 [T, H, W])."""
    with self._lock:  # h5py objects are shared by tf.data threads.
      feats = np.asarray(self.features[:, index])
      groups = np.asarray(self.groups[:, index])
    feats = feats.reshape(feats.shape[:3])
    groups = groups.reshape(groups.shape[:3])
    if feats.dtype == bool:
      feats = feats.astype(np.float32)
    elif np.issubdtype(feats.dtype, np.integer):
      feats = feats.astype(np.float32) / (255.0 if feats.max() > 1 else 1.0)
    feats = np.clip(feats.astype(np.float32), 0.0, 1.0)
    ids = np.rint(groups).astype(np.int32)
    if ids.min() < 0 or np.any(np.abs(groups - ids) > 1e-3):
      raise ValueError(
          f"{self.path}: {self.group}/groups of video {index} is not a map "
          "of non-negative integer ids (0 = background).")
    return feats, ids


@functools.lru_cache(maxsize=8)
def _open(path: str, group: str) -> _H5Split:
  return _H5Split(path, group)


def _split_file(config: Any, split: str) -> tuple[str, str]:
  stream.split_id(split)
  data_dir = stream.field(config, "data_dir")
  if not data_dir:
    raise ValueError(
        f"data.data_dir is empty; {NAME} reads R-NEM's HDF5 files from it "
        "(balls4mass64.h5, balls678mass64.h5). For generated balls use "
        "data.name='bouncing_balls'.")
  name = stream.field(config, "file")
  if split == "test" and stream.field(config, "test_file"):
    name = config.test_file
  path = os.path.join(os.path.abspath(data_dir), name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing (data.data_dir + data."
                            f"{'test_file' if name != config.file else 'file'}"
                            "); expected an R-NEM HDF5 file.")
  return path, H5_GROUPS[split]


def num_examples(config: Any, split: str) -> int:
  return _open(*_split_file(config, split)).num_videos


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int | None = None,
                process_count: int | None = None,
                repeat: bool | None = None):
  """This process's batches (see ``data_pipelines/__init__.py``).

  Elements: ``video`` float32 [b, T, H, W, 3] in [0, 1], ``segmentation``
  int32 [b, T, H, W] and, when not repeating, ``valid`` bool [b].
  """
  h5 = _open(*_split_file(config, split))
  t = stream.int_field(config, "num_frames")
  if t > h5.num_frames:
    raise ValueError(f"data.num_frames={t} exceeds the {h5.num_frames} "
                     f"frames of {h5.path}.")
  variant = stream.check_choice(stream.field(config, "variant"), "variant",
                                bouncing_balls.VARIANTS)
  num_colours = stream.int_field(config, "num_colours")
  if num_colours > len(bouncing_balls.PALETTE):
    raise ValueError(f"data.num_colours={num_colours} is invalid; expected "
                     f"<= {len(bouncing_balls.PALETTE)}.")
  content_seed = stream.seed_word(stream.field(config, "content_seed"))
  sid = stream.split_id(split)
  h, w = h5.height, h5.width

  def load_rows(indices, valid):
    video = np.zeros((len(indices), t, h, w, 3), np.float32)
    seg = np.zeros((len(indices), t, h, w), np.int32)
    for row, (index, ok) in enumerate(zip(indices, valid)):
      if not ok:
        continue
      feats, all_ids = h5.read(int(index))
      ids = all_ids[:t]  # [t, H, W]
      seg[row] = ids
      if variant == "binary":
        video[row] = feats[:t, ..., None]
      else:
        rng = np.random.default_rng(
            [vc.CONTENT_STREAM, _DATASET_TAG, content_seed, sid, int(index)])
        n = int(all_ids.max())  # Colours do not depend on num_frames.
        colours = bouncing_balls.ball_colours(rng, n, num_colours)
        video[row] = bouncing_balls.colourise(ids, colours) / 255.0
    return {"video": video, "segmentation": seg}

  return stream.make_dataset(
      load_rows, vc.episode_features(t, h, w), n=h5.num_videos, split=split,
      batch_size=batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count,
      repeat=repeat, options=stream.stream_options(config))
