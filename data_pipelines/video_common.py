"""Shared machinery of the video datasets: episodes on disk and on the fly.

Every video dataset in this package keeps the contract of
``data_pipelines/__init__.py`` and builds its stream with
`data_pipelines.stream.make_dataset` (NumPy loaders). This module holds what
only the video datasets share:

* sharded TFRecords of videos as written by ``data_pipelines.generate``:
  one ``tf.train.Example`` per episode with the frames stacked vertically and
  PNG-encoded (``video_png``: ``[T*H, W, 3]``; ``segmentation_png``:
  ``[T*H, W]`` uint8 track ids), plus ``dataset_info.json``. Records are read
  by byte offset (`stream.RecordFile`; no compression), so any episode is one
  ``pread`` away and resuming needs no skipping.
* `episodes_source` / `episodes_dataset`: a procedural dataset's episodes,
  generated on the fly or read from such a directory, as batches of the
  first ``num_frames`` frames.

TensorFlow is imported inside the functions that need it: the generators run
in worker processes that never touch TensorFlow.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from data_pipelines import stream

# First word of the content seed sequences of the procedural videos; the
# shuffling's is stream.SHUFFLE_STREAM (11), so they never collide.
CONTENT_STREAM = 10
INFO_FILE = "dataset_info.json"
FORMAT_VERSION = 1


# --------------------------------------------------------------- PNG frames


def encode_frames_png(frames: np.ndarray) -> bytes:
  """PNG of frames ``[T, H, W(, C)]`` uint8 stacked vertically."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise ValueError(f"Frames must be uint8, got {frames.dtype}.")
  t, h = frames.shape[:2]
  buf = io.BytesIO()
  Image.fromarray(frames.reshape((t * h,) + frames.shape[2:])).save(
      buf, format="PNG", compress_level=6)
  return buf.getvalue()


def decode_frames_png(data: bytes, num_frames: int, where: str) -> np.ndarray:
  """Inverse of `encode_frames_png`: ``[T, H, W(, C)]`` uint8."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    a = np.asarray(Image.open(io.BytesIO(data)))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{where}: cannot decode PNG ({e}).") from e
  if a.shape[0] % num_frames:
    raise ValueError(f"{where}: PNG height {a.shape[0]} is not a multiple of "
                     f"the {num_frames} frames recorded.")
  return a.reshape((num_frames, a.shape[0] // num_frames) + a.shape[1:])


# ----------------------------------------------------------- episode records


def _bytes(value: bytes):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.train.Feature(int64_list=tf.train.Int64List(
      value=[int(v) for v in np.ravel(values)]))


def serialize_episode(episode: Mapping[str, Any]) -> bytes:
  """A ``tf.train.Example`` of an encoded episode (see `encode_episode`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  feats = {
      "video_png": _bytes(episode["video_png"]),
      "shape": _ints(episode["shape"]),  # [T, H, W, 3]
      "index": _ints([episode["index"]]),
      "num_objects": _ints([episode["num_objects"]]),
  }
  if episode.get("segmentation_png") is not None:
    feats["segmentation_png"] = _bytes(episode["segmentation_png"])
  return tf.train.Example(features=tf.train.Features(
      feature=feats)).SerializeToString()


def encode_episode(video: np.ndarray, segmentation: np.ndarray | None, *,
                   index: int, num_objects: int) -> dict[str, Any]:
  """PNG-encodes an episode (no TensorFlow; runs in generator workers).

  Args:
    video: uint8 ``[T, H, W, 3]``.
    segmentation: track ids ``[T, H, W]`` in [0, 255], or None.
    index: the episode's index in its split.
    num_objects: number of tracks (objects, arm) the episode may show.
  """
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"video must be uint8 [T, H, W, 3]; got {video.dtype} "
                     f"{video.shape}.")
  out = {"video_png": encode_frames_png(video), "shape": video.shape,
         "index": int(index), "num_objects": int(num_objects),
         "segmentation_png": None}
  if segmentation is not None:
    seg = np.asarray(segmentation)
    if seg.shape != video.shape[:3] or seg.min() < 0 or seg.max() > 255:
      raise ValueError(f"segmentation must be [T, H, W] ids in [0, 255]; got "
                       f"{seg.shape} in [{seg.min()}, {seg.max()}].")
    out["segmentation_png"] = encode_frames_png(seg.astype(np.uint8))
  return out


