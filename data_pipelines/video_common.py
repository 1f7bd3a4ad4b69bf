"""Shared machinery of the video datasets: index streams, tf.data, TFRecords.

Every video dataset in this package keeps the contract of
``data_pipelines/__init__.py``. This module holds what they share (the index
stream and `make_dataset` also serve the procedural image dataset,
``sprites``):

* the index stream: global batch ``s`` is positions ``s*G .. s*G+G-1`` of a
  stream that visits the split in a fresh permutation per epoch (a function
  of ``seed``, split and epoch); process ``p`` takes its contiguous slice, so
  ``start_step`` costs O(1) and the global batch does not depend on the
  number of processes. Evaluation streams (``repeat=False``) visit the split
  once, in order, padding the last batch with zero rows marked
  ``valid=False``.
* `make_dataset`: a `tf.data.Dataset` of this process's batches built from a
  NumPy ``load_rows(indices, valid)`` function, run by
  ``tf.numpy_function`` with bounded parallelism.
* sharded TFRecords of videos as written by ``data_pipelines.generate``:
  one ``tf.train.Example`` per episode with the frames stacked vertically and
  PNG-encoded (``video_png``: ``[T*H, W, 3]``; ``segmentation_png``:
  ``[T*H, W]`` uint8 track ids), plus ``dataset_info.json``. Records are read
  by byte offset (no compression), so any episode is one ``pread`` away and
  resuming needs no skipping.

TensorFlow is imported inside the functions that need it: the generators run
in worker processes that never touch TensorFlow.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import json
import logging
import os
import struct
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

import data_pipelines
from data_pipelines import numpy_calls

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
# First word of the seed sequences, so content and shuffling never collide.
CONTENT_STREAM, SHUFFLE_STREAM = 10, 11
INFO_FILE = "dataset_info.json"
FORMAT_VERSION = 1


# ------------------------------------------------------------------ configs


def preset(name: str, presets: Mapping[str, Mapping[str, Any]],
           default_config: Callable[[], Any], key: str):
  """``default_config()`` updated with ``presets[key]``; unknown keys named."""
  if key not in presets:
    raise ValueError(f"Unknown preset {key!r} of {name}; known: "
                     f"{', '.join(presets) or 'none'}.")
  c = default_config()
  c.update(presets[key])
  return c


def split_id(split: str) -> int:
  data_pipelines._check_split(split)  # pylint: disable=protected-access
  return SPLIT_IDS[split]


def field(config: Any, name: str) -> Any:
  """``config.name``; a clear error when the field is missing."""
  if name not in config:
    raise ValueError(
        f"Config field data.{name} is missing (dataset "
        f"{config.get('name', '?')!r}); start from the module's "
        "default_config().")
  return config[name]


def positive_int(config: Any, name: str, minimum: int = 1) -> int:
  value = field(config, name)
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"data.{name}={value!r} is invalid; expected an int >= "
                     f"{minimum}.")
  return int(value)


def int_range(config: Any, name: str, minimum: int = 0) -> tuple[int, int]:
  """A ``(lo, hi)`` field with ``minimum <= lo <= hi``."""
  value = field(config, name)
  try:
    lo, hi = (int(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"data.{name}={value!r} is invalid; expected a pair of "
                     "ints (min, max).") from None
  if not minimum <= lo <= hi:
    raise ValueError(f"data.{name}={value!r} is invalid; expected "
                     f"{minimum} <= min <= max.")
  return lo, hi


def num_split_examples(config: Any, split: str) -> int:
  split_id(split)
  return positive_int(config, f"num_{split}")


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
  """Applies ``field=value`` strings to a ConfigDict, typed by the field.

  Values are Python literals (``64``, ``(6, 8)``, ``'colour'``); bare words
  are strings. Unknown fields raise, naming the known ones.
  """
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"Override {item!r} is malformed; expected "
                       "field=value.")
    key, raw = item.split("=", 1)
    key = key.strip().removeprefix("data.")
    if key not in config:
      raise ValueError(
          f"Override {item!r}: the data config of {config.get('name')!r} has "
          f"no field {key!r}. Known fields: {', '.join(sorted(config))}.")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    old = config[key]
    if isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    if isinstance(old, float) and isinstance(value, int):
      value = float(value)
    if isinstance(old, str) and not isinstance(value, str):
      value = raw
    if type(old) is not type(value):  # pylint: disable=unidiomatic-typecheck
      raise ValueError(
          f"Override {item!r}: data.{key} is a {type(old).__name__} "
          f"({old!r}); got a {type(value).__name__}.")
    config[key] = value
  return config


def config_to_json(config: Any) -> dict[str, Any]:
  """A JSON-able dict of a (flat) data config."""
  out = {}
  for key in sorted(config):
    value = config[key]
    out[key] = list(value) if isinstance(value, tuple) else value
  return out


# ------------------------------------------------------------- index stream


def seed_word(seed: int) -> int:
  return int(seed) % 2**64


@functools.lru_cache(maxsize=8)
def permutation(seed: int, split: int, epoch: int, n: int,
                stream: int = SHUFFLE_STREAM) -> np.ndarray:
  """The epoch's permutation of ``range(n)``; ``stream`` is the first word."""
  rng = np.random.default_rng([stream, seed_word(seed), split, epoch])
  perm = rng.permutation(n)
  perm.flags.writeable = False
  return perm


