"""The trainer: exact resume, checkpoints, failure modes, evaluation, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

import data_pipelines
from experiments import common
from experiments import genesis_v2 as experiment
from ocjax import run as run_lib
from ocjax.eval import runner
from ocjax.eval import sampling
from ocjax.train import checkpoint as ckpt_lib
from ocjax.train import loop
from ocjax.train import mesh as mesh_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(num_steps=4, **overrides):
  c = experiment.get_config("quick,smoke,tiny")
  with c.unlocked():
    c.train.num_steps = num_steps
    c.train.checkpoint_every = 2
    c.train.keep_every = 2
    c.train.image_every = 100
    c.train.log_every = 1
    c.sample.num = 2
    common.set_fields(c, overrides)
  return c


def restore_params(config, workdir, step=None):
  run = run_lib.build(config)
  ck = run.checkpointer(workdir, read_only=True)
  try:
    return run.restore(ck, step=step)
  finally:
    ck.close()


class _Interrupt(Exception):
  pass


def _interrupting(after: int):
  """`get_dataset` whose train stream raises after ``after`` batches."""
  real = data_pipelines.get_dataset

  def get_dataset(config, split, **kw):
    ds = real(config, split, **kw)
    if split != "train":
      return ds

    class Wrapped:
      def as_numpy_iterator(self):
        for i, b in enumerate(ds.as_numpy_iterator()):
          if i == after:
            raise _Interrupt("killed")
          yield b

    return Wrapped()

  return get_dataset


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """Four uninterrupted steps."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  config = tiny_config(4)
  loop.train(config, workdir)
  return config, workdir


def test_resume_after_kill_is_exact(straight_run, tmp_path, monkeypatch):
  config, straight_dir = straight_run
  workdir = str(tmp_path / "killed")
  # Killed while taking the 4th batch: checkpoint of step 2 survives, step 3
  # is lost.
  monkeypatch.setattr(loop.data_pipelines, "get_dataset", _interrupting(3))
  with pytest.raises(_Interrupt):
    loop.train(config, workdir)
  monkeypatch.undo()
  state, meta = restore_params(config, workdir)
  assert int(state.step) == 2 and meta["data_position"] == 2
  # The same command again resumes and finishes.
  loop.train(config, workdir)
  resumed, meta = restore_params(config, workdir)
  straight, _ = restore_params(config, straight_dir)
  assert int(resumed.step) == int(straight.step) == 4
  assert meta["data_position"] == 4
  jax.tree.map(np.testing.assert_array_equal, resumed.params,
               straight.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.opt_state,
               straight.opt_state)
  np.testing.assert_array_equal(resumed.objective_state.beta,
                                straight.objective_state.beta)
  np.testing.assert_array_equal(resumed.objective_state.err_ema,
                                straight.objective_state.err_ema)


def test_run_leaves_its_artifacts(straight_run):
  _, workdir = straight_run
  for path in ("config.json", "metrics.jsonl", "images/reconstruction_latest.png",
               "images/samples_latest.png"):
    assert os.path.exists(os.path.join(workdir, path)), path
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(workdir, "tb")))
  lines = [json.loads(l) for l in open(os.path.join(workdir,
                                                    "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  for key in ("loss", "nll", "kl", "beta", "neg_elbo", "steps_per_sec",
              "learning_rate", "grad_norm"):
    assert key in lines[-1], key
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                             keep_every=2, max_to_keep=3, read_only=True)
  assert ck.steps() == [2, 4]


def test_evaluate_and_sample(straight_run):
  config, workdir = straight_run
  results = runner.evaluate(workdir)
  assert os.path.exists(os.path.join(workdir, "eval", "4.json"))
  for key in ("fixed/attention/ari_fg", "fixed/decoder/ari_fg",
              "flexible/decoder/msc_fg", "flexible/num_slots", "loss_nll"):
    assert np.isfinite(results[key]), key
  assert results["num_images"] == config.eval.num_examples
  table = runner.format_table(results)
  assert "flexible" in table and "ari_fg" in table
  grid = sampling.sample(workdir, num=3)
  assert os.path.exists(grid)
  assert len(os.listdir(os.path.join(workdir, "samples", "4"))) == 3


def test_train_step_compiles_once(tmp_path):
  config = tiny_config(3)
  run = run_lib.build(config)
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh()
  state = run.init_state(mesh)
  train_step = step_lib.make_train_step(
      run.model, run.objective, run.tx, seed=0,
      state_sharding=mesh_lib.replicated(mesh),
      batch_sharding=mesh_lib.batch_sharding(mesh))
  ds = data_pipelines.get_dataset(config.data, "train", batch_size=4, seed=0)
  for batch, _ in zip(ds.as_numpy_iterator(), range(3)):
    batch = mesh_lib.to_global(run_lib.model_inputs(batch),
                               mesh_lib.batch_sharding(mesh))
    state, _ = train_step(state, batch)
  assert train_step._cache_size() == 1  # pylint: disable=protected-access


def test_non_finite_loss_stops_without_saving(tmp_path, monkeypatch):
  config = tiny_config(6)
  workdir = str(tmp_path)
  # A NaN image from the 4th batch on poisons the loss of step 4.
  real = data_pipelines.get_dataset

  def get_dataset(cfg, split, **kw):
    ds = real(cfg, split, **kw)
    if split != "train":
      return ds

    class Wrapped:
      def as_numpy_iterator(self):
        for i, b in enumerate(ds.as_numpy_iterator()):
          if i >= 3:
            b = dict(b, image=np.full_like(b["image"], np.nan))
          yield b

    return Wrapped()

  monkeypatch.setattr(loop.data_pipelines, "get_dataset", get_dataset)
  with pytest.raises(loop.NonFiniteError,
                     match=r"loss.*within steps \(3, 4\].*step 2"):
    loop.train(config, workdir)
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                             keep_every=2, max_to_keep=3, read_only=True)
  assert ck.steps() == [2]


