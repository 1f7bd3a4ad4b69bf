"""Checkpoints: the latest one plus periodic ones, with orbax.

``<workdir>/checkpoints/latest/<step>`` holds only the most recent checkpoint
(overwritten as training goes), ``<workdir>/checkpoints/periodic/<step>`` keeps
every ``keep_every``-th step, at most ``max_to_keep`` of them. Each checkpoint
holds the whole `TrainState` (parameters, optimizer and objective state, step)
and a JSON record with the data position and the model's name. Orbax writes
to a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoints intact. Restoring goes against an
abstract state carrying the current shardings, so a checkpoint written on 8
devices restores on 1 and vice versa.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import logging as std_logging

from absl import logging


class _ReadOnlyNoise(std_logging.Filter):
  """Drops orbax's three notices that a read-only manager is read-only."""

  PATTERNS = ("read_only=True, setting", "Given directory is read only")

  def filter(self, record) -> bool:
    message = record.getMessage()
    return not any(p in message for p in self.PATTERNS)


std_logging.getLogger("absl").addFilter(_ReadOnlyNoise())


class CheckpointError(RuntimeError):
  """A checkpoint is missing or does not fit the model being restored."""


class Checkpointer:
  """Latest + periodic checkpoints of one run."""

  def __init__(self, directory: str, *, keep_every: int, max_to_keep: int,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.keep_every = keep_every

    def manager(name, keep):
      return ocp.CheckpointManager(
          os.path.join(self.directory, name),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=keep, create=not read_only, read_only=read_only,
              enable_async_checkpointing=True))

    self._latest = manager("latest", 1)
    self._periodic = manager("periodic", max(max_to_keep, 1))

  # ------------------------------------------------------------------ query
  def steps(self) -> list[int]:
    """Every restorable step, ascending."""
    return sorted(set(self._latest.all_steps())
                  | set(self._periodic.all_steps()))

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  # ------------------------------------------------------------------- save
  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves ``state`` as the latest checkpoint (and a periodic one if due)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    # One async save at a time: two managers saving together start the same
    # named barrier twice in a multi-process run (orbax refuses: "Barrier
    # ... set_value_start is already ongoing").
    if step not in self._latest.all_steps():
      self._periodic.wait_until_finished()
      self._latest.save(step, args=args, force=True)
    if self.keep_every > 0 and step % self.keep_every == 0:
      if step not in self._periodic.all_steps():
        self._latest.wait_until_finished()
        self._periodic.save(step, args=args, force=True)

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._periodic.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._latest.close()
    self._periodic.close()

  # ---------------------------------------------------------------- restore
  def _copies(self, step: int | None):
    """``(step, manager)`` pairs to try, newest first (a step may have a
    copy in ``latest/`` and one in ``periodic/``)."""
    pairs = [(s, m) for m in (self._latest, self._periodic)
             for s in m.all_steps() if step is None or s == step]
    return sorted(pairs, key=lambda p: -p[0])

  def restore(self, abstract_state: Any, step: int | None = None):
    """Returns ``(state, meta)`` of ``step`` (default: the newest).

    A damaged checkpoint (truncated or missing files) is skipped with a
    one-line warning naming the file, for the newest intact one (or the
    other copy of the same step).

    Raises:
      CheckpointError: no such checkpoint; every copy is damaged (each named);
        or the checkpoint holds a different model (`CheckpointMismatchError`,
        naming the entries that differ).
    """
    steps = self.steps()
    if step is not None and step < 0:
      step = None
    if step is None and not steps:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    if step is not None and step not in steps:
      raise CheckpointError(
          f"No checkpoint of step {step} in {self.directory}; available "
          f"steps: {steps or 'none'}.")
    damaged: list[CheckpointDamagedError] = []
    for s, mngr in self._copies(step):
      try:
        state, meta = self._restore_copy(mngr, s, abstract_state)
      except CheckpointDamagedError as e:
        damaged.append(e)
        continue
      for e in damaged:
        logging.warning("Skipping a damaged checkpoint: %s", e)
        print(f"warning: skipping a damaged checkpoint: {e}; using the "
              f"checkpoint of step {s} ({os.path.join(mngr.directory, str(s))}"
              ").", file=sys.stderr, flush=True)
      return state, meta
    raise CheckpointError(
        f"Every checkpoint{'' if step is None else f' of step {step}'} in "
        f"{self.directory} is damaged: " + "; ".join(str(e) for e in damaged)
        + ". Nothing was restored (and nothing overwritten); restore the "
        "files or start a new --workdir.")

  def _restore_copy(self, mngr, step: int, abstract_state: Any):
    _quiet_abandoned_reads()
    where = os.path.join(str(mngr.directory), str(step))
    meta_file = os.path.join(where, "meta", "metadata")
    try:
      with open(meta_file, encoding="utf-8") as f:
        json.load(f)
      meta = mngr.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except (OSError, ValueError) as e:
      raise CheckpointDamagedError(
          f"{meta_file} is unreadable ({_first_line(e)})") from e
    saved = _saved_leaves(os.path.join(where, "state"))
    expected = _leaf_shapes(abstract_state)
    legacy = ("model_state",) not in saved and not any(
        k[0] == "model_state" for k in expected)
    if legacy:  # Written before the train state had model_state.
      expected = {k: v for k, v in expected.items() if k[0] != "model_state"}
    saved = {k: v for k, v in saved.items() if v is not None}
    _check_fits(saved, expected, where, meta)
    try:
      if legacy:
        fields = {k: getattr(abstract_state, k)
                  for k in ("step", "params", "opt_state", "objective_state")}
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(fields)))["state"]
        state = abstract_state.replace(**restored, model_state={})
      else:
        state = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointDamagedError(
          f"the array data of {os.path.join(where, 'state')} is unreadable "
          f"({_array_name(e) or _first_line(e)})") from e
    return state, meta


