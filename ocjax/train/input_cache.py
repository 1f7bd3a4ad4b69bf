"""Inputs a training stage computes from frozen parameters, computed once.

A model may declare, per training stage, batch entries that its training
call computes from each example alone with parameters frozen at that stage
(``cached_inputs(stage)`` and ``compute_cached_inputs``, protocol:
`ocjax.models.base`), e.g. AST-Seg's background ``L_0`` in phase 2: the
frozen autoencoder's output, which the official code writes to disk once
and reads back. Computing them at every visit of an example repeats the
same arithmetic once per epoch; `InputCache` computes them once per example
of the (finite) training split and reads them back:

* When a stage that declares cached inputs starts (or resumes), the cache
  is built in ``<workdir>/input_cache/stage<i>/`` by one ordered pass over
  the training split (``{name}.npy`` per entry, ``[N, ...]``, and the
  examples' keys), unless one built with the same frozen parameters, data
  config and names is there. A build is written to a temporary folder and
  renamed when complete: a killed build starts again, a complete one is
  reused after a resume (even where a new build would no longer pay, so a
  resumed run reads what the uninterrupted one read).
* Each training batch is looked up by the digest of each row's model
  inputs (so no pipeline has to carry example indices): when every row is
  cached the entries are added to the batch, and the model reads them
  instead of computing them; otherwise the batch goes on unchanged (the
  model computes them), and after 20 such batches, more than hits, the
  stage stops looking up. A dataset's own entry of that name wins.
* It builds only when it pays: when the stage's remaining steps read more
  examples than the split has (``steps * batch > N``), the cache fits in
  ``train.cache_inputs_max_gb`` and on the disk (1 GiB to spare), and
  there is one process. It is off with
  ``train.cache_inputs=False``; the folder is deleted when its stage ends
  or the run completes, and rebuilt when the frozen parameters, the model
  or data config or the model's source file differ. A build is not
  training time (``time_budget_s`` does not count it).
* Values are those of the model's own computation, batched differently:
  equal up to float rounding, not bit for bit.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import time
from typing import Any, Mapping

import jax
import numpy as np

import data_pipelines
from ocjax import run as run_lib
from ocjax.train import mesh as mesh_lib
from ocjax.train import step as step_lib
from ocjax.train import writers

CACHE_DIR = "input_cache"
# Left free on the disk beside a new cache.
_DISK_MARGIN = 2**30
# Misses (more than hits) after which a stage stops looking batches up.
_GIVE_UP_MISSES = 20
_KEYS = "keys.npy"
_META = "meta.json"


def row_digests(inputs: Mapping[str, np.ndarray],
                skip: tuple[str, ...] = ()) -> list[bytes]:
  """One 16-byte digest per row of the model inputs (names sorted, dtypes
  and shapes included), ``skip`` left out."""
  names = sorted(k for k in inputs if k not in skip)
  arrays = [np.ascontiguousarray(inputs[k]) for k in names]
  rows = arrays[0].shape[0]
  out = []
  for i in range(rows):
    h = hashlib.blake2b(digest_size=16)
    for name, a in zip(names, arrays):
      h.update(f"{name}:{a.dtype.str}:{a.shape[1:]};".encode())
      h.update(a[i].tobytes())
    out.append(h.digest())
  return out


def params_digest(params: Mapping[str, Any], names: tuple[str, ...]) -> str:
  """Digest of the top-level ``params`` entries ``names`` (their values)."""
  h = hashlib.blake2b(digest_size=16)
  for name in sorted(names):
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(params[name]))
    for path, leaf in leaves:
      a = np.ascontiguousarray(leaf)
      h.update(f"{name}{jax.tree_util.keystr(path)}:{a.dtype.str}:"
               f"{a.shape};".encode())
      h.update(a.tobytes())
  return h.hexdigest()


class InputCache:
  """The trainer's cache of a model's ``cached_inputs`` (module doc)."""

  def __init__(self, run: run_lib.Run, workdir: str, *, batch_sharding):
    self.run = run
    self.root = os.path.join(workdir, CACHE_DIR)
    self.batch_sharding = batch_sharding
    self.stage: Any = object()  # no stage prepared yet
    self.names: tuple[str, ...] = ()
    self.arrays: dict[str, np.ndarray] = {}
    self.index: dict[bytes, int] = {}
    self.hits = 0
    self.misses = 0

  @property
  def active(self) -> bool:
    return bool(self.index)

  def _stage_dir(self, stage) -> str:
    return os.path.join(self.root, f"stage{stage}")

  # ------------------------------------------------------------- stages
  def prepare(self, state, stage: int | None, step: int) -> None:
    """Makes the cache of ``stage`` (entered or resumed at ``step``) ready,
    or none; deletes the caches of other stages."""
    if stage == self.stage:
      return
    self.stage, self.names, self.arrays, self.index = stage, (), {}, {}
    self.hits = self.misses = 0  # counted per stage
    model = self.run.model
    declared = getattr(model, "cached_inputs", None)
    names = tuple(declared(stage)) if declared is not None else ()
    self._remove_others(f"stage{stage}" if names else None)
    if not names:
      return
    why = self._why_not_at_all()
    if why:
      writers.log("Not caching %s (stage %s): %s.", ", ".join(names), stage,
                  why)
      return
    meta = self._meta(state, stage, names)
    folder = self._stage_dir(stage)
    if os.path.isdir(folder) and _read_meta(folder) == meta:
      # Read back even where a new build would not pay: a resumed run
      # reads what the uninterrupted one read.
      writers.log("Reading the cached %s of stage %s from %s.",
                  ", ".join(names), stage, folder)
    else:
      if os.path.isdir(folder):
        writers.log("The cache in %s was built with other frozen parameters, "
                    "data or model code; removing it.", folder)
        shutil.rmtree(folder)
      why = self._why_not(state, stage, step, names)
      if why:
        writers.log("Not caching %s (stage %s): %s.", ", ".join(names),
                    stage, why)
        return
      try:
        self._build(state, stage, names, meta, folder)
      except OSError as e:  # e.g. a full disk: train on without it
        shutil.rmtree(folder + ".tmp", ignore_errors=True)
        writers.log("Could not write the cache in %s (%s); the model "
                    "computes %s at every step.", folder, e,
                    ", ".join(names))
        return
    keys = np.load(os.path.join(folder, _KEYS))
    self.arrays = {n: np.load(os.path.join(folder, f"{n}.npy"), mmap_mode="r")
                   for n in names}
    self.index = {}
    for i, key in enumerate(keys):
      self.index.setdefault(key.tobytes(), i)
    self.names = names

  def _why_not_at_all(self) -> str:
    """Why this run uses no cache at all; "" if it may."""
    if not self.run.config.train.get("cache_inputs", True):
      return "train.cache_inputs is False"
    if jax.process_count() > 1:
      return "the cache is built by a single process"
    return ""

  def _why_not(self, state, stage, step: int, names) -> str:
    """Why a new cache of ``stage`` would not pay (or does not fit); "" if
    it would."""
    config, model = self.run.config, self.run.model
    tc = config.train
    n = data_pipelines.num_examples(config.data, "train")
    boundaries = tuple(getattr(model, "training_stages", tuple)())
    later = [b for b in boundaries if b > step]
    end = min(later + [int(tc.num_steps)])
    reads = (end - step) * int(tc.batch_size)
    if reads <= n:
      return (f"the stage's {end - step} remaining steps read {reads} "
              f"examples, no more than the {n} of the training split")
    size = n * sum(int(np.prod(s.shape[1:])) * s.dtype.itemsize
                   for s in self._shapes(state, names, stage).values())
    limit = float(tc.get("cache_inputs_max_gb", 16.0)) * 2**30
    if size > limit:
      return (f"it would take {size / 2**30:.1f} GiB, more than "
              f"train.cache_inputs_max_gb={tc.get('cache_inputs_max_gb')}")
    # Writing through a memory map to a full disk kills the process.
    free = shutil.disk_usage(os.path.dirname(self.root)).free
    if size + _DISK_MARGIN > free:
      return (f"it would take {size / 2**30:.2f} GiB and the disk of "
              f"{self.root} has {free / 2**30:.2f} GiB free")
    return ""

  def _shapes(self, state, names, stage) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and storage dtype of each entry for a batch of one (float32
    for dtypes NumPy cannot save, e.g. bfloat16: exact, and the model casts
    back)."""
    model = self.run.model
    out = jax.eval_shape(self._compute_fn(stage), state.variables(),
                         model.dummy_batch(1))
    if sorted(out) != sorted(names):
      raise ValueError(
          f"{type(model).__name__}.compute_cached_inputs(stage={stage}) "
          f"returned {sorted(out)}; cached_inputs({stage}) declares "
          f"{sorted(names)}.")
    return {k: jax.ShapeDtypeStruct(v.shape, _storage_dtype(v.dtype))
            for k, v in out.items()}

  def _compute_fn(self, stage):
    model = self.run.model

    def compute(variables, batch):
      return model.apply(variables, batch, stage=stage,
                         method=type(model).compute_cached_inputs)

    return compute

  def _meta(self, state, stage, names) -> dict[str, Any]:
    config = self.run.config
    frozen = step_lib.frozen_of(self.run.model, stage)
    return {
        "stage": stage, "names": list(names),
        "num_examples": data_pipelines.num_examples(config.data, "train"),
        "frozen": list(frozen),
        "frozen_params": params_digest(state.params, frozen),
        "model": json.loads(config.model.to_json_best_effort(sort_keys=True)),
        "data": json.loads(config.data.to_json_best_effort(sort_keys=True)),
        "seed": int(config.seed),
        "model_code": _source_digest(type(self.run.model))}

  def _build(self, state, stage, names, meta, folder) -> None:
    """One ordered pass over the training split into ``folder``."""
    config = self.run.config
    n = meta["num_examples"]
    batch_size = int(config.train.batch_size)
    shapes = self._shapes(state, names, stage)
    tmp = folder + ".tmp"
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)
    os.makedirs(tmp)
    out = {name: np.lib.format.open_memmap(
        os.path.join(tmp, f"{name}.npy"), mode="w+", dtype=s.dtype,
        shape=(n,) + tuple(s.shape[1:])) for name, s in shapes.items()}
    keys = np.zeros((n, 16), np.uint8)
    compute = self.run.jit(self._compute_fn(stage))
    variables = state.variables()
    ds = data_pipelines.get_dataset(config.data, "train",
                                    batch_size=batch_size, seed=config.seed,
                                    repeat=False)
    writers.log("Caching %s of stage %s for the %d training examples in %s.",
                ", ".join(names), stage, n, folder)
    t0 = time.time()
    position = 0  # examples written
    for batch in data_pipelines.iterate(ds):
      valid = np.asarray(batch["valid"], bool)
      inputs = run_lib.model_inputs(batch)
      rows = np.flatnonzero(valid)  # the leading rows (one process)
      if position + rows.size > n:
        raise RuntimeError(f"The training split gave more than its {n} "
                           "examples in its ordered pass.")
      values = jax.device_get(compute(
          variables, mesh_lib.to_global(inputs, self.batch_sharding)))
      at = position + np.arange(rows.size)
      digests = row_digests(inputs, skip=names)
      keys[at] = np.frombuffer(b"".join(digests[i] for i in rows),
                               np.uint8).reshape(-1, 16)
      for name in names:
        out[name][at] = np.asarray(values[name])[rows].astype(
            out[name].dtype)
      position += rows.size
    if position != n:
      raise RuntimeError(f"The training split gave {position} examples in "
                         f"its ordered pass; it has {n}.")
    for a in out.values():
      a.flush()
    del out
    np.save(os.path.join(tmp, _KEYS), keys)
    with open(os.path.join(tmp, _META), "w") as f:
      json.dump(meta, f, sort_keys=True)
    os.replace(tmp, folder)
    size = sum(os.path.getsize(os.path.join(folder, f))
               for f in os.listdir(folder))
    writers.log("Cached %s of %d examples (%.1f MiB) in %.1f s.",
                ", ".join(names), n, size / 2**20, time.time() - t0)

  def _remove_others(self, keep: str | None) -> None:
    """Deletes the caches (and unfinished builds) but the folder ``keep``
    (None: all)."""
    if not os.path.isdir(self.root):
      return
    for entry in os.listdir(self.root):
      if entry == keep:
        continue
      shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)
    if keep is None:
      shutil.rmtree(self.root, ignore_errors=True)

  def finish(self) -> None:
    """The run is complete: deletes every cache (a longer run builds it
    again)."""
    self.index, self.arrays = {}, {}
    self._remove_others(None)

  # ------------------------------------------------------------- batches
  def fill(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` (host model inputs) with the cached entries added when
    every row is cached; unchanged otherwise."""
    if not self.index or any(n in inputs for n in self.names):
      return inputs  # (a dataset's own entries win)
    rows = [self.index.get(d) for d in row_digests(inputs, skip=self.names)]
    if any(r is None for r in rows):
      self.misses += 1
      if self.misses == 1:
        writers.log("A training batch has examples that the cache's pass "
                    "did not see (random augmentation?): the model computes "
                    "%s itself for such batches.", ", ".join(self.names))
      if self.misses >= _GIVE_UP_MISSES and self.misses > self.hits:
        writers.log("%d of %d training batches missed the cache: not "
                    "looking batches up any more in this stage.",
                    self.misses, self.misses + self.hits)
        self.index, self.arrays = {}, {}
      return inputs
    self.hits += 1
    rows = np.asarray(rows)
    return dict(inputs, **{n: np.asarray(a[rows]) for n, a in
                           self.arrays.items()})


def _storage_dtype(dtype) -> np.dtype:
  dtype = np.dtype(dtype)
  return dtype if dtype.isbuiltin == 1 else np.dtype(np.float32)


def _source_digest(cls) -> str:
  """Digest of the file that defines ``cls`` (a cache built by other model
  code is not reused)."""
  try:
    with open(inspect.getsourcefile(cls), "rb") as f:
      return hashlib.blake2b(f.read(), digest_size=16).hexdigest()
  except (OSError, TypeError):
    return ""


def _read_meta(folder: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(folder, _META)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