def test_workdir_of_another_model_is_refused(straight_run):
  config, workdir = straight_run
  del config
  other = tiny_config(4)
  with other.unlocked():
    other.model.num_slots = 4
  with pytest.raises(ValueError, match=r"model\.num_slots: 3 -> 4"):
    loop.train(other, workdir)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  config = tiny_config()
  run_lib.check_workdir_config(config, str(tmp_path / "empty"))
  with pytest.raises(ckpt_lib.CheckpointError, match="No checkpoint in"):
    runner.evaluate(str(tmp_path / "empty"))
  with pytest.raises(ckpt_lib.CheckpointError, match="No checkpoint of step 3"):
    restore_params(config, str(tmp_path / "empty2"), step=3)


def test_checkpoint_of_another_architecture_is_a_clear_error(straight_run):
  config, workdir = straight_run
  other = tiny_config()
  with other.unlocked():
    other.model.feat_dim = 32
  with pytest.raises(ckpt_lib.CheckpointError, match="does not fit"):
    restore_params(other, workdir)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "ocjax.main", *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.slow
def test_trainer_runs_the_procedural_default_without_tensorflow(tmp_path):
  """An accelerator machine without TensorFlow trains, evaluates and logs."""
  code = ("import runpy, sys\n"
          "sys.modules['tensorflow'] = None  # import tensorflow fails\n"
          "sys.argv = ['ocjax.main', *sys.argv[1:]]\n"
          "runpy.run_module('ocjax.main', run_name='__main__')\n"
          "assert 'tensorflow' not in sys.modules or "
          "sys.modules['tensorflow'] is None\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-c", code,
       "--config=experiments/genesis_v2.py:quick,smoke,tiny",
       f"--workdir={tmp_path}", "--config.train.num_steps=2",
       "--config.train.log_every=1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "TensorFlow is not installed" in r.stderr
  steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")
           if "loss" in json.loads(l)]
  assert steps == [1, 2]
  assert os.listdir(tmp_path / "checkpoints")
  assert not os.path.exists(tmp_path / "tb")


def test_cli_rejects_unknown_config_field(tmp_path):
  r = _cli("--config=experiments/genesis_v2.py:quick", f"--workdir={tmp_path}",
           "--config.model.num_slot=5")
  assert r.returncode != 0
  assert "num_slot" in r.stderr and "num_slots" in r.stderr  # did you mean


def test_cli_rejects_unknown_preset(tmp_path):
  r = _cli("--config=experiments/genesis_v2.py:quik", f"--workdir={tmp_path}")
  assert r.returncode != 0
  assert "Unknown GENESIS-V2 preset 'quik'" in r.stderr


