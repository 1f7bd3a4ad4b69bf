"""The stream engine every dataset of ``data_pipelines`` is built on.

Each concept the dataset modules share lives here once:

* Errors: `DatasetNotFoundError` (a file or directory is missing),
  `DatasetFormatError` (a file is there but malformed; a ``ValueError``) and
  `DatasetReadError` (reading failed while iterating). `iterate` turns a
  TensorFlow error raised while reading into a `DatasetReadError` naming the
  dataset and its files.
* Configs: `field` (a field, with a default or required), `resolve` (a config
  over a module's defaults), the validators `check_int` / `int_field`,
  `int_range`, `float_field`, `float_range`, `check_choice`, and `preset`,
  `apply_overrides`, `config_to_json`.
* Seeds and splits: `seed_word`, `split_id`, `num_split_examples`,
  `split_groups`.
* Stream arguments: `check_stream_args`, `stream_options`.
* The index stream of ``data_pipelines/__init__.py``: global batch ``s`` is
  positions ``s*G .. s*G+G-1`` of a stream that visits the split in a fresh
  permutation per epoch; process ``p`` reads its contiguous slice
  ``p*b .. p*b+b-1`` of every global batch (``b = G // process_count``), so
  ``start_step`` costs O(1) and the global batch does not depend on the
  number of processes. Evaluation streams (``repeat=False``) visit the split
  once, in order, padding the last batch with zero rows marked
  ``valid=False``. Two builders, one per kind of loader:

  - `make_dataset`: examples produced by NumPy (procedural generators,
    readers of HDF5/mp4/PNG episodes), one ``tf.numpy_function`` call per
    batch; the positions of a step are `step_rows`, the epoch's permutation
    is `permutation` (NumPy ``default_rng`` of ``(stream, seed, split,
    epoch)``).
  - `indexed_dataset`: examples loaded by TensorFlow graph code (image files,
    records at known offsets), one map call per example; the positions are
    `positions`, the permutation `position_to_index`
    (``tf.random.experimental.index_shuffle`` of ``(seed, epoch)``).

  Both give the same batches to any number of processes and resume exactly;
  their permutations differ (each dataset keeps the one it was released
  with, so no stream ever changes).
* Uncompressed TFRecord files read by byte offset: `scan_tfrecord`,
  `RecordFile` (NumPy ``pread``), `read_record` (graph code),
  `write_tfrecord`.

TensorFlow is imported on first use (`tf`): generator worker processes that
import this module never touch it. Where TensorFlow is not installed (e.g. an
accelerator machine without it), `make_dataset` streams the same batches
through `NumpyStream`, a bounded ordered thread pool, so the procedural
datasets and the trainer need no TensorFlow; only the readers of file
datasets (`indexed_dataset`, TFRecords) do.
"""

from __future__ import annotations

import ast
import collections
import concurrent.futures
import dataclasses
import functools
import math
import os
import random
import re
import struct
import threading
from typing import (Any, Callable, Iterable, Iterator, Mapping, NamedTuple,
                    Sequence)

import numpy as np

import data_pipelines
from data_pipelines import numpy_calls


# ------------------------------------------------------------------- errors


class DatasetNotFoundError(FileNotFoundError):
  """A dataset file or directory is missing."""


class DatasetFormatError(ValueError):
  """A dataset file is present but not in the published format."""


class DatasetReadError(RuntimeError):
  """Reading a dataset failed while iterating (corrupt or truncated data)."""


# ------------------------------------------------------------------ configs

_REQUIRED = object()


def field(config: Any, name: str, default: Any = _REQUIRED) -> Any:
  """``config[name]``; ``default`` when the config lacks the field.

  Without a default a missing field is an error naming it.
  """
  if config is not None and name in config:
    return config[name]
  if default is not _REQUIRED:
    return default
  dataset = config.get("name", "?") if config is not None else "?"
  raise ValueError(
      f"Config field data.{name} is missing (dataset {dataset!r}); start "
      "from the module's default_config().")


def resolve(config: Any, defaults: Any) -> Any:
  """``defaults`` overridden by the fields ``config`` has (a new dict).

  Fields a config lacks take the module's default, so a hand-written config
  with only ``name`` and ``data_dir`` works.
  """
  out = defaults.to_dict() if hasattr(defaults, "to_dict") else dict(defaults)
  return _Fields({k: field(config, k, v) for k, v in out.items()})


class _Fields(dict):
  """A read-only attribute view of a resolved config."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


def check_int(value: Any, name: str, minimum: int = 1) -> int:
  """``value`` as an int ``>= minimum``, or an error naming ``data.name``."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"data.{name}={value!r} is invalid; expected an int >= "
                     f"{minimum}.")
  return int(value)


