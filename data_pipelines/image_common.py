"""Shared machinery of the real image datasets.

Every dataset here keeps the contract of ``data_pipelines/__init__.py``. This
module holds what they share:

* Clear errors: `DatasetNotFoundError` (a file or directory is missing: what
  was expected where, and where to get it) and `DatasetFormatError` (a file is
  there but malformed). `iterate` turns a TensorFlow error raised while
  reading into a `DatasetReadError` naming the dataset and its files.
* The index stream of datasets with random access (one example = one file or
  one record at a known offset): global batch ``s`` is positions
  ``s*G .. s*G+G-1`` of a stream that visits the split in a fresh permutation
  per epoch (``tf.random.experimental.index_shuffle`` of ``(seed, epoch)``);
  process ``p`` reads its contiguous slice, so ``start_step`` costs O(1) and
  the global batch does not depend on the number of processes. Evaluation
  streams (``repeat=False``) visit the split once, in order, padding the last
  batch with zero rows marked ``valid=False``.
* Resampling that reproduces the papers' code bit for bit where it can:
  PIL's antialiased bilinear resize (torchvision ``Resize``) as TF's
  antialiased bilinear resize rounded to uint8 (equal to within one grey
  level), and the two nearest-neighbour conventions as exact gathers: PIL's
  (pixel centres, ``NEAREST``) and PyTorch's (``F.interpolate`` default).
* Group splits (scenes, episodes) and an index of uncompressed TFRecord files
  for reading any record by offset.
"""

from __future__ import annotations

import math
import os
import random
import re
import struct
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

import data_pipelines

# Second word of the shuffling seed, so the datasets' streams never collide
# with other uses of the same seed.
_SHUFFLE_STREAM = 0x5EED


# ------------------------------------------------------------------- errors


class DatasetNotFoundError(FileNotFoundError):
  """A dataset file or directory is missing."""


class DatasetFormatError(ValueError):
  """A dataset file is present but not in the published format."""


class DatasetReadError(RuntimeError):
  """Reading a dataset failed while iterating (corrupt or truncated data)."""


def require_path(path: str, *, what: str, expected: str, where: str,
                 kind: str = "any") -> str:
  """Returns ``path`` or raises `DatasetNotFoundError` saying what is missing.

  Args:
    path: the path that must exist.
    what: the dataset and the role of the path ("ShapeStacks split file").
    expected: the expected layout, shown in the message.
    where: where the user gets the data.
    kind: "dir", "file" or "any".
  """
  ok = {"dir": os.path.isdir, "file": os.path.isfile,
        "any": os.path.exists}[kind](path)
  if not ok:
    raise DatasetNotFoundError(
        f"{what} not found: {path!r} does not exist"
        f"{' or is not a directory' if kind == 'dir' else ''}.\n"
        f"Expected layout:\n{expected}\nGet the data from: {where}\n"
        "(Set --config.data.data_dir to the folder holding it; nothing is "
        "downloaded at run time.)")
  return path


def require_data_dir(config: Any, *, what: str, expected: str,
                     where: str) -> str:
  """``config.data_dir`` as an existing directory, or a clear error."""
  data_dir = str(config.get("data_dir", "") or "")
  if not data_dir:
    raise DatasetNotFoundError(
        f"{what}: config field data.data_dir is empty. Set it to the folder "
        f"holding the downloaded files (--config.data.data_dir=DIR).\n"
        f"Expected layout:\n{expected}\nGet the data from: {where}")
  return require_path(os.path.expanduser(data_dir), what=what,
                      expected=expected, where=where, kind="dir")


# ------------------------------------------------------------------ configs


def field(config: Any, name: str, default: Any) -> Any:
  """``config.name`` if present, else ``default`` (a module default)."""
  if config is not None and name in config:
    return config[name]
  return default


def resolve(config: Any, defaults: Any) -> Any:
  """``defaults`` overridden by the fields ``config`` has (a new dict).

  Fields a config lacks take the module's default, so a hand-written config
  with only ``name`` and ``data_dir`` works.
  """
  out = defaults.to_dict() if hasattr(defaults, "to_dict") else dict(defaults)
  for k in list(out):
    if config is not None and k in config:
      out[k] = config[k]
  return _Fields(out)