def test_gradient_accumulation_matches_the_full_batch():
  """Two micro-batches of 2 = one batch of 4, for a deterministic model."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ocjax.models import base  # pylint: disable=g-import-not-at-top
  from ocjax.objectives import geco as geco_lib  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  class TinyAE(base.ObjectCentricModel):
    @nn.compact
    def __call__(self, batch, train=True):
      x = batch["image"]
      b = x.shape[0]
      z = nn.Dense(4)(x.reshape(b, -1))
      recon = nn.sigmoid(nn.Dense(x[0].size)(z)).reshape(x.shape)
      nll = jnp.sum((recon - x) ** 2, axis=(1, 2, 3))
      kl = jnp.sum(z**2, axis=-1)
      return base.ModelOutput(
          recon=recon, masks=jnp.ones((b, 1) + x.shape[1:3] + (1,)),
          components=recon[:, None], losses=dict(nll=nll, kl=kl),
          latents=z[:, None], segmentations={})

  model = TinyAE()
  objective = geco_lib.GecoObjective(geco=geco_lib.Geco(goal=10.0))
  tx = optax.adam(1e-2)
  batch = {"image": jax.random.uniform(jax.random.key(0), (4, 6, 6, 3))}
  params = model.init(jax.random.key(1), batch)["params"]
  out = []
  for accum in (1, 2):
    # The step donates its state: give each run its own copy.
    state = step_lib.create_state({"params": jax.tree.map(jnp.copy, params)},
                                  tx, objective)
    step = step_lib.make_train_step(model, objective, tx, seed=0,
                                    grad_accum_steps=accum)
    for _ in range(3):
      state, metrics = step(state, batch)
    out.append((state, metrics))
  (s1, m1), (s2, m2) = out
  chex.assert_trees_all_close(s2.params, s1.params, rtol=1e-5, atol=1e-6)
  for k in ("loss", "nll", "kl", "beta"):
    assert float(m2[k]) == pytest.approx(float(m1[k]), rel=1e-5), k
  assert float(s2.objective_state.beta) == pytest.approx(
      float(s1.objective_state.beta), rel=1e-6)
  assert float(s2.objective_state.err_ema) == pytest.approx(
      float(s1.objective_state.err_ema), rel=1e-6)


def test_batch_statistics_live_in_the_train_state(tmp_path):
  """A model with BatchNorm: the step updates its running statistics (also
  over micro-batches), checkpoints keep them and evaluation reads them."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ocjax.models import base  # pylint: disable=g-import-not-at-top
  from ocjax.objectives import weighted_sum  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  class TinyBN(base.ObjectCentricModel):
    mutable_collections = ("batch_stats",)

    @nn.compact
    def __call__(self, batch, train=True):
      x = batch["image"]
      h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
      recon = nn.sigmoid(nn.Dense(3)(h))
      b = x.shape[0]
      return base.ModelOutput(
          recon=recon, masks=jnp.ones((b, 1) + x.shape[1:3] + (1,)),
          components=recon[:, None],
          losses=dict(mse=jnp.mean((recon - x) ** 2, axis=(1, 2, 3))),
          latents=jnp.zeros((b, 1, 1)), segmentations={})

  model, objective = TinyBN(), weighted_sum.WeightedSum()
  tx = optax.sgd(0.1)
  batch = {"image": jax.random.uniform(jax.random.key(0), (4, 5, 5, 3))}
  variables = step_lib.init_variables(model, batch, seed=0)
  assert set(variables) == {"params", "batch_stats"}
  means = []
  for accum in (1, 2):
    state = step_lib.create_state(jax.tree.map(jnp.copy, variables), tx,
                                  objective)
    step = step_lib.make_train_step(model, objective, tx, seed=0,
                                    grad_accum_steps=accum)
    state, _ = step(state, batch)
    stats = state.model_state["batch_stats"]["BatchNorm_0"]
    means.append(np.asarray(stats["mean"]))
  # One batch: momentum 0.5 -> half the batch mean.
  want = 0.5 * np.asarray(batch["image"]).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(means[0], want, rtol=1e-5)
  # Two micro-batches update the statistics one after the other.
  rows = [np.asarray(batch["image"])[a::2].mean(axis=(0, 1, 2))
          for a in range(2)]
  np.testing.assert_allclose(means[1], 0.25 * rows[0] + 0.5 * rows[1],
                             rtol=1e-5)
  # Checkpointed with the state, and evaluation reads them.
  from ocjax.train import checkpoint as ck  # pylint: disable=g-import-not-at-top
  checkpointer = ck.Checkpointer(str(tmp_path), keep_every=0, max_to_keep=1)
  checkpointer.save(1, state, {"step": 1, "data_position": 1})
  checkpointer.wait()
  restored, _ = checkpointer.restore(ck.abstract_like(state))
  checkpointer.close()
  np.testing.assert_array_equal(
      restored.model_state["batch_stats"]["BatchNorm_0"]["mean"], means[1])
  out = model.apply(restored.variables(), batch, train=False)
  manual = model.apply(
      {"params": state.params,
       "batch_stats": jax.tree.map(jnp.zeros_like, state.model_state[
           "batch_stats"])}, batch, train=False)
  assert not np.allclose(out.recon, manual.recon)


