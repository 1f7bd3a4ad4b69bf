"""`ocjax.train.input_cache`: inputs a training stage computes from frozen
parameters (AST-Seg's phase-2 background), computed once per example and read
back, with the same training values as computing them at every step."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import data_pipelines
from ocjax import run as run_lib
from ocjax.train import input_cache
from ocjax.train import loop
from ocjax.train import mesh as mesh_lib
from ocjax.train import step as step_lib


def _config(mode: str = "frozen", *, num_train: int = 8, num_steps: int = 6,
            freeze: int = 100):
  """Tiny AST-Seg on 8 procedural examples, batch 4: 2 batches an epoch."""
  c = run_lib.load_experiment("experiments/ast_seg.py:paper,tiny,smoke")
  with c.unlocked():
    c.model.background_training = mode
    c.model.background_freeze_steps = freeze
    c.data.num_train = num_train
    c.train.num_steps = num_steps
    c.train.image_every = 1000
  return c


def _close(a, b, rtol=2e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("mode,stage", [("frozen", None),
                                        ("curriculum", 0)])
def test_a_step_with_cached_inputs_equals_one_without(mode, stage):
  config = _config(mode)
  run = run_lib.build(config)
  model = run.model
  assert model.cached_inputs(stage) == ("background",)
  mesh = mesh_lib.make_mesh()
  sharding = mesh_lib.batch_sharding(mesh)
  batch = loop.example_batch(config, "train", size=4)
  inputs = run_lib.model_inputs(batch)
  state = run.init_state(mesh)
  cached = jax.device_get(model.apply(
      state.variables(), inputs, stage=stage,
      method=type(model).compute_cached_inputs))
  assert set(cached) == {"background"}
  assert cached["background"].shape == inputs["image"].shape
  train_step = step_lib.make_train_step(
      model, run.objective, run.tx, seed=config.seed,
      state_sharding=mesh_lib.replicated(mesh), batch_sharding=sharding)
  results = []
  for extra in ({}, cached):
    s = run.init_state(mesh)
    for _ in range(2):
      s, metrics = train_step(s, mesh_lib.to_global(dict(inputs, **extra),
                                                    sharding), stage=stage)
    results.append(jax.device_get((s.params, metrics)))
  _close(results[0], results[1])
  # Phase 3 and calls without a stage compute the background with its
  # gradient: nothing to cache.
  if mode == "curriculum":
    assert model.cached_inputs(1) == () and model.cached_inputs(None) == ()


def test_batches_are_filled_only_when_every_row_is_cached(tmp_path):
  config = _config("frozen")
  run = run_lib.build(config)
  mesh = mesh_lib.make_mesh()
  cache = input_cache.InputCache(run, str(tmp_path),
                                 batch_sharding=mesh_lib.batch_sharding(mesh))
  state = run.init_state(mesh)
  cache.prepare(state, None, 0)  # 6 steps of 4 read 24 > 8 examples
  assert cache.active
  folder = tmp_path / input_cache.CACHE_DIR / "stageNone"
  assert sorted(os.listdir(folder)) == ["background.npy", "keys.npy",
                                        "meta.json"]
  ds = data_pipelines.get_dataset(config.data, "train", batch_size=4,
                                  seed=config.seed)
  batches = data_pipelines.iterate(ds)
  compute = jax.jit(lambda v, b: run.model.apply(
      v, b, stage=None, method=type(run.model).compute_cached_inputs))
  for _ in range(3):  # past the end of the first epoch
    inputs = run_lib.model_inputs(next(batches))
    filled = cache.fill(inputs)
    want = jax.device_get(compute(state.variables(), inputs))["background"]
    np.testing.assert_allclose(filled["background"], want, rtol=1e-5,
                               atol=1e-6)
  # A dataset's own entry wins.
  own = dict(inputs, background=np.zeros_like(filled["background"]))
  assert cache.fill(own) is own
  # A row the ordered pass did not see: the batch goes on unchanged ...
  inputs = dict(inputs, image=inputs["image"].copy())
  inputs["image"][0, 0, 0, 0] += 0.5
  assert "background" not in cache.fill(inputs)
  assert (cache.hits, cache.misses) == (3, 1)
  # ... and after 20 misses, more than hits, the stage stops looking up.
  for _ in range(19):
    cache.fill(inputs)
  assert not cache.active and cache.misses == 20
  # A complete run deletes its caches.
  cache.finish()
  assert not os.path.exists(tmp_path / input_cache.CACHE_DIR)


def test_a_bfloat16_model_caches_float32(tmp_path):
  config = _config("frozen")
  with config.unlocked():
    config.model.dtype = "bfloat16"
  run = run_lib.build(config)
  mesh = mesh_lib.make_mesh()
  cache = input_cache.InputCache(
      run, str(tmp_path), batch_sharding=mesh_lib.batch_sharding(mesh))
  state = run.init_state(mesh)
  cache.prepare(state, None, 0)
  # The first batch of the ordered pass, computed as the pass computes it.
  ds = data_pipelines.get_dataset(config.data, "train", batch_size=4,
                                  seed=config.seed, repeat=False)
  inputs = run_lib.model_inputs(next(data_pipelines.iterate(ds)))
  filled = cache.fill(inputs)["background"]
  assert filled.dtype == np.float32
  compute = run.jit(lambda v, b: run.model.apply(
      v, b, stage=None, method=type(run.model).compute_cached_inputs))
  want = jax.device_get(compute(state.variables(), inputs))["background"]
  assert want.dtype == jax.numpy.bfloat16
  np.testing.assert_array_equal(filled, want.astype(np.float32))


def test_built_only_when_it_pays_and_rebuilt_for_other_parameters(
    tmp_path, monkeypatch):
  builds = []
  build = input_cache.InputCache._build  # pylint: disable=protected-access

  def counting(self, *args):
    builds.append(args[1])
    return build(self, *args)

  monkeypatch.setattr(input_cache.InputCache, "_build", counting)
  mesh = mesh_lib.make_mesh()
  sharding = mesh_lib.batch_sharding(mesh)
  # 2 steps of 4 read no more than the 8 examples: nothing to gain.
  run = run_lib.build(_config("frozen", num_steps=2))
  cache = input_cache.InputCache(run, str(tmp_path), batch_sharding=sharding)
  state = run.init_state(mesh)
  cache.prepare(state, None, 0)
  assert not cache.active and not builds
  # Off by config.
  config = _config("frozen")
  with config.unlocked():
    config.train.cache_inputs = False
  cache = input_cache.InputCache(run_lib.build(config), str(tmp_path),
                                 batch_sharding=sharding)
  cache.prepare(state, None, 0)
  assert not cache.active and not builds
  # Built once, read back by a new cache (a resumed run) ...
  run = run_lib.build(_config("frozen"))
  input_cache.InputCache(run, str(tmp_path),
                         batch_sharding=sharding).prepare(state, None, 0)
  again = input_cache.InputCache(run, str(tmp_path), batch_sharding=sharding)
  again.prepare(state, None, 0)
  assert again.active and builds == [None]
  # ... rebuilt when the frozen parameters differ.
  params = dict(state.params)
  params["background_ae"] = jax.tree.map(lambda p: p * 1.5,
                                         params["background_ae"])
  other = state.replace(params=params)
  cache = input_cache.InputCache(run, str(tmp_path), batch_sharding=sharding)
  cache.prepare(other, None, 0)
  assert cache.active and builds == [None, None]
  # A complete cache is read back even where a new one would not pay (a
  # run resumed late in its stage reads what it read before).
  late = input_cache.InputCache(run_lib.build(_config("frozen", num_steps=2)),
                                str(tmp_path), batch_sharding=sharding)
  late.prepare(other, None, 0)
  assert late.active and builds == [None, None]
  # An unfinished build is never read: only the complete folder counts.
  assert not [f for f in os.listdir(tmp_path / input_cache.CACHE_DIR)
              if f.endswith(".tmp")]


def test_a_build_that_cannot_write_trains_on_without(tmp_path, monkeypatch,
                                                      capsys):
  run = run_lib.build(_config("frozen"))
  mesh = mesh_lib.make_mesh()

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np.lib.format, "open_memmap", full_disk)
  cache = input_cache.InputCache(
      run, str(tmp_path), batch_sharding=mesh_lib.batch_sharding(mesh))
  cache.prepare(run.init_state(mesh), None, 0)
  assert not cache.active
  assert "No space left on device" in capsys.readouterr().out
  assert not os.listdir(tmp_path / input_cache.CACHE_DIR)


@pytest.mark.slow
def test_the_trainer_with_the_cache_trains_as_without(tmp_path, monkeypatch):
  """Phase 2 (stage 0, 4 steps) reads the cache, built once and read back
  after a resume; phase 3 computes the background and deletes the cache.
  The parameters match a run without the cache."""
  fills, builds = [], []
  fill, build = input_cache.InputCache.fill, input_cache.InputCache._build  # pylint: disable=protected-access

  def recording_fill(self, inputs):
    out = fill(self, inputs)
    fills.append("background" in out)
    return out

  def recording_build(self, *args):
    builds.append(args[1])
    return build(self, *args)

  monkeypatch.setattr(input_cache.InputCache, "fill", recording_fill)
  monkeypatch.setattr(input_cache.InputCache, "_build", recording_build)
  # 4 examples, batch 4: every step of phase 2 after the first revisits.
  plain = _config("curriculum", num_train=4, num_steps=6, freeze=4)
  with plain.unlocked():
    plain.train.cache_inputs = False
  loop.train(plain, str(tmp_path / "plain"))
  assert fills == [False] * 6 and not builds
  fills.clear()
  workdir = str(tmp_path / "cached")
  config = _config("curriculum", num_train=4, num_steps=6, freeze=4)
  with config.unlocked():
    config.train.checkpoint_every = 2

  def kill(run, state, step, info):
    del run, state, info
    if step == 2:
      raise KeyboardInterrupt("killed")

  with pytest.raises(KeyboardInterrupt):  # killed in phase 2 ...
    loop.train(config, workdir, hooks=[loop.Hook(1, kill)])
  assert os.path.isdir(os.path.join(workdir, input_cache.CACHE_DIR,
                                    "stage0"))
  loop.train(config, workdir)  # ... and resumed there
  assert fills == [True] * 4 + [False] * 2
  assert builds == [0]
  assert not os.path.exists(os.path.join(workdir, input_cache.CACHE_DIR))
  _, a = run_lib.restore(str(tmp_path / "plain"))
  _, b = run_lib.restore(workdir)
  _close(a.params, b.params, rtol=1e-4, atol=1e-6)