def parse_episode(record: bytes, where: str) -> dict[str, Any]:
  """Decodes a record written by `serialize_episode`.

  Returns:
    dict with ``video`` uint8 [T, H, W, 3], ``segmentation`` uint8 [T, H, W]
    (or None), ``index`` and ``num_objects``.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    ex = tf.train.Example.FromString(record)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{where}: not a tf.train.Example ({e}).") from e
  f = ex.features.feature
  for key in ("video_png", "shape"):
    if key not in f:
      raise ValueError(f"{where}: feature {key!r} is missing; expected a "
                       "record written by data_pipelines.generate.")
  shape = tuple(f["shape"].int64_list.value)
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"{where}: feature 'shape'={shape}; expected "
                     "[T, H, W, 3].")
  video = decode_frames_png(f["video_png"].bytes_list.value[0], shape[0],
                            where + " video_png")
  if video.shape != shape:
    raise ValueError(f"{where}: video_png decodes to {video.shape}, "
                     f"'shape' says {shape}.")
  seg = None
  if "segmentation_png" in f:
    seg = decode_frames_png(f["segmentation_png"].bytes_list.value[0],
                            shape[0], where + " segmentation_png")
    if seg.shape != shape[:3]:
      raise ValueError(f"{where}: segmentation_png decodes to {seg.shape}; "
                       f"expected {shape[:3]}.")
  return {"video": video, "segmentation": seg,
          "index": int(f["index"].int64_list.value[0]) if "index" in f else -1,
          "num_objects": (int(f["num_objects"].int64_list.value[0])
                          if "num_objects" in f else -1)}


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def load_info(data_dir: str, name: str) -> dict[str, Any]:
  """Reads ``dataset_info.json`` of a generated dataset; clear errors."""
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"data.data_dir={data_dir!r} is not a directory. Write one with "
        f"`python -m data_pipelines.generate {name} --out={data_dir}`, or "
        "leave data.data_dir empty to generate on the fly.")
  path = os.path.join(data_dir, INFO_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: {data_dir!r} is not a dataset written by "
        f"`python -m data_pipelines.generate {name}` (or its generation did "
        "not finish).")
  with open(path) as f:
    try:
      info = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e}).") from e
  if info.get("name") != name:
    raise ValueError(f"{path}: holds dataset {info.get('name')!r}, but the "
                     f"config asks for {name!r} (data.name).")
  if info.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version={info.get('format_version')}, "
                     f"this reader understands {FORMAT_VERSION}.")
  return info


class ShardedEpisodes:
  """Random access to one split of a generated dataset on disk."""

  def __init__(self, data_dir: str, name: str, split: str):
    info = load_info(data_dir, name)
    splits = info.get("splits", {})
    if split not in splits:
      raise ValueError(
          f"{os.path.join(data_dir, INFO_FILE)}: split {split!r} was not "
          f"generated (have {sorted(splits)}); run data_pipelines.generate "
          f"with --splits={split}.")
    self.info = info
    self.split_info = splits[split]
    self.files = []
    for shard in self.split_info["shards"]:
      path = os.path.join(data_dir, shard)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing (listed in "
                                f"{INFO_FILE}).")
      self.files.append(stream.RecordFile(path))
    counts = [len(f) for f in self.files]
    self.starts = np.cumsum([0] + counts)
    if self.starts[-1] != self.split_info["num_examples"]:
      raise ValueError(
          f"{data_dir}: split {split!r} has {self.starts[-1]} records in its "
          f"shards but {INFO_FILE} says {self.split_info['num_examples']}.")

  def __len__(self) -> int:
    return int(self.starts[-1])

  @property
  def episode_shape(self) -> tuple[int, ...]:
    return tuple(self.info["episode_shape"])  # [T, H, W, 3]

  def read(self, index: int) -> dict[str, Any]:
    shard = int(np.searchsorted(self.starts, index, side="right") - 1)
    f = self.files[shard]
    where = f"{f.path} record {index - self.starts[shard]}"
    ep = parse_episode(f.read(int(index - self.starts[shard])), where)
    if ep["index"] != index:
      raise ValueError(f"{where}: holds episode {ep['index']}, expected "
                       f"{index}.")
    return ep


@functools.lru_cache(maxsize=16)
def sharded_episodes(data_dir: str, name: str, split: str) -> ShardedEpisodes:
  return ShardedEpisodes(data_dir, name, split)


def check_against_info(info: Mapping[str, Any], config: Any,
                       fields: Sequence[str], data_dir: str) -> None:
  """Warns about generation fields whose config value differs from disk."""
  stored = info.get("config", {})
  diffs = []
  for key in fields:
    if key in stored and key in config:
      want = config[key]
      want = list(want) if isinstance(want, tuple) else want
      if stored[key] != want:
        diffs.append(f"{key}: disk {stored[key]!r}, config {want!r}")
  if diffs:
    logging.getLogger(__name__).warning(
        "Reading %s, generated with other settings than data config (the "
        "data on disk win): %s", data_dir, "; ".join(diffs))


# ----------------------------------------------------- procedural episodes


def episode_features(num_frames: int, height: int, width: int,
                     with_segmentation: bool = True
                     ) -> dict[str, stream.Feature]:
  """`stream.Feature`s of ``video`` (float32) and ``segmentation`` (int32)."""
  out = {"video": stream.Feature((num_frames, height, width, 3), np.float32)}
  if with_segmentation:
    out["segmentation"] = stream.Feature((num_frames, height, width),
                                         np.int32)
  return out


def episodes_source(config: Any, split: str, *, name: str,
                    generate: Callable[[str, int], Mapping[str, Any]],
                    episode_shape: tuple[int, int, int],
                    generation_fields: Sequence[str],
                    cache_key: Hashable | None = None):
  """Where a procedural dataset's episodes come from.

  ``config.data_dir`` empty: ``generate(split, index)`` on the fly (with
  ``cache_episodes``, kept in memory: one cache per split and ``cache_key``,
  everything ``generate`` depends on, e.g. the generator's frozen spec);
  else the shards written there by ``data_pipelines.generate``.

  Returns:
    (n, (T, H, W) of the stored episodes, episode(index) -> (video uint8
    [T, H, W, 3], segmentation [T, H, W])).
  """
  data_dir = stream.field(config, "data_dir")
  if data_dir:
    store = sharded_episodes(os.path.abspath(data_dir), name, split)
    check_against_info(store.info, config, generation_fields, data_dir)

    def episode(index):
      ep = store.read(int(index))
      if ep["segmentation"] is None:
        raise ValueError(f"{data_dir}: episode {index} of {split!r} has no "
                         "segmentation_png.")
      return ep["video"], ep["segmentation"]

    return len(store), tuple(store.episode_shape[:3]), episode

  def episode(index):
    ep = generate(split, int(index))
    return ep["video"], ep["segmentation"]

  n = stream.num_split_examples(config, split)
  if config.get("cache_episodes", False):  # simulated once, kept in memory
    # One cache per split and ``cache_key`` (the generator's spec), shared
    # by every dataset built on them in this process: a run's evaluations
    # and figure batches reuse the episodes instead of simulating them again.
    key = (name, split, n, cache_key)
    if cache_key is None or key not in _EPISODE_CACHES:
      cached = functools.lru_cache(maxsize=n)(episode)
      if cache_key is None:
        return n, tuple(episode_shape), cached
      if len(_EPISODE_CACHES) >= _MAX_EPISODE_CACHES:
        _EPISODE_CACHES.pop(next(iter(_EPISODE_CACHES)))
      _EPISODE_CACHES[key] = cached
    episode = _EPISODE_CACHES[key]
  return n, tuple(episode_shape), episode


# The caches of `episodes_source` (``cache_episodes``), oldest first.
_EPISODE_CACHES: dict[tuple, Callable] = {}
_MAX_EPISODE_CACHES = 8


def episodes_dataset(config: Any, split: str, source, *, batch_size: int,
                     seed: int, start_step: int, process_index, process_count,
                     repeat):
  """`stream.make_dataset` of the first ``config.num_frames`` of episodes."""
  n, (t, h, w), episode = source
  num_frames = stream.int_field(config, "num_frames")
  if num_frames > t:
    raise ValueError(f"data.num_frames={num_frames} exceeds the {t} frames "
                     "of each episode.")
  features = episode_features(num_frames, h, w)

  def load_rows(indices, valid):
    video = np.zeros((len(indices), num_frames, h, w, 3), np.float32)
    seg = np.zeros((len(indices), num_frames, h, w), np.int32)
    for row, (index, ok) in enumerate(zip(indices, valid)):
      if ok:
        v, s = episode(index)
        video[row] = v[:num_frames].astype(np.float32) / 255.0
        seg[row] = s[:num_frames]
    return {"video": video, "segmentation": seg}

  return stream.make_dataset(
      load_rows, features, n=n, split=split, batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat,
      options=stream.stream_options(config))
