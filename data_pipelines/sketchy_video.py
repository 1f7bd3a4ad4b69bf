"""Sketchy episodes as short videos (APEX's qualitative data; no masks).

DeepMind's Sketchy (Cabi et al. 2019) ships one uncompressed TFRecord file
per episode, one ``tf.train.Example`` per time step, with JPEG camera frames
under ``pixels/basket_front_left``, ``pixels/basket_front_right``, ... (600 x
960) besides the robot's state (``deepmind-research/sketchy/sketchy.py``).
APEX (Sec. IV) pre-processes them "as in [GENESIS-V2], using a 128 x 128
resolution and sequences of length 10". GENESIS-V2's preparation
(``scripts/sketchy_preparation.py``) crops the front-left view to rows
71:-81 and the front-right view to rows 91:-61, both to columns 144:-144
(448 x 672), keeps the central 448 x 448 square and resizes it (bilinear);
it splits by episode file: the first 10% of the sorted files are
validation, the next 10% test, the rest training.

Here every ``num_frames`` consecutive frames (``frame_stride`` apart,
starting every ``clip_stride`` frames) of each view in ``views`` form one
example. Frames are read by byte offset (records are indexed once per file),
so resuming needs no skipping. Batches have no ``segmentation``.
"""

from __future__ import annotations

import functools
import io
import os
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import stream
from data_pipelines import video_common as vc

NAME = "sketchy_video"
# view -> (feature key, rows crop, columns crop) of GENESIS-V2's preparation.
VIEWS = {
    "front_left": ("pixels/basket_front_left", (71, -81), (144, -144)),
    "front_right": ("pixels/basket_front_right", (91, -61), (144, -144)),
}
RAW_SHAPE = (600, 960, 3)


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = NAME
  c.data_dir = ""  # Episode TFRecords (or a records/ folder of them).
  c.image_size = 128  # APEX: 128 x 128.
  c.num_frames = 10  # APEX: sequences of length 10.
  c.frame_stride = 1  # Time steps between the frames of a sequence.
  c.clip_stride = 10  # Time steps between sequence starts.
  c.views = ("front_left", "front_right")  # Cameras used (GENESIS-V2).
  c.eval_fraction = 0.1  # Fraction of episode files for validation / test.
  c.num_parallel_calls = 2  # tf.data: batches produced in parallel.
  c.prefetch = 2  # tf.data: batches prefetched.
  return c


def _episode_files(data_dir: str) -> tuple[str, ...]:
  if not data_dir:
    raise ValueError("data.data_dir is empty; sketchy_video reads Sketchy's "
                     "episode TFRecord files from it.")
  root = os.path.abspath(data_dir)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data.data_dir={data_dir!r} is not a "
                            "directory.")
  records = os.path.join(root, "records")
  if os.path.isdir(records):  # GENESIS-V2: data/sketchy/records/*.
    files = [os.path.join(records, f) for f in os.listdir(records)]
  else:
    files = [os.path.join(root, f) for f in os.listdir(root)
             if "tfrecord" in f]
  files = sorted(f for f in files if os.path.isfile(f)
                 and not os.path.basename(f).startswith("."))
  if not files:
    raise FileNotFoundError(
        f"No episode files in {root} (expected records/* or *tfrecord*).")
  return tuple(files)


def split_files(files, split: str, eval_fraction: float) -> tuple[str, ...]:
  """GENESIS-V2's split by sorted episode file (`stream.split_groups`)."""
  stream.split_id(split)
  return tuple(stream.split_groups(files, seed=None,
                                   eval_fraction=eval_fraction)[split])


@functools.lru_cache(maxsize=4096)
def _record_file(path: str) -> stream.RecordFile:
  return stream.RecordFile(path)


@functools.lru_cache(maxsize=16)
def _index_cached(data_dir: str, split: str, eval_fraction: float,
                  views: tuple[str, ...], span: int, clip_stride: int):
  files = split_files(_episode_files(data_dir), split, eval_fraction)
  rows = []
  for f, path in enumerate(files):
    n = len(_record_file(path))
    for start in range(0, n - span + 1, clip_stride):
      for v in range(len(views)):
        rows.append((f, v, start))
  return files, np.asarray(rows, np.int64).reshape(-1, 3)


