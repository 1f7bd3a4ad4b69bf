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

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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
    if step not in self._latest.all_steps():
      self._latest.save(step, args=args, force=True)
    if self.keep_every > 0 and step % self.keep_every == 0:
      if step not in self._periodic.all_steps():
        self._periodic.save(step, args=args, force=True)

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._periodic.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._latest.close()
    self._periodic.close()

  # ---------------------------------------------------------------- restore
  def restore(self, abstract_state: Any, step: int | None = None):
    """Returns ``(state, meta)`` of ``step`` (default: the latest).

    Raises:
      CheckpointError: when there is no such checkpoint, or it holds a
        different model (names the first mismatching entries).
    """
    steps = self.steps()
    if step is None or step < 0:
      if not steps:
        raise CheckpointError(f"No checkpoint in {self.directory}.")
      step = steps[-1]
    if step not in steps:
      raise CheckpointError(
          f"No checkpoint of step {step} in {self.directory}; available "
          f"steps: {steps or 'none'}.")
    mngr = (self._latest if step in self._latest.all_steps()
            else self._periodic)
    meta = mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
    try:
      try:
        restored = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except (ValueError, KeyError, TypeError):
        restored = self._restore_without_model_state(mngr, step,
                                                     abstract_state)
        if restored is None:
          raise
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"The checkpoint of step {step} in {self.directory} (model "
          f"{meta.get('model')!r}) does not fit the model being restored: "
          f"{_first_line(e)}") from e
    return restored["state"], meta


  @staticmethod
  def _restore_without_model_state(mngr, step: int, abstract_state: Any):
    """Checkpoints written before the train state had ``model_state`` (the
    model's mutable collections) restore into a state whose ``model_state``
    is empty; None where that does not apply."""
    model_state = getattr(abstract_state, "model_state", None)
    if model_state is None or jax.tree.leaves(model_state):
      return None
    fields = {k: getattr(abstract_state, k)
              for k in ("step", "params", "opt_state", "objective_state")}
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fields)))
    return {"state": abstract_state.replace(**restored["state"],
                                            model_state={})}


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:400] if text else type(e).__name__


def abstract_like(tree: Any, sharding=None) -> Any:
  """``ShapeDtypeStruct`` tree of ``tree`` (with ``sharding`` if given)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=sharding or getattr(
                                         x, "sharding", None)), tree)
