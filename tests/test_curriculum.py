"""Curriculum training (`ocjax.train.curriculum`): AST-Seg's three phases in
one command that resumes after a kill in any phase."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from ocjax import run as run_lib
from ocjax.convert import ast_seg as ast_convert
from ocjax.train import curriculum
from ocjax.train import loop
from ocjax.train import step as step_lib


class Killed(Exception):
  """Stands in for a kill right after a checkpoint."""


def _config(background_freeze_steps: int = 100):
  """A tiny AST-Seg curriculum: phase 1 (4 steps), then phases 2-3."""
  c = run_lib.load_experiment("experiments/ast_seg.py:paper,tiny,smoke")
  with c.unlocked():  # tiny trains the background jointly (BT)
    c.model.background_training = "curriculum"
    c.model.background_freeze_steps = background_freeze_steps
  return c


def _killed_at(step: int):
  def fn(run, state, at, info):
    del run, state, info
    if at == step:
      raise Killed(step)
  return loop.Hook(1, fn)


def _params(workdir: str):
  _, state = run_lib.restore(workdir)
  return state.step, state.params


def test_phase_config_changes_only_the_declared_fields():
  c = run_lib.load_experiment("experiments/ast_seg.py:shapestacks")
  assert curriculum.phases_to_run(c) == ["background"]
  phase = curriculum.phase_config(c, "background")
  assert "curriculum" not in phase
  assert (phase.model.phase, phase.train.batch_size, phase.train.num_steps,
          phase.optimizer.learning_rate) == ("background", 128, 500_000, 2e-3)
  assert phase.model.num_slots == c.model.num_slots == 6
  assert phase.data.to_dict() == c.data.to_dict()
  # Baseline training (BT) and the quick preset have no phase 1.
  for spec in ("shapestacks,baseline", "quick", "shapestacks,background"):
    assert not curriculum.phases_to_run(
        run_lib.load_experiment(f"experiments/ast_seg.py:{spec}"))
  frozen = run_lib.load_experiment(
      "experiments/ast_seg.py:shapestacks,frozen_background")
  assert curriculum.phases_to_run(frozen) == ["background"]
  # The condition follows the field, also when overridden after the preset.
  quick = run_lib.load_experiment("experiments/ast_seg.py:quick")
  with quick.unlocked():
    quick.model.background_training = "curriculum"
  assert curriculum.phases_to_run(quick) == ["background"]


def test_bad_curriculum_sections_name_the_field():
  c = _config()
  with c.unlocked():
    c.curriculum.background.changes.model.no_such_field = 1
  with pytest.raises(run_lib.ConfigError, match="no_such_field"):
    curriculum.phase_config(c, "background")
  c = _config()
  with c.unlocked():
    c.curriculum.phases = "background,objects"
  with pytest.raises(run_lib.ConfigError, match="curriculum.objects"):
    curriculum.prepare(c, "/nonexistent", lambda *a: None)
  c = _config()
  with c.unlocked():
    c.curriculum.background.when = "model.nope=1"
  with pytest.raises(run_lib.ConfigError, match="model.nope"):
    curriculum.prepare(c, "/nonexistent", lambda *a: None)


@pytest.mark.slow
def test_resumes_after_a_kill_in_every_phase(tmp_path, monkeypatch):
  """Killed in phase 1, between phase 1 and its export, in phase 2 and in
  phase 3; each time the same call resumes; phase 1 is never retrained once
  exported, and the run starts from (and, while frozen, keeps) its weights.
  The trainer runs phases 2 and 3 as the model's two training stages."""
  workdir = str(tmp_path / "run")
  calls = []
  stages = []  # (step, stage) of every training step the loop runs
  make_train_step = step_lib.make_train_step

  def recording(*args, **kwargs):
    train_step = make_train_step(*args, **kwargs)

    def wrapped(state, batch, stage=None):
      stages.append((int(state.step), stage))
      return train_step(state, batch, stage=stage)
    return wrapped

  monkeypatch.setattr(step_lib, "make_train_step", recording)

  def train_killed_at(step):
    def train(config, phase_dir):
      calls.append((os.path.basename(phase_dir), step))
      return loop.train(config, phase_dir, hooks=[_killed_at(step)])
    return train

  def train(config, phase_dir):
    calls.append((os.path.basename(phase_dir), None))
    return loop.train(config, phase_dir)

  config = _config(background_freeze_steps=2)
  phase_dir = os.path.join(workdir, "background")
  export = os.path.join(phase_dir, curriculum.EXPORT_FILE)
  # Phase 1, killed after its step-2 checkpoint.
  with pytest.raises(Killed):
    curriculum.prepare(config, workdir, train_killed_at(2))
  assert not os.path.exists(export)
  assert int(_params(phase_dir)[0]) == 2
  # Killed after phase 1 finished, before its export: the rerun exports.
  def train_then_killed(config, phase_dir):
    train(config, phase_dir)
    raise Killed("before the export")

  with pytest.raises(Killed):
    curriculum.prepare(config, workdir, train_then_killed)
  assert int(_params(phase_dir)[0]) == 4 and not os.path.exists(export)
  final = curriculum.prepare(config, workdir, train)
  assert final.model.background_weights == export
  assert os.path.exists(export)
  assert not [f for f in os.listdir(phase_dir) if ".tmp" in f]
  exported = dict(np.load(export))
  _, phase_params = _params(phase_dir)
  for name, value in ast_convert.background_weights(phase_params).items():
    np.testing.assert_array_equal(exported[name], value)
  assert {stage for _, stage in stages} == {None}  # phase 1: no stages
  stages.clear()
  # Phase 2 (background frozen up to step 2), killed at step 2.
  calls.clear()
  final = curriculum.prepare(config, workdir, train)
  assert calls == []  # phase 1 finished and exported: untouched
  with pytest.raises(Killed):
    loop.train(final, workdir, hooks=[_killed_at(2)])
  _, params = _params(workdir)
  for name, value in ast_convert.background_weights(params).items():
    np.testing.assert_array_equal(exported[name], value)  # frozen
  # Phase 3 (joint), killed at step 3, then finished by the same command.
  with pytest.raises(Killed):
    loop.train(curriculum.prepare(config, workdir, train), workdir,
               hooks=[_killed_at(3)])
  loop.train(curriculum.prepare(config, workdir, train), workdir)
  assert calls == []
  step, params = _params(workdir)
  assert int(step) == config.train.num_steps
  # Every step of phases 2 and 3 (step 2 twice: resumed from its
  # checkpoint) in its stage.
  assert sorted(set(stages)) == [(s, int(s >= 2)) for s in range(int(step))]
  changed = [not np.array_equal(exported[name], value) for name, value in
             ast_convert.background_weights(params).items()]
  assert any(changed)  # phase 3 trains the background too
  assert jax.tree.leaves(params)


@pytest.mark.parametrize("field,value,weights", [
    ("background_training", "joint", ""),  # its `when` does not hold
    ("background_weights", "bg.npz", "bg.npz"),  # the user gave the file
])
def test_phase_skipped(tmp_path, field, value, weights):
  config = _config()
  with config.unlocked():
    config.model[field] = value
  final = curriculum.prepare(config, str(tmp_path),
                             lambda *a: pytest.fail("trained phase 1"))
  assert final.model.background_weights == weights
