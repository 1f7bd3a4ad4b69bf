"""Curriculum training: earlier phases, each a resumable run, before the run.

A config may declare phases that train before it (AST-Seg's background
pretraining, paper 003 Sec. 4.2). Its ``curriculum`` section reads::

    curriculum.phases = "background"     # comma-separated, in order
    curriculum.background.changes = {...}   # the fields the phase changes,
                                            # nested as in the config
    curriculum.background.export = "module:function"   # fn(run_dir, path)
    curriculum.background.export_to = "model.background_weights"
    curriculum.background.when = "model.background_training=curriculum,frozen"

Phase ``P`` trains in ``<workdir>/P`` with the config changed by
``changes`` (and without the ``curriculum`` section); when it has reached
its ``train.num_steps``, ``export(<workdir>/P, <workdir>/P/export.npz)``
writes what the later phases read, and the field ``export_to`` of every
later phase (and of the run itself) is set to that file. A phase whose
``export_to`` field is already set (the user gave the file), or whose
optional ``when`` (``field=value,value``) does not hold, is skipped.
The run itself trains in ``<workdir>``, so evaluation, sampling and
``segment`` see the final model.

Running the same command again resumes where it stopped: a phase whose last
checkpoint is at its ``num_steps`` and whose export exists is not touched, an
unfinished phase resumes from its checkpoint, and an export is written to a
temporary file and renamed, so a kill leaves it absent or whole.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

import ml_collections

from ocjax import run as run_lib
from ocjax.train import writers

EXPORT_FILE = "export.npz"


def phase_names(config) -> list[str]:
  """The phases declared before the run (empty without a curriculum), whether
  or not their ``when`` holds (`phases_to_run`)."""
  if "curriculum" not in config:
    return []
  names = [p.strip() for p in str(config.curriculum.phases).split(",")]
  return [p for p in names if p]


def phases_to_run(config) -> list[str]:
  """The declared phases whose ``when`` holds."""
  return [p for p in phase_names(config) if _applies(config, p)]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in node.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _get(config, field: str) -> Any:
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def _set(config, field: str, value: Any) -> None:
  *path, last = field.split(".")
  node = config
  for part in path:
    node = node[part]
  node[last] = value


def _phase_spec(config, name: str):
  if name not in config.curriculum:
    raise run_lib.ConfigError(
        f"curriculum.phases names {name!r}, but the config has no section "
        f"curriculum.{name} (its changes, export and export_to).")
  spec = config.curriculum[name]
  for field in ("changes", "export", "export_to"):
    if field not in spec:
      raise run_lib.ConfigError(f"curriculum.{name}.{field} is missing.")
  return spec


def _exporter(spec: str) -> Callable[[str, str], Any]:
  module, _, function = str(spec).partition(":")
  try:
    return getattr(importlib.import_module(module), function)
  except (ImportError, AttributeError, ValueError):
    raise run_lib.ConfigError(
        f"curriculum export {spec!r}: expected 'module:function' naming an "
        "importable function.") from None


def _applies(config, name: str) -> bool:
  """Whether phase ``name``'s ``when`` condition holds (true without one)."""
  spec = _phase_spec(config, name)
  when = str(spec.get("when", "") or "")
  if not when:
    return True
  field, sep, values = when.partition("=")
  if not sep:
    raise run_lib.ConfigError(
        f"curriculum.{name}.when={when!r}: expected 'field=value,value'.")
  try:
    value = _get(config, field.strip())
  except (KeyError, AttributeError):
    raise run_lib.ConfigError(
        f"curriculum.{name}.when names {field!r}, which the config does not "
        "have.") from None
  return str(value) in [v.strip() for v in values.split(",")]


def phase_config(config, name: str) -> ml_collections.ConfigDict:
  """The config phase ``name`` trains with: the run's, changed by its
  ``changes``, without the ``curriculum`` section."""
  spec = _phase_spec(config, name)
  phase = ml_collections.ConfigDict(config.to_dict())
  del phase["curriculum"]
  for field, value in _flatten(spec.changes).items():
    try:
      _get(phase, field)
    except (KeyError, AttributeError):
      raise run_lib.ConfigError(
          f"curriculum.{name}.changes sets {field!r}, which the config does "
          "not have.") from None
    _set(phase, field, value)
  phase.lock()
  return phase


def _finished(config, workdir: str) -> bool:
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return False
  checkpointer = run_lib.build(config).checkpointer(workdir, read_only=True)
  try:
    step = checkpointer.latest_step()
  finally:
    checkpointer.close()
  return step is not None and step >= int(config.train.num_steps)


def prepare(config, workdir: str,
            train: Callable[[Any, str], Any]) -> ml_collections.ConfigDict:
  """Trains (or resumes, or skips) every earlier phase with ``train(config,
  phase_dir)`` and returns the run's config with the exports filled in."""
  names = phase_names(config)
  if not names:
    return config
  for name in names:  # every section checked before anything trains
    phase_config(config, name)
    _exporter(_phase_spec(config, name).export)
    _applies(config, name)
  final = ml_collections.ConfigDict(config.to_dict())
  for name in names:
    spec = _phase_spec(config, name)
    if not _applies(final, name):
      writers.log("Curriculum: phase %r skipped (%s does not hold).", name,
                  spec.when)
      continue
    if _get(final, str(spec.export_to)):
      writers.log("Curriculum: phase %r skipped, %s=%s given.", name,
                  spec.export_to, _get(final, str(spec.export_to)))
      continue
    phase = phase_config(final, name)
    phase_dir = os.path.join(os.path.abspath(workdir), name)
    path = os.path.join(phase_dir, EXPORT_FILE)
    if not (_finished(phase, phase_dir) and os.path.exists(path)):
      writers.log("Curriculum: phase %r (%d steps) in %s.", name,
                  int(phase.train.num_steps), phase_dir)
      train(phase, phase_dir)
      if not _finished(phase, phase_dir):  # a time budget ended it early
        raise run_lib.ConfigError(
            f"Curriculum phase {name!r} in {phase_dir} stopped before its "
            f"{int(phase.train.num_steps)} steps (train.time_budget_s?); "
            "run the same command again to continue it.")
      tmp = path[:-len(".npz")] + ".tmp.npz"
      _exporter(spec.export)(phase_dir, tmp)
      os.replace(tmp, path)
      writers.log("Curriculum: phase %r exported to %s.", name, path)
    else:
      writers.log("Curriculum: phase %r done (%s).", name, path)
    _set(final, str(spec.export_to), path)
  final.lock()
  return final