class _Fields(dict):
  """A read-only attribute view of a resolved config."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


def check_int(value: Any, name: str, minimum: int = 0) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"data.{name}={value!r} is invalid; expected an int >= "
                     f"{minimum}.")
  return int(value)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
  if value not in choices:
    raise ValueError(f"data.{name}={value!r} is unknown; expected one of "
                     f"{tuple(choices)}.")
  return value


def check_stream_args(split: str, batch_size: int, start_step: int,
                      process_index: int, process_count: int) -> int:
  """Validates the stream arguments; returns the per-process batch size."""
  data_pipelines._check_split(split)  # pylint: disable=protected-access
  if (isinstance(batch_size, bool) or not isinstance(batch_size, int)
      or batch_size < 1 or batch_size % process_count):
    raise ValueError(
        f"batch_size={batch_size!r} is invalid; expected a positive multiple "
        f"of process_count={process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} outside [0, {process_count}).")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} is invalid; expected >= 0.")
  return batch_size // process_count


# --------------------------------------------------------------- tf.data


def tf():
  """TensorFlow, kept off accelerators (imported on first use)."""
  data_pipelines.configure_tensorflow()
  import tensorflow  # pylint: disable=g-import-not-at-top
  return tensorflow


def graph_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` for tf.data, traced as written (no AutoGraph rewriting).

  The pipelines use explicit ``tf.cond``; AutoGraph would only slow tracing
  down and rewrite the helpers they call.
  """
  return tf().autograph.experimental.do_not_convert(fn)


def stream_options(config: Any) -> tuple[int, int]:
  """(parallel calls, prefetched batches): small, so XLA keeps the CPU."""
  calls = check_int(field(config, "num_parallel_calls", 2),
                    "num_parallel_calls", 1)
  prefetch = check_int(field(config, "prefetch", 2), "prefetch", 0)
  return calls, prefetch


def finish(ds, *, local_batch: int, config: Any, context: str):
  """Batches, prefetches and bounds the threads of a per-example dataset."""
  tf_ = tf()
  calls, prefetch = stream_options(config)
  ds = ds.batch(local_batch, drop_remainder=True)
  if prefetch:
    ds = ds.prefetch(prefetch)
  options = tf_.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = calls
  options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options)
  return attach_context(ds, context)


def tf_message(error: Exception, limit: int = 400) -> str:
  """The useful part of a TensorFlow error message, on one line."""
  message = " ".join(str(getattr(error, "message", error)).split())
  message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
  message = re.sub(r"\s*\[\[.*$", "", message)
  message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message)
  return message[:limit]


def attach_context(ds, context: str):
  """Remembers what ``ds`` reads, for the errors of `iterate`."""
  try:
    ds._ocjax_context = context  # pylint: disable=protected-access
  except AttributeError:  # pragma: no cover (exotic dataset classes)
    pass
  return ds


def iterate(ds) -> Iterator[dict[str, np.ndarray]]:
  """NumPy batches of ``ds``; read errors name the dataset and its files.

  TensorFlow reports a corrupt or truncated file deep inside its runtime;
  this re-raises it as a `DatasetReadError` with the dataset's context and
  TensorFlow's first line, without the TensorFlow traceback.
  """
  tf_ = tf()
  context = getattr(ds, "_ocjax_context", "the dataset")
  it = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf_.errors.OpError as e:
      raise DatasetReadError(
          f"Reading {context} failed: {tf_message(e, 2000)}\nThe file is "
          "corrupt, truncated or not in the published format; re-download "
          "it (see docs/datasets.md).") from None
    yield batch