def test_micro_batches_are_chosen_automatically():
  """grad_accum_steps = 0: micro-batches of 4 images per device on a CPU,
  none elsewhere, none for models with batch statistics."""
  import types  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  auto = types.SimpleNamespace(grad_accum_steps=0, batch_size=32)
  resolve = step_lib.resolve_grad_accum
  assert resolve(auto, 32, num_devices=1, backend="cpu") == 8
  assert resolve(auto, 8, num_devices=1, backend="cpu") == 2
  assert resolve(auto, 4, num_devices=1, backend="cpu") == 1
  assert resolve(auto, 32, num_devices=8, backend="cpu") == 1
  assert resolve(auto, 24, num_devices=1, backend="cpu") == 6
  assert resolve(auto, 32, num_devices=1, backend="gpu") == 1
  with_stats = types.SimpleNamespace(mutable_collections=("batch_stats",))
  assert resolve(auto, 32, num_devices=1, backend="cpu",
                 model=with_stats) == 1
  fixed = types.SimpleNamespace(grad_accum_steps=3, batch_size=6)
  assert resolve(fixed, 6, backend="gpu") == 3


def _scale_model_output(x, w, *, target, **seen):
  """The ModelOutput of a one-parameter model ``x * w`` fitting ``target``,
  with each ``seen`` value (what the call received) as a loss term without
  gradient."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ocjax.models import base  # pylint: disable=g-import-not-at-top
  b = x.shape[0]
  losses = {name: jax.lax.stop_gradient(jnp.full((b,), value, jnp.float32))
            for name, value in seen.items()}
  return base.ModelOutput(
      recon=x * w, masks=jnp.ones((b, 1) + x.shape[1:3] + (1,)),
      components=x[:, None] * w,
      losses={"fit": jnp.mean((x * w - target) ** 2, axis=(1, 2, 3)),
              **losses},
      latents=jnp.zeros((b, 1, 1)), segmentations={})


def test_models_that_use_the_step_receive_it():
  """uses_step: training calls get the optimizer step (before its update),
  the same for every micro-batch; other models get no step argument."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ocjax.models import base  # pylint: disable=g-import-not-at-top
  from ocjax.objectives import weighted_sum  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  class Warmup(base.ObjectCentricModel):
    uses_step = True

    @nn.compact
    def __call__(self, batch, *, train=True, step=None):
      w = self.param("w", nn.initializers.ones, ())
      return _scale_model_output(batch["image"], w, target=batch["image"],
                                 seen_step=-1.0 if step is None else step)

  model, objective, tx = Warmup(), weighted_sum.WeightedSum(), optax.sgd(0.1)
  batch = {"image": jnp.ones((4, 2, 2, 3))}
  for accum in (1, 2):
    state = step_lib.create_state(step_lib.init_variables(model, batch, 0),
                                  tx, objective)
    train_step = step_lib.make_train_step(model, objective, tx, seed=0,
                                          grad_accum_steps=accum)
    seen = []
    for _ in range(3):
      state, metrics = train_step(state, batch)
      seen.append(float(metrics["seen_step"]))
    assert seen == [0.0, 1.0, 2.0], (accum, seen)
  # Evaluation calls: no step.
  out = model.apply(state.variables(), batch, train=False)
  assert float(out.losses["seen_step"][0]) == -1.0