def _index(config: Any, split: str):
  views = tuple(stream.field(config, "views"))
  bad = [v for v in views if v not in VIEWS]
  if not views or bad:
    raise ValueError(f"data.views has unknown views {bad}; expected a "
                     f"non-empty subset of {tuple(VIEWS)}.")
  fraction = float(stream.field(config, "eval_fraction"))
  if not 0 <= fraction < 0.5:
    raise ValueError(f"data.eval_fraction={fraction} is invalid; expected "
                     "a number in [0, 0.5).")
  span = (stream.int_field(config, "num_frames") - 1) * stream.int_field(
      config, "frame_stride") + 1
  files, rows = _index_cached(
      stream.field(config, "data_dir"), split, fraction, views, span,
      stream.int_field(config, "clip_stride"))
  return files, views, rows


def num_examples(config: Any, split: str) -> int:
  return len(_index(config, split)[2])


def preprocess_frame(jpeg: bytes, view: str, size: int,
                     where: str) -> np.ndarray:
  """GENESIS-V2's crop of one camera frame, resized: uint8 [S, S, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{where}: cannot decode the JPEG ({e}).") from e
  if img.shape != RAW_SHAPE:
    raise ValueError(f"{where}: frame of shape {img.shape}; Sketchy's basket "
                     f"cameras give {RAW_SHAPE}.")
  _, (r0, r1), (c0, c1) = VIEWS[view]
  img = img[r0:r1, c0:c1]  # [448, 672, 3]
  side, long_side = img.shape[:2]
  left = long_side // 2 - side // 2
  square = Image.fromarray(img[:, left:left + side])
  return np.asarray(square.resize((size, size), Image.BILINEAR))


def read_clip(path: str, view: str, frames, size: int) -> np.ndarray:
  """uint8 [T, S, S, 3] of the given time steps of one episode file."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  records = _record_file(path)
  key = VIEWS[view][0]
  out = np.zeros((len(frames), size, size, 3), np.uint8)
  for i, f in enumerate(frames):
    where = f"{path} record {f}"
    try:
      ex = tf.train.Example.FromString(records.read(int(f)))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{where}: not a tf.train.Example ({e}).") from e
    feats = ex.features.feature
    if key not in feats or not feats[key].bytes_list.value:
      raise ValueError(f"{where}: feature {key!r} is missing; expected a "
                       "Sketchy time step.")
    out[i] = preprocess_frame(feats[key].bytes_list.value[0], view, size,
                              where)
  return out


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int | None = None,
                process_count: int | None = None,
                repeat: bool | None = None):
  """This process's batches (see ``data_pipelines/__init__.py``).

  Elements: ``video`` float32 [b, T, S, S, 3] in [0, 1] and, when not
  repeating, ``valid`` bool [b]. No ground truth.
  """
  files, views, rows = _index(config, split)
  if not len(rows):
    raise ValueError(f"No {split!r} sequences in {config.data_dir} (files: "
                     f"{len(files)}).")
  t = stream.int_field(config, "num_frames")
  stride = stream.int_field(config, "frame_stride")
  size = stream.int_field(config, "image_size", 8)

  def load_rows(indices, valid):
    video = np.zeros((len(indices), t, size, size, 3), np.float32)
    for row, (i, ok) in enumerate(zip(indices, valid)):
      if ok:
        f, v, start = rows[i]
        frames = start + stride * np.arange(t)
        video[row] = read_clip(files[f], views[v], frames, size) / 255.0
    return {"video": video}

  return stream.make_dataset(
      load_rows, vc.episode_features(t, size, size, False), n=len(rows),
      split=split, batch_size=batch_size, seed=seed, start_step=start_step,
      process_index=process_index, process_count=process_count,
      repeat=repeat, options=stream.stream_options(config))