def _from_orbax_reads(unraisable) -> bool:
  """Whether an unraisable exception is one of orbax's abandoned reads."""
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None and "orbax" in code.co_filename:
    return True
  exc = unraisable.exc_value
  return (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
          and unraisable.object is None)


class _QuietAbandonedReads:
  """``sys.unraisablehook`` without orbax's abandoned reads.

  When one array of a damaged checkpoint fails to read, orbax abandons the
  reads still in flight; each holds the same failure, and Python prints them
  (one traceback each, a hundred for one checkpoint) whenever they are
  collected, long after the damage was reported once and the checkpoint
  skipped. Everything else goes to the previous hook.
  """

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable):
    if not _from_orbax_reads(unraisable):
      self.previous(unraisable)


def _quiet_abandoned_reads() -> None:
  if not isinstance(sys.unraisablehook, _QuietAbandonedReads):
    sys.unraisablehook = _QuietAbandonedReads(sys.unraisablehook)
    # The reads that had not started yet, collected as never awaited.
    warnings.filterwarnings(
        "ignore", category=RuntimeWarning,
        message="coroutine '_read_array_index_and_device_put' was never "
        "awaited")


class CheckpointMismatchError(CheckpointError):
  """A checkpoint holds another model (or another configuration of it)."""


class CheckpointDamagedError(CheckpointError):
  """A checkpoint's files are truncated, missing or unreadable."""


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {tuple(_key_name(k) for k in path): tuple(np.shape(x))
          for path, x in leaves}


def _saved_leaves(state_dir: str):
  """``{key path: shape (None for an empty node)}`` of a saved state."""
  path = os.path.join(state_dir, "_METADATA")
  try:
    with open(path, encoding="utf-8") as f:
      tree = json.load(f)["tree_metadata"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    why = "no tree_metadata" if isinstance(e, KeyError) else _first_line(e)
    raise CheckpointDamagedError(f"{path} is unreadable ({why})") from e
  # The global shapes come from orbax's metadata: _METADATA's write_shape is
  # the slice one writer wrote (replicas of a multi-process run split a
  # replicated array between them).
  try:
    tree_meta = ocp.StandardCheckpointHandler().metadata(
        pathlib.Path(state_dir))
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        getattr(tree_meta, "tree", tree_meta))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointDamagedError(
        f"the metadata of {state_dir} is unreadable ({_first_line(e)})") from e
  shapes = {tuple(_key_name(k) for k in path): tuple(leaf.shape)
            for path, leaf in leaves if hasattr(leaf, "shape")}
  out = {}
  for entry in tree.values():
    key = tuple(str(k["key"]) for k in entry["key_metadata"])
    value = entry.get("value_metadata", {})
    out[key] = (None if value.get("skip_deserialize")
                else shapes.get(key, tuple(value.get("write_shape", ()))))
  return out


def _check_fits(saved, expected, where: str, meta: dict[str, Any]) -> None:
  missing = sorted(set(expected) - set(saved))
  unexpected = sorted(set(saved) - set(expected))
  shapes = sorted(k for k in set(saved) & set(expected)
                  if saved[k] != expected[k])
  if not (missing or unexpected or shapes):
    return
  name = lambda k: "/".join(k)
  parts = []
  if missing:
    parts.append("missing " + ", ".join(map(name, missing[:4])))
  if unexpected:
    parts.append("unexpected " + ", ".join(map(name, unexpected[:4])))
  for k in shapes[:4]:
    parts.append(f"{name(k)}: saved {list(saved[k])}, this model "
                 f"{list(expected[k])}")
  raise CheckpointMismatchError(
      f"The checkpoint {where} (model {meta.get('model')!r}) does not fit "
      f"the model being restored: {'; '.join(parts)}.")


def _array_name(e: Exception) -> str:
  """The array a TensorStore read failed on, from its message ('' if none)."""
  import re  # pylint: disable=g-import-not-at-top
  # The array's own path is the relative one ('params.conv.kernel/').
  names = [p for p in re.findall(r"'path': '([^']+)'", str(e))
           if not p.startswith("/")]
  return f"array {names[-1].rstrip('/')}" if names else ""


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:400] if text else type(e).__name__


def abstract_like(tree: Any, sharding=None) -> Any:
  """``ShapeDtypeStruct`` tree of ``tree`` (with ``sharding`` if given)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=sharding or getattr(
                                         x, "sharding", None)), tree)