def test_training_stages_compile_one_step_each():
  """A model declaring ``training_stages`` gets ``stage`` (static: the
  number of boundaries <= step, `stage_of`) and each stage traces once;
  without ``stage`` the call is the step-only one."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ocjax.models import base  # pylint: disable=g-import-not-at-top
  from ocjax.objectives import weighted_sum  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  traced = []

  class Staged(base.ObjectCentricModel):
    uses_step = True

    def training_stages(self):
      return (2, 4)

    @nn.compact
    def __call__(self, batch, *, train=True, step=None, stage=None):
      traced.append(stage)
      w = self.param("w", nn.initializers.ones, ())
      return _scale_model_output(batch["image"], w, target=0.5,
                                 seen_stage=-1.0 if stage is None else stage)

  model, objective, tx = Staged(), weighted_sum.WeightedSum(), optax.sgd(0.1)
  assert [step_lib.stage_of(model, s) for s in range(6)] == [0, 0, 1, 1, 2, 2]
  assert step_lib.stage_of(base.ObjectCentricModel(), 5) is None
  batch = {"image": jnp.ones((4, 2, 2, 3))}
  for accum in (1, 2):
    traced.clear()
    state, plain = (step_lib.create_state(
        step_lib.init_variables(model, batch, 0), tx, objective)
                    for _ in range(2))  # separate buffers: both donated
    train_step = step_lib.make_train_step(model, objective, tx, seed=0,
                                          grad_accum_steps=accum)
    seen = []
    for s in range(6):
      state, metrics = train_step(state, batch,
                                  stage=step_lib.stage_of(model, s))
      seen.append(float(metrics["seen_stage"]))
      plain, _ = train_step(plain, batch)
    assert seen == [0, 0, 1, 1, 2, 2], (accum, seen)
    # One compilation per stage, and one without.
    assert sorted(set(traced), key=str) == [0, 1, 2, None]
    assert train_step._cache_size() == 4  # pylint: disable=protected-access
    np.testing.assert_allclose(state.params["w"], plain.params["w"])


@pytest.mark.parametrize("optimizer", ["adam", "adam_keras", "sgd"])
def test_frozen_parameters_skip_the_optimizer(optimizer):
  """``frozen_parameters(stage)``: the part a stage freezes (stop_gradient)
  and its optimizer state stay as they are, and every other value equals
  the full update's (the same model declaring nothing frozen), with and
  without micro-batches, across the stage boundary."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ocjax.models import base  # pylint: disable=g-import-not-at-top
  from ocjax.objectives import weighted_sum  # pylint: disable=g-import-not-at-top
  from ocjax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  class Part(nn.Module):
    @nn.compact
    def __call__(self):
      return jnp.mean(self.param("w", nn.initializers.ones, (3,)))

  class Staged(base.ObjectCentricModel):
    uses_step = True

    def training_stages(self):
      return (2,)

    def frozen_parameters(self, stage=None):
      return ("background",) if stage == 0 else ()

    @nn.compact
    def __call__(self, batch, *, train=True, step=None, stage=None):
      bg = Part(name="background")()
      bg = jax.lax.stop_gradient(bg) if stage == 0 else bg
      w = self.param("w", nn.initializers.ones, ())
      return _scale_model_output(batch["image"], w * bg, target=0.5)

  class NothingFrozen(Staged):
    def frozen_parameters(self, stage=None):
      return ()

  config = ml_collections.ConfigDict(dict(
      name=optimizer, learning_rate=0.1, b1=0.9, b2=0.98, eps=1e-9,
      grad_clip_norm=1.0, warmup_steps=0, decay_steps=0, decay_rate=1.0))
  tx = optimizer_lib.make_optimizer(config)
  objective = weighted_sum.WeightedSum()
  batch = {"image": jnp.linspace(0, 1, 48).reshape(4, 2, 2, 3)}
  for accum in (1, 2):
    runs = {}
    for model in (Staged(), NothingFrozen()):
      state = step_lib.create_state(
          step_lib.init_variables(model, batch, 0), tx, objective)
      train_step = step_lib.make_train_step(model, objective, tx, seed=0,
                                            grad_accum_steps=accum)
      states = []
      for s in range(4):
        state, _ = train_step(state, batch, stage=step_lib.stage_of(model, s))
        states.append(jax.tree.map(np.asarray, state))
      runs[type(model).__name__] = states
    for ours, full in zip(runs["Staged"], runs["NothingFrozen"]):
      chex.assert_trees_all_close(ours, full, rtol=1e-6, atol=1e-7)
    frozen_then = runs["Staged"][1].params["background"]["w"]
    np.testing.assert_array_equal(frozen_then, np.ones(3))  # stage 0
    assert not np.allclose(runs["Staged"][3].params["background"]["w"], 1)
    assert not np.allclose(runs["Staged"][3].params["w"],
                           runs["Staged"][1].params["w"])
  # Left out, not updated: a momentum left in the frozen part's state
  # would move it under the full update; here it stays.
  model = Staged()
  state = step_lib.create_state(step_lib.init_variables(model, batch, 0), tx,
                                objective)
  state = state.replace(opt_state=jax.tree.map(
      lambda x: x + 0.5 if x.dtype == jnp.float32 else x, state.opt_state))
  before = np.asarray(state.params["background"]["w"])
  moved = jax.tree.map(np.asarray, state.opt_state)
  state, _ = step_lib.make_train_step(model, objective, tx, seed=0)(
      state, batch, stage=0)
  np.testing.assert_array_equal(state.params["background"]["w"], before)
  mask = step_lib._frozen_mask(  # pylint: disable=protected-access
      state.params, ("background",))
  state_mask = optax.tree_utils.tree_map_params(
      tx, lambda _, m: m, state.opt_state, mask,
      transform_non_params=lambda v: jax.tree.map(lambda _: False, v))
  for new, old, m in zip(jax.tree.leaves(state.opt_state),
                         jax.tree.leaves(moved), jax.tree.leaves(state_mask)):
    if m:
      np.testing.assert_array_equal(new, old)