def step_rows(step: int, n: int, *, split: int, batch_size: int, seed: int,
              process_index: int, process_count: int, repeat: bool,
              stream: int = SHUFFLE_STREAM) -> tuple[np.ndarray, np.ndarray]:
  """Example indices of this process's rows of global batch ``step``.

  Returns:
    (indices [b], valid [b]) with ``b = batch_size // process_count``;
    padding rows (only when not repeating) have index 0 and valid False.
  """
  local = batch_size // process_count
  pos = (np.int64(step) * batch_size + process_index * local
         + np.arange(local, dtype=np.int64))  # [b]
  if not repeat:
    valid = pos < n
    return np.where(valid, pos, 0), valid
  epochs, within = np.divmod(pos, n)
  indices = np.empty_like(pos)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    indices[sel] = permutation(seed, split, int(epoch), n,
                               stream)[within[sel]]
  return indices, np.ones(local, bool)


@dataclasses.dataclass(frozen=True)
class Feature:
  """Per-example shape and dtype of one batch entry."""
  shape: tuple[int, ...]
  dtype: Any  # NumPy dtype.


def check_stream_args(batch_size: int, start_step: int, process_index,
                      process_count):
  process_index, process_count = data_pipelines.process_shard(
      process_index, process_count)
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
        f"batch_size={batch_size} is invalid; expected a positive multiple "
        f"of process_count={process_count}.")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} is invalid; expected >= 0.")
  return process_index, process_count


def make_dataset(load_rows: Callable[[np.ndarray, np.ndarray],
                                     Mapping[str, np.ndarray]],
                 features: Mapping[str, Feature], *, n: int, split: str,
                 batch_size: int, seed: int, start_step: int,
                 process_index: int | None, process_count: int | None,
                 repeat: bool | None, num_parallel_calls: int = 2,
                 prefetch: int = 2, shuffle_stream: int = SHUFFLE_STREAM):
  """This process's batches as a `tf.data.Dataset` (see the module doc).

  Args:
    load_rows: ``(indices [b], valid [b]) -> {name: array [b, ...]}``; must
      fill invalid rows with zeros and be a pure function of its inputs.
    features: name -> per-example `Feature` of every entry load_rows returns.
    n: number of examples in the split.
    num_parallel_calls: batches produced in parallel (and the private
      thread-pool size).
    prefetch: batches prefetched.
    shuffle_stream: first word of the shuffling seed sequence.
    Others: as in ``data_pipelines.get_dataset``.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  sid = split_id(split)
  process_index, process_count = check_stream_args(
      batch_size, start_step, process_index, process_count)
  if n < 1:
    raise ValueError(f"Split {split!r} has no examples.")
  if repeat is None:
    repeat = split == "train"
  if num_parallel_calls < 1 or prefetch < 0:
    raise ValueError(
        f"data.num_parallel_calls={num_parallel_calls}, data.prefetch="
        f"{prefetch} are invalid; expected >= 1 and >= 0.")
  data_pipelines.configure_tensorflow()
  local = batch_size // process_count
  names = sorted(features)
  rows = functools.partial(
      step_rows, n=n, split=sid, batch_size=batch_size, seed=seed,
      process_index=process_index, process_count=process_count,
      repeat=repeat, stream=shuffle_stream)

  numpy_calls.CALLS.register()

  def load(step):  # NumPy, outside the graph.
    with numpy_calls.CALLS as work:
      indices, valid = rows(int(step))
      if not work:  # Exiting: let tf.data fill its buffers with zeros.
        return tuple(np.zeros((local,) + features[k].shape, features[k].dtype)
                     for k in names) + (np.zeros_like(valid),)
      return _load(indices, valid)

  def _load(indices, valid):
    out = load_rows(indices, valid)
    arrays = []
    for name in names:
      f = features[name]
      a = np.asarray(out[name], dtype=f.dtype)
      if a.shape != (local,) + f.shape:
        raise ValueError(f"Internal: {name} has shape {a.shape}, expected "
                         f"{(local,) + f.shape}.")
      arrays.append(a)
    return tuple(arrays) + (valid,)

  def to_batch(step):
    out = tf.numpy_function(
        load, [step],
        tuple(tf.as_dtype(features[k].dtype) for k in names) + (tf.bool,),
        stateful=False)
    batch = {k: tf.ensure_shape(v, (local,) + features[k].shape)
             for k, v in zip(names, out)}
    if not repeat:
      batch["valid"] = tf.ensure_shape(out[-1], [local])
    return batch

  if repeat:
    steps = tf.data.Dataset.counter(start_step, dtype=tf.int64)
  else:
    steps = tf.data.Dataset.range(start_step, -(-n // batch_size))
  ds = steps.map(to_batch, num_parallel_calls=num_parallel_calls,
                 deterministic=True)
  if prefetch:
    ds = ds.prefetch(prefetch)
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  options.threading.private_threadpool_size = num_parallel_calls
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def stream_options(config: Any) -> dict[str, int]:
  return dict(num_parallel_calls=positive_int(config, "num_parallel_calls"),
              prefetch=positive_int(config, "prefetch", minimum=0))


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


# ------------------------------------------------------------------ TFRecords


def scan_tfrecord(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Byte offsets and lengths of the payloads of an uncompressed TFRecord.

  Reads only the 12-byte record headers. Raises ValueError naming the file
  when it is truncated or not a TFRecord file.
  """
  offsets, lengths = [], []
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    pos = 0
    while pos < size:
      header = f.read(12)
      if len(header) < 12:
        raise ValueError(f"{path}: truncated TFRecord header at byte {pos}.")
      (length,) = struct.unpack("<Q", header[:8])
      end = pos + 12 + length + 4
      if end > size:
        raise ValueError(
            f"{path}: record at byte {pos} claims {length} bytes but the file "
            f"ends at {size}; the file is truncated or not an uncompressed "
            "TFRecord file.")
      offsets.append(pos + 12)
      lengths.append(length)
      pos = end
      f.seek(pos)
  return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