def int_field(config: Any, name: str, minimum: int = 1,
              default: Any = _REQUIRED) -> int:
  """The int field ``name`` of ``config`` (see `field`), ``>= minimum``."""
  return check_int(field(config, name, default), name, minimum)


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


def float_range(config: Any, name: str,
                minimum: float | None = None) -> tuple[float, float]:
  """A ``(lo, hi)`` number field with ``lo <= hi`` (and ``minimum <= lo``)."""
  value = field(config, name)
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"data.{name}={value!r} is invalid; expected a pair of "
                     "numbers (min, max).") from None
  if not lo <= hi or (minimum is not None and lo < minimum):
    bound = "" if minimum is None else f"{minimum} <= "
    raise ValueError(f"data.{name}={value!r} is invalid; expected (min, max) "
                     f"with {bound}min <= max.")
  return lo, hi


def float_field(config: Any, name: str, lo: float = 0.0, hi: float = 1.0,
                default: Any = _REQUIRED) -> float:
  """The number field ``name`` of ``config`` (see `field`) in ``[lo, hi]``."""
  value = float(field(config, name, default))
  if not lo <= value <= hi:
    raise ValueError(f"data.{name}={value} is invalid; expected a number in "
                     f"[{lo}, {hi}].")
  return value


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
  """``value`` if one of ``choices``, or an error naming ``data.name``."""
  if value not in choices:
    raise ValueError(f"data.{name}={value!r} is unknown; expected one of "
                     f"{tuple(choices)}.")
  return value


def preset(name: str, presets: Mapping[str, Mapping[str, Any]],
           default_config: Callable[[], Any], key: str):
  """``default_config()`` updated with ``presets[key]``; unknown keys named."""
  if key not in presets:
    raise ValueError(f"Unknown preset {key!r} of {name}; known: "
                     f"{', '.join(presets) or 'none'}.")
  c = default_config()
  c.update(presets[key])
  return c


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


# --------------------------------------------------------- seeds and splits

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def seed_word(seed: int, bits: int = 64) -> int:
  """A non-negative word of any Python int seed: ``seed mod 2**bits``.

  NumPy seed sequences take 64-bit words (the default); TensorFlow's
  stateless seeds are int64, so the graph streams use ``bits=62``.
  """
  return int(seed) % (1 << bits)


def split_id(split: str) -> int:
  """0, 1, 2 for train, validation, test; a clear error otherwise."""
  data_pipelines._check_split(split)  # pylint: disable=protected-access
  return SPLIT_IDS[split]


def num_split_examples(config: Any, split: str) -> int:
  """``config.num_<split>`` (procedural datasets), an int >= 1."""
  split_id(split)
  return int_field(config, f"num_{split}", 1)


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


# -------------------------------------------------------- stream arguments


class StreamArgs(NamedTuple):
  """Validated stream arguments."""
  process_index: int
  process_count: int
  local_batch: int  # batch_size // process_count.


def check_stream_args(split: str, batch_size: int, start_step: int,
                      process_index: int | None,
                      process_count: int | None) -> StreamArgs:
  """Validates the arguments of ``get_dataset``; ``None`` processes default
  to JAX's (`data_pipelines.process_shard`)."""
  split_id(split)
  process_index, process_count = data_pipelines.process_shard(
      process_index, process_count)
  if (isinstance(batch_size, bool)
      or not isinstance(batch_size, (int, np.integer))
      or batch_size < 1 or batch_size % process_count):
    raise ValueError(
        f"batch_size={batch_size!r} is invalid; expected a positive multiple "
        f"of process_count={process_count}.")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} is invalid; expected >= 0.")
  return StreamArgs(process_index, process_count,
                    int(batch_size) // process_count)


class StreamOptions(NamedTuple):
  """tf.data bounds: small, so tf.data does not starve XLA of the CPU."""
  num_parallel_calls: int = 2  # Parallel calls (and private threads).
  prefetch: int = 2  # Batches prefetched.


def stream_options(config: Any) -> StreamOptions:
  """The config's ``num_parallel_calls`` (>= 1) and ``prefetch`` (>= 0)."""
  d = StreamOptions()
  return StreamOptions(
      int_field(config, "num_parallel_calls", 1, d.num_parallel_calls),
      int_field(config, "prefetch", 0, d.prefetch))


# --------------------------------------------------------------- tf.data


def tf():
  """TensorFlow, kept off accelerators (imported on first use)."""
  data_pipelines.configure_tensorflow()
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        "This dataset is read with TensorFlow, which is not installed: "
        "pip install tensorflow-cpu (the procedural datasets need none)."
    ) from None
  return tensorflow