def test_frozen_parameters_must_name_params():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  params = {"a": {"w": jnp.ones(2)}}
  tx = optax.sgd(0.1)
  with pytest.raises(ValueError, match=r"\['b'\].*\['a'\]"):
    step_lib.apply_optimizer(tx, params, params, tx.init(params), ("b",))


def test_profile_steps_trace_into_tensorboard(tmp_path):
  config = tiny_config(3, **{"train.profile_steps": "2-3"})
  loop.train(config, str(tmp_path))
  traces = [f for _, _, files in os.walk(tmp_path / "tb" / "plugins")
            for f in files if f.endswith(".xplane.pb")]
  assert len(traces) == 1


@pytest.mark.parametrize("spec", ["0", "5-2", "x", "1-2-3"])
def test_bad_profile_steps_are_named(tmp_path, spec):
  config = tiny_config(3, **{"train.profile_steps": spec})
  with pytest.raises(run_lib.ConfigError, match="profile_steps"):
    loop.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")


class _FakeWandb:
  """Records what the writer sends to W&B (no wandb package, no network)."""

  def __init__(self):
    self.inits, self.logs, self.finished = [], [], 0
    fake = self

    class Run:
      def log(self, data, step):
        fake.logs.append((step, dict(data)))

      def finish(self):
        fake.finished += 1

    class Util:
      @staticmethod
      def generate_id():
        return f"id{len(fake.inits)}"

    self.Run, self.util = Run, Util

  def init(self, **kwargs):
    self.inits.append(kwargs)
    return self.Run()

  @staticmethod
  def Image(array):  # pylint: disable=invalid-name
    return ("image", np.asarray(array).shape)


@pytest.mark.slow
def test_wandb_sink_logs_and_resumes_its_run(tmp_path, monkeypatch):
  fake = _FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  fields = {"train.wandb_project": "ocjax-tests", "train.wandb_mode": "offline",
            "train.image_every": 2}
  loop.train(tiny_config(2, **fields), str(tmp_path))
  (first,) = fake.inits
  assert first["project"] == "ocjax-tests" and first["mode"] == "offline"
  assert first["config"]["model"]["name"] == "genesis_v2"
  assert [s for s, d in fake.logs if "loss" in d] == [1, 2]
  assert any(isinstance(v, tuple) and v[0] == "image"
             for _, d in fake.logs for v in d.values())
  assert fake.finished == 1
  loop.train(tiny_config(3, **fields), str(tmp_path))  # Resumes: same run.
  assert fake.inits[1]["id"] == first["id"]
  assert fake.inits[1]["resume"] == "allow"
  assert [s for s, d in fake.logs if "loss" in d] == [1, 2, 3]


def test_wandb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)
  config = tiny_config(2, **{"train.wandb_project": "p"})
  with pytest.raises(run_lib.ConfigError, match="pip install wandb"):
    loop.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")


def test_bad_wandb_mode_is_named(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", _FakeWandb())
  config = tiny_config(2, **{"train.wandb_project": "p",
                             "train.wandb_mode": "sometimes"})
  with pytest.raises(run_lib.ConfigError, match="wandb_mode"):
    loop.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")