def positions(*, num_examples: int, batch_size: int, start_step: int,
              process_index: int, process_count: int, repeat: bool):
  """Dataset of the global stream positions this process reads, in order.

  Position ``g`` belongs to global batch ``g // G``; process ``p`` reads rows
  ``p*b .. p*b+b-1`` of every global batch (``b = G // process_count``).
  Without ``repeat`` the stream covers ``ceil(N / G)`` global batches, the
  positions ``>= N`` being padding.
  """
  tf_ = tf()
  local = batch_size // process_count
  if repeat:
    stop = np.iinfo(np.int64).max
  else:
    stop = math.ceil(num_examples / batch_size) * local
  start = min(start_step * local, stop)

  def to_global(k):  # k: local position.
    return (k // local) * batch_size + process_index * local + k % local

  return tf_.data.Dataset.range(start, stop).map(graph_fn(to_global))


def position_to_index(g, *, num_examples: int, seed: int, shuffle: bool):
  """(example index, valid) of global position ``g`` (graph code).

  With ``shuffle``, epoch ``e = g // N`` visits the examples in the
  permutation ``index_shuffle(., (seed, e))``.
  """
  tf_ = tf()
  n = tf_.constant(num_examples, tf_.int64)
  epoch, i = g // n, g % n
  valid = g < n if not shuffle else tf_.constant(True)
  if shuffle:
    # index_shuffle keys its rounds with only the low bits of the seed words
    # (8 bits for a 10-element domain), so (seed, epoch) is first hashed by
    # a counter-based generator into two well-mixed words.
    key = tf_.stack([tf_.constant(seed_word(seed), tf_.int64),
                     epoch * 65536 + _SHUFFLE_STREAM])
    words = tf_.random.stateless_uniform(
        [2], seed=key, minval=None, maxval=None, dtype=tf_.int64)
    i = tf_.random.experimental.index_shuffle(i, seed=words, max_index=n - 1)
  return tf_.where(valid, i, tf_.zeros_like(i)), valid


def seed_word(seed: int) -> int:
  """A non-negative int63 of any Python int seed."""
  return int(seed) % (1 << 62)


def indexed_dataset(load: Callable[..., Mapping[str, Any]], *,
                    num_examples: int, batch_size: int, seed: int,
                    start_step: int, process_index: int, process_count: int,
                    repeat: bool, config: Any, context: str):
  """This process's batches of a random-access dataset.

  Args:
    load: graph function ``index (int64 scalar) -> {name: tensor}``; it is
      called for padding rows too (with index 0), whose outputs are zeroed.
    num_examples: size of the split (> 0).
    batch_size, seed, start_step, process_index, process_count, repeat: as in
      ``data_pipelines.get_dataset``.
    config: the data config (``num_parallel_calls``, ``prefetch``).
    context: what is read, for error messages.
  """
  if num_examples < 1:
    raise DatasetFormatError(f"{context}: the split is empty.")
  tf_ = tf()
  local = batch_size // process_count
  calls, _ = stream_options(config)
  ds = positions(num_examples=num_examples, batch_size=batch_size,
                 start_step=start_step, process_index=process_index,
                 process_count=process_count, repeat=repeat)

  def example(g):
    index, valid = position_to_index(g, num_examples=num_examples, seed=seed,
                                     shuffle=repeat)
    out = dict(load(index))
    if not repeat:
      out = {k: v * tf_.cast(valid, v.dtype) for k, v in out.items()}
      out["valid"] = valid
    return out

  ds = ds.map(graph_fn(example), num_parallel_calls=calls,
              deterministic=True)
  return finish(ds, local_batch=local, config=config, context=context)


# ------------------------------------------------------ crops and resizes


def center_crop_offsets(height: int, width: int, crop_h: int,
                        crop_w: int) -> tuple[int, int]:
  """Top-left corner of a centre crop (floor, as PIL ``box`` and NumPy)."""
  if crop_h > height or crop_w > width:
    raise ValueError(f"Crop {crop_h}x{crop_w} larger than the image "
                     f"{height}x{width}.")
  return (height - crop_h) // 2, (width - crop_w) // 2


def pil_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source pixels of PIL's ``NEAREST`` resize from ``n_in`` to ``n_out``.

  PIL samples the pixel centre ``(i + 0.5) * n_in / n_out``, accumulated in
  double precision; the accumulation is reproduced so that boundary cases
  (e.g. 640 -> 170 at i = 42) round as PIL rounds them.
  """
  scale = n_in / n_out
  out = np.empty(n_out, np.int64)
  x = 0.5 * scale
  for i in range(n_out):
    out[i] = min(int(x), n_in - 1)
    x += scale
  return out


def torch_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source pixels of PyTorch's ``F.interpolate(mode='nearest')``.

  ``floor(i * scale)`` in float32 with ``scale = n_in / n_out``.
  """
  if n_in == n_out:
    return np.arange(n_out)
  scale = np.float32(n_in) / np.float32(n_out)
  idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, n_in - 1)


NEAREST_CONVENTIONS = {"pil": pil_nearest_indices,
                       "torch": torch_nearest_indices}


def resize_nearest(x, size: tuple[int, int], in_size: tuple[int, int],
                   convention: str):
  """Nearest-neighbour resize of ``x`` ``[H, W, ...]`` as an exact gather."""
  tf_ = tf()
  fn = NEAREST_CONVENTIONS[convention]
  rows = fn(in_size[0], size[0])
  cols = fn(in_size[1], size[1])
  x = tf_.gather(x, rows, axis=0)
  return tf_.gather(x, cols, axis=1)


def resize_bilinear_uint8(x, size: tuple[int, int]):
  """PIL-style antialiased bilinear resize of uint8 ``x`` ``[H, W, C]``.

  Returns float32 in [0, 255], rounded to integers as PIL's uint8 output.
  """
  tf_ = tf()
  y = tf_.image.resize(tf_.cast(x, tf_.float32), size, method="bilinear",
                       antialias=True)
  return tf_.round(tf_.clip_by_value(y, 0.0, 255.0))


def resize_image(x, size: tuple[int, int], in_size: tuple[int, int],
                 method: str):
  """Resize of a uint8 image to float32 in [0, 255] (no-op at same size).

  ``method``: "bilinear" (PIL/torchvision), "nearest_torch" (GENESIS's
  ``F.interpolate``) or "nearest_pil".
  """
  tf_ = tf()
  if tuple(size) == tuple(in_size):
    return tf_.cast(x, tf_.float32)
  if method == "bilinear":
    return resize_bilinear_uint8(x, size)
  if method in ("nearest_torch", "nearest_pil"):
    return tf_.cast(resize_nearest(x, size, in_size, method.split("_")[1]),
                    tf_.float32)
  raise ValueError(f"Unknown resize method {method!r}; expected 'bilinear', "
                   "'nearest_torch' or 'nearest_pil'.")