@functools.cache
def tensorflow_installed() -> bool:
  """Whether TensorFlow can be imported (else `make_dataset` streams with
  `NumpyStream`)."""
  try:
    tf()
  except ImportError:
    return False
  return True


class NumpyStream:
  """`make_dataset`'s batches without TensorFlow, in the same order.

  ``load(step)`` runs on a private pool of ``num_parallel_calls`` threads
  with at most ``num_parallel_calls + prefetch`` batches in flight (the
  NumPy renderers release the GIL in their array work); batches come out in
  step order, so the stream is the one tf.data gives.
  """

  def __init__(self, load: Callable[[int], dict[str, np.ndarray]],
               steps: Iterable[int], options: StreamOptions, context: str):
    self._load = load
    self._steps = steps
    self._options = options
    self._ocjax_context = context

  def map(self, fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
          ) -> "NumpyStream":
    """The same stream with ``fn`` applied to every batch (in the workers)."""
    load = self._load
    return NumpyStream(lambda step: fn(load(step)), self._steps,
                       self._options, self._ocjax_context)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    workers = self._options.num_parallel_calls
    window = max(1, workers + self._options.prefetch)
    steps = iter(self._steps)
    pending = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(
        workers, thread_name_prefix="ocjax-data")
    try:
      for step in steps:
        pending.append(pool.submit(self._load, step))
        if len(pending) >= window:
          break
      while pending:
        batch = pending.popleft().result()
        step = next(steps, None)
        if step is not None:
          pending.append(pool.submit(self._load, step))
        yield batch
    finally:
      for f in pending:
        f.cancel()
      pool.shutdown(wait=False, cancel_futures=True)