class RecordFile:
  """Random access to the records of one uncompressed TFRecord file."""

  def __init__(self, path: str):
    self._fd = None
    self._lock = threading.Lock()
    self.path = path
    self.offsets, self.lengths = scan_tfrecord(path)

  def __len__(self) -> int:
    return len(self.offsets)

  def read(self, i: int) -> bytes:
    if not 0 <= i < len(self):
      raise IndexError(f"{self.path}: record {i} of {len(self)}.")
    with self._lock:
      if self._fd is None:
        self._fd = os.open(self.path, os.O_RDONLY)
    data = os.pread(self._fd, int(self.lengths[i]), int(self.offsets[i]))
    if len(data) != self.lengths[i]:
      raise ValueError(f"{self.path}: short read of record {i}.")
    return data

  def __del__(self):
    if self._fd is not None:
      try:
        os.close(self._fd)
      except OSError:
        pass


def write_tfrecord(path: str, records: Iterable[bytes]) -> int:
  """Writes records atomically (temporary file + rename); returns count."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tmp = path + ".incomplete"
  count = 0
  with tf.io.TFRecordWriter(tmp) as writer:
    for record in records:
      writer.write(record)
      count += 1
  os.replace(tmp, path)
  return count


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
      self.files.append(RecordFile(path))
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
                     with_segmentation: bool = True) -> dict[str, Feature]:
  out = {"video": Feature((num_frames, height, width, 3), np.float32)}
  if with_segmentation:
    out["segmentation"] = Feature((num_frames, height, width), np.int32)
  return out


def episodes_source(config: Any, split: str, *, name: str,
                    generate: Callable[[str, int], Mapping[str, Any]],
                    episode_shape: tuple[int, int, int],
                    generation_fields: Sequence[str]):
  """Where a procedural dataset's episodes come from.

  ``config.data_dir`` empty: ``generate(split, index)`` on the fly; else the
  shards written there by ``data_pipelines.generate``.

  Returns:
    (n, (T, H, W) of the stored episodes, episode(index) -> (video uint8
    [T, H, W, 3], segmentation [T, H, W])).
  """
  data_dir = field(config, "data_dir")
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

  return num_split_examples(config, split), tuple(episode_shape), episode


def episodes_dataset(config: Any, split: str, source, *, batch_size: int,
                     seed: int, start_step: int, process_index, process_count,
                     repeat):
  """`make_dataset` over the first ``config.num_frames`` of each episode."""
  n, (t, h, w), episode = source
  num_frames = positive_int(config, "num_frames")
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

  return make_dataset(
      load_rows, features, n=n, split=split, batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat, **stream_options(config))