RESIZE_METHODS = ("bilinear", "nearest_torch", "nearest_pil")


def to_unit(x):
  """float32 [0, 255] -> [0, 1]."""
  return x / 255.0


def assert_shape(x, expected: Sequence[int], message: Sequence[Any]):
  """``x`` with a runtime check of its leading dims naming the source."""
  tf_ = tf()
  shape = tf_.shape(x, out_type=tf_.int64)[:len(expected)]
  ok = tf_.reduce_all(tf_.equal(shape, tf_.constant(expected, tf_.int64)))
  check = tf_.debugging.Assert(
      ok, list(message) + ["has shape", tf_.shape(x), "expected",
                           tf_.constant(list(expected))], summarize=8)
  with tf_.control_dependencies([check]):
    return tf_.identity(x)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png_checked(contents, path, *, channels: int, shape: Sequence[int],
                       what: str):
  """Decodes PNG ``contents`` uint8, checking signature and ``[H, W]``."""
  tf_ = tf()
  is_png = tf_.equal(tf_.strings.substr(contents, 0, 8), _PNG_SIGNATURE)
  check = tf_.debugging.Assert(is_png, [what, path, "is not a PNG file"])
  with tf_.control_dependencies([check]):
    image = tf_.io.decode_png(contents, channels=channels, dtype=tf_.uint8)
  return assert_shape(image, shape, [what, path])


def read_png_checked(path, *, channels: int, shape: Sequence[int], what: str):
  tf_ = tf()
  return decode_png_checked(tf_.io.read_file(path), path, channels=channels,
                            shape=shape, what=what)


# --------------------------------------------------------------- splits


def split_groups(groups: Sequence[str], *, seed: int | None,
                 eval_fraction: float = 0.1) -> dict[str, list[str]]:
  """80/10/10 split of sorted groups (scenes, episodes) as GENESIS makes it.

  The groups are sorted; with ``seed`` they are shuffled by Python's
  ``random.Random(seed).shuffle`` (what the GENESIS code runs with seed 0 for
  APC). ``n_eval = int(len * eval_fraction)``; validation is the first
  ``n_eval`` groups, test the next ``n_eval``, train the rest. No group is in
  two splits.
  """
  groups = sorted(groups)
  if len(set(groups)) != len(groups):
    raise ValueError("Duplicate groups in a split.")
  if seed is not None:
    random.Random(seed).shuffle(groups)
  n_eval = int(len(groups) * eval_fraction)
  return {"validation": groups[:n_eval],
          "test": groups[n_eval:2 * n_eval],
          "train": groups[2 * n_eval:]}


# ------------------------------------------------- uncompressed TFRecords


def tfrecord_index(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(offsets, lengths) of the records' payloads in an uncompressed file.

  A TFRecord is ``uint64 length, uint32 crc, bytes[length], uint32 crc``;
  only the 12-byte headers are read. Raises `DatasetFormatError` naming the
  file and record when a header points past the end (a truncated file).
  """
  size = os.path.getsize(path)
  offsets, lengths = [], []
  with open(path, "rb") as f:
    pos = 0
    while pos < size:
      f.seek(pos)
      header = f.read(12)
      if len(header) < 12:
        raise DatasetFormatError(
            f"{path}: truncated TFRecord file (record {len(offsets)} starts "
            f"at byte {pos} of {size} but its header is incomplete).")
      (length,) = struct.unpack("<Q", header[:8])
      end = pos + 12 + length + 4
      if end > size:
        raise DatasetFormatError(
            f"{path}: truncated or not an uncompressed TFRecord file (record "
            f"{len(offsets)} at byte {pos} claims {length} bytes, past the "
            f"end of the {size}-byte file).")
      offsets.append(pos + 12)
      lengths.append(length)
      pos = end
  return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


def read_record(path, offset, length, file_size):
  """The payload of one record (graph code; all arguments may be tensors)."""
  tf_ = tf()
  ds = tf_.data.FixedLengthRecordDataset(
      path, record_bytes=length, header_bytes=offset,
      footer_bytes=file_size - offset - length)
  return ds.get_single_element()


# ----------------------------------------------------------------- misc


def list_files(directory: str) -> list[str]:
  """Sorted names of the regular files in ``directory`` ([] if missing)."""
  try:
    with os.scandir(directory) as it:
      return sorted(e.name for e in it if e.is_file())
  except FileNotFoundError:
    return []


def list_dirs(directory: str) -> list[str]:
  try:
    with os.scandir(directory) as it:
      return sorted(e.name for e in it if e.is_dir())
  except FileNotFoundError:
    return []