def graph_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` for tf.data, traced as written (no AutoGraph rewriting).

  The pipelines use explicit ``tf.cond``; AutoGraph would only slow tracing
  down and rewrite the helpers they call.
  """
  return tf().autograph.experimental.do_not_convert(fn)


def _bound(ds, options: StreamOptions, *, autotune: bool = True):
  """Prefetches ``ds`` and bounds its threads (deterministic order)."""
  tf_ = tf()
  if options.prefetch:
    ds = ds.prefetch(options.prefetch)
  opts = tf_.data.Options()
  opts.deterministic = True
  if not autotune:
    opts.autotune.enabled = False
  opts.threading.private_threadpool_size = options.num_parallel_calls
  opts.threading.max_intra_op_parallelism = 1
  return ds.with_options(opts)


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
  if isinstance(ds, NumpyStream):
    yield from ds
    return
  tf_ = tf()
  context = getattr(ds, "_ocjax_context", "the dataset")
  it = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf_.errors.OpError as e:
      raise DatasetReadError(read_error_message(context, e)) from None
    yield batch


# TensorFlow's wrapping of an exception raised by a `numpy_function`
# (our NumPy loaders and procedural generators): "... transformation with
# iterator: <iterator>: <Type>: <message> Traceback (most recent call
# last): ...".
_PYTHON_ERROR = re.compile(
    r"^(?:.*?transformation with iterator: \S+: )?"
    r"(?P<error>.*?)\s*Traceback \(most recent call last\):(?P<tb>.*)$")


def read_error_message(context: str, error: Exception) -> str:
  """What `iterate` says when reading ``context`` failed with ``error``.

  A Python exception of the dataset's own loader or generator is given as
  its type and message first (it names the field or file at fault), its
  traceback after; anything else TensorFlow raised while reading means a
  file that is corrupt, truncated or not in the published format.
  """
  message = tf_message(error, 4000)
  python = _PYTHON_ERROR.match(message)
  if python:
    return (f"Reading {context} failed: {python['error']}\n(raised by the "
            f"dataset's Python loader; its traceback:{python['tb'][:2000]})")
  return (f"Reading {context} failed: {message[:2000]}\nThe file is "
          "corrupt, truncated or not in the published format; re-download "
          "it (see docs/datasets.md).")


# ------------------------------------------- index stream: NumPy loaders

# First word of the NumPy shuffling seed sequence (datasets may pass their
# own, as sprites does).
SHUFFLE_STREAM = 11


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


def make_dataset(load_rows: Callable[[np.ndarray, np.ndarray],
                                     Mapping[str, np.ndarray]],
                 features: Mapping[str, Feature], *, n: int, split: str,
                 batch_size: int, seed: int, start_step: int,
                 process_index: int | None, process_count: int | None,
                 repeat: bool | None,
                 options: StreamOptions = StreamOptions(),
                 shuffle_stream: int = SHUFFLE_STREAM):
  """This process's batches of NumPy-loaded examples (see the module doc).

  Args:
    load_rows: ``(indices [b], valid [b]) -> {name: array [b, ...]}``; must
      fill invalid rows with zeros and be a pure function of its inputs.
    features: name -> per-example `Feature` of every entry load_rows returns.
    n: number of examples in the split.
    options: batches produced in parallel (also the private thread-pool
      size) and prefetched: `stream_options` of the data config.
    shuffle_stream: first word of the shuffling seed sequence.
    Others: as in ``data_pipelines.get_dataset``.
  """
  sid = split_id(split)
  process_index, process_count, local = check_stream_args(
      split, batch_size, start_step, process_index, process_count)
  if n < 1:
    raise ValueError(f"Split {split!r} has no examples.")
  if repeat is None:
    repeat = split == "train"
  options = StreamOptions(
      check_int(options.num_parallel_calls, "num_parallel_calls", 1),
      check_int(options.prefetch, "prefetch", 0))
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

  if repeat:
    steps = range(start_step, np.iinfo(np.int64).max)
  else:
    steps = range(start_step, -(-n // batch_size))
  if not tensorflow_installed():
    def numpy_batch(step):
      out = _load(*rows(step))
      batch = dict(zip(names, out))
      if not repeat:
        batch["valid"] = out[-1]
      return batch
    return NumpyStream(numpy_batch, steps, options, f"the {split} split")

  tf_ = tf()

  def to_batch(step):
    out = tf_.numpy_function(
        load, [step],
        tuple(tf_.as_dtype(features[k].dtype) for k in names) + (tf_.bool,),
        stateful=False)
    batch = {k: tf_.ensure_shape(v, (local,) + features[k].shape)
             for k, v in zip(names, out)}
    if not repeat:
      batch["valid"] = tf_.ensure_shape(out[-1], [local])
    return batch

  if repeat:
    steps = tf_.data.Dataset.counter(start_step, dtype=tf_.int64)
  else:
    steps = tf_.data.Dataset.range(start_step, -(-n // batch_size))
  ds = steps.map(to_batch, num_parallel_calls=options.num_parallel_calls,
                 deterministic=True)
  return _bound(ds, options, autotune=False)


# ------------------------------------------- index stream: graph loaders

# Second word of the graph streams' shuffling seed, so they never collide
# with other uses of the same seed.
_GRAPH_SHUFFLE_STREAM = 0x5EED


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
    key = tf_.stack([tf_.constant(seed_word(seed, bits=62), tf_.int64),
                     epoch * 65536 + _GRAPH_SHUFFLE_STREAM])
    words = tf_.random.stateless_uniform(
        [2], seed=key, minval=None, maxval=None, dtype=tf_.int64)
    i = tf_.random.experimental.index_shuffle(i, seed=words, max_index=n - 1)
  return tf_.where(valid, i, tf_.zeros_like(i)), valid


def finish(ds, *, local_batch: int, config: Any, context: str):
  """Batches, prefetches and bounds the threads of a per-example dataset."""
  ds = ds.batch(local_batch, drop_remainder=True)
  return attach_context(_bound(ds, stream_options(config)), context)


def indexed_dataset(load: Callable[..., Mapping[str, Any]], *,
                    num_examples: int, batch_size: int, seed: int,
                    start_step: int, process_index: int, process_count: int,
                    repeat: bool, config: Any, context: str):
  """This process's batches of a random-access dataset loaded in the graph.

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
  calls = stream_options(config).num_parallel_calls
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


# ------------------------------------------------- uncompressed TFRecords


def scan_tfrecord(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(offsets, lengths) of the records' payloads in an uncompressed file.

  A TFRecord is ``uint64 length, uint32 crc, bytes[length], uint32 crc``;
  only the 12-byte headers are read. Raises `DatasetFormatError` (a
  ``ValueError``) naming the file and record when a header is cut off or
  points past the end (a truncated file, or not an uncompressed TFRecord).
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


class RecordFile:
  """Random access to the records of one uncompressed TFRecord file (NumPy,
  thread-safe)."""

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
      raise DatasetFormatError(f"{self.path}: short read of record {i}.")
    return data

  def __del__(self):
    if self._fd is not None:
      try:
        os.close(self._fd)
      except OSError:
        pass


def read_record(path, offset, length, file_size):
  """The payload of one record (graph code; all arguments may be tensors)."""
  tf_ = tf()
  ds = tf_.data.FixedLengthRecordDataset(
      path, record_bytes=length, header_bytes=offset,
      footer_bytes=file_size - offset - length)
  return ds.get_single_element()


def write_tfrecord(path: str, records: Iterable[bytes]) -> int:
  """Writes records atomically (temporary file + rename); returns count."""
  tmp = path + ".incomplete"
  count = 0
  with tf().io.TFRecordWriter(tmp) as writer:
    for record in records:
      writer.write(record)
      count += 1
  os.replace(tmp, path)
  return count
