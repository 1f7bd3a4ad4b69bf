"""The model contract: every registered model passes these tests unchanged.

For each model of `ocjax.models.names()`, its experiment file's ``tiny`` and
``smoke`` options (a minute model, a few steps) go through everything generic
code does with a model: initialisation, every evaluation mode's
`ModelOutput` (shapes, normalised masks, declared segmentations, per-example
losses), a training step (and its mutable collections), the trainer with its
checkpoints and figures, the evaluation runner, prior samples where the model
has a prior, and `ocjax.segment` on a PNG. A new model that needs any change
outside its own files to pass here has found a gap in the protocol.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

import data_pipelines
from ocjax import models
from ocjax import run as run_lib
from ocjax import segment
from ocjax.eval import runner
from ocjax.eval import sampling
from ocjax.models import base
from ocjax.train import loop
from ocjax.train import mesh as mesh_lib
from ocjax.train import step as step_lib

MODELS = models.names()


def test_every_model_has_an_experiment_file():
  assert "genesis_v2" in MODELS
  for name in MODELS:
    config = run_lib.load_experiment(f"experiments/{name}.py:tiny,smoke")
    assert config.model.name == name


def tiny_config(name: str):
  config = run_lib.load_experiment(f"experiments/{name}.py:tiny,smoke")
  with config.unlocked():
    config.experiment = f"experiments/{name}.py:tiny,smoke"
    config.train.image_every = 2
  return config


@pytest.fixture(scope="module", params=MODELS)
def built(request):
  config = tiny_config(request.param)
  run = run_lib.build(config)
  batch = loop.example_batch(config, "test", size=4)
  return config, run, batch


def test_declarations(built):
  config, run, _ = built
  model = run.model
  assert isinstance(model, base.ObjectCentricModel)
  assert model.input_key in ("image", "video")
  assert model.eval_modes and all(isinstance(v, dict) or hasattr(v, "items")
                                  for v in model.eval_modes.values())
  assert model.reported_segmentation in model.segmentation_names
  assert len(set(model.rng_streams)) == len(model.rng_streams)
  assert "params" not in model.rng_streams
  # Training stages: increasing positive steps, only for step-aware models
  # (`step_lib.stage_of` counts the boundaries at or below the step).
  stages = model.training_stages()
  assert isinstance(stages, tuple) and list(stages) == sorted(set(stages))
  assert all(isinstance(b, int) and b > 0 for b in stages)
  assert not stages or model.uses_step
  assert step_lib.stage_of(model, 0) == (0 if stages else None)
  # Frozen parameters (per stage, None without stages) are top-level
  # entries of its params.
  params = jax.eval_shape(run.init_state).params
  for stage in (None,) + tuple(range(len(stages) + 1)):
    frozen = step_lib.frozen_of(model, stage)
    assert isinstance(frozen, tuple) and set(frozen) <= set(params), frozen
    # Cached inputs (`ocjax.train.input_cache`) come from frozen parameters
    # and are entries the model's batch does not already carry.
    cached = model.cached_inputs(stage)
    assert isinstance(cached, tuple), cached
    assert all(isinstance(n, str) for n in cached), cached
    assert not cached or frozen, (stage, cached)
    assert not set(cached) & set(model.dummy_batch(1)), cached
  # Built from its config section, field by field.
  assert type(model) is models.model_class(config.model.name)


def test_outputs_in_every_evaluation_mode(built):
  config, run, batch = built
  model = run.model
  state = run.init_state()
  for collection in model.mutable_collections:
    assert collection in state.model_state
  chex_finite = lambda t: all(np.all(np.isfinite(np.asarray(x)))
                              for x in jax.tree.leaves(t))
  assert chex_finite(state.params)
  x = np.asarray(batch[model.input_key])
  b = x.shape[0]
  inputs = run_lib.model_inputs(batch)
  for mode in model.eval_modes:
    out = run.apply_fn("eval", mode)(state.variables(), inputs)
    assert isinstance(out, base.ModelOutput)
    assert out.recon.shape == x.shape
    lead = x.shape[:-3]  # [B] or [B, T]
    k = out.masks.shape[len(lead)]
    assert out.masks.shape == lead + (k,) + x.shape[-3:-1] + (1,)
    assert out.components.shape == lead + (k,) + x.shape[-3:]
    np.testing.assert_allclose(np.asarray(out.masks).sum(len(lead)), 1.0,
                               atol=1e-4)
    assert set(out.segmentations) == set(model.segmentation_names)
    np.testing.assert_array_equal(
        out.masks, out.segmentations[model.reported_segmentation])
    for name, m in out.segmentations.items():
      assert m.shape == out.masks.shape[:len(lead)] + m.shape[len(lead):]
      assert m.shape[-3:] == x.shape[-3:-1] + (1,), name
      np.testing.assert_allclose(np.asarray(m).sum(len(lead)), 1.0,
                                 atol=1e-4, err_msg=name)
    assert out.losses, "a model returns its loss terms"
    for term, v in out.losses.items():
      assert v.shape == (b,), term
      assert np.all(np.isfinite(v)), term
    assert out.latents.shape[:len(lead) + 1] == lead + (k,)
  # The objective reads the model's terms.
  out = run.apply_fn("eval")(state.variables(), inputs)
  loss, _, metrics = run.objective(out, state.objective_state)
  assert np.isfinite(float(loss)) and "loss" in metrics
  # The model's own figures, drawn on the host from the output.
  for name, img in model.extra_figures(batch, jax.device_get(out)).items():
    assert name not in ("reconstruction", "samples", "video"), name
    assert img.dtype == np.uint8, name
    assert img.ndim == 3 and img.shape[-1] == 3, name


def test_one_training_step(built):
  config, run, batch = built
  mesh = mesh_lib.make_mesh()
  state = run.init_state(mesh)
  before = jax.device_get(state)
  train_step = step_lib.make_train_step(
      run.model, run.objective, run.tx, seed=config.seed,
      state_sharding=mesh_lib.replicated(mesh),
      batch_sharding=mesh_lib.batch_sharding(mesh))
  inputs = mesh_lib.to_global(run_lib.model_inputs(batch),
                              mesh_lib.batch_sharding(mesh))
  # Two steps: a warm-up schedule may start at a learning rate of 0.
  for _ in range(2):
    state, metrics = train_step(state, inputs)
  assert int(state.step) == 2
  assert np.isfinite(float(metrics["loss"]))
  assert np.isfinite(float(metrics["grad_norm"]))
  assert float(metrics["grad_norm"]) > 0
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.array_equal(a, b), before.params,
      jax.device_get(state.params)))
  assert any(changed)
  if run.model.mutable_collections:
    moved = jax.tree.leaves(jax.tree.map(
        lambda a, b: not np.array_equal(a, b), before.model_state,
        jax.device_get(state.model_state)))
    assert any(moved), "training calls update the mutable collections"


@pytest.fixture(scope="module")
def trained(built, tmp_path_factory):
  """The model through the trainer: 4 steps, checkpoints, figures."""
  config, _, _ = built
  workdir = str(tmp_path_factory.mktemp(f"contract_{config.model.name}"))
  metrics = loop.train(config, workdir)
  return config, workdir, metrics


@pytest.mark.slow
def test_trainer_checkpoints_and_figures(built, trained):
  _, _, batch = built
  config, workdir, metrics = trained
  assert np.isfinite(metrics["loss"])
  run, state = run_lib.restore(workdir)
  # Images: a reconstruction grid; videos: a strip over time and a GIF;
  # then the model's own figures.
  figures = (("reconstruction_latest.png",) if run.model.input_key == "image"
             else ("video_latest.png", "video_latest.gif"))
  out = jax.device_get(run.apply_fn("figures")(
      state.variables(), run_lib.model_inputs(batch)))
  figures += tuple(f"{name}_latest.png"
                   for name in run.model.extra_figures(batch, out))
  for name in figures:
    assert os.path.exists(os.path.join(workdir, "images", name)), name
  assert int(state.step) == config.train.num_steps
  assert base.can_sample(run.model) == os.path.exists(
      os.path.join(workdir, "images", "samples_latest.png"))
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["experiment"] == config.experiment


@pytest.mark.slow
def test_evaluation_runner(trained):
  config, workdir, _ = trained
  results = runner.evaluate(workdir)
  run = run_lib.build(config)
  modes = list(run.model.eval_modes)
  for mode in modes:
    for name in run.model.segmentation_names:
      for score in runner.SCORES:
        assert f"{mode}/{name}/{score}" in results
      # Videos: the MOT protocol, from the slots as tracks (APEX Table II).
      for score in runner.MOT_SCORES:
        assert (f"{mode}/{name}/mot_{score}" in results) == (
            run.model.input_key == "video"), score
  assert np.isfinite(results[f"{modes[0]}/"
                             f"{run.model.reported_segmentation}/ari"])
  assert results["num_images"] == config.eval.num_examples
  assert os.path.exists(os.path.join(
      workdir, "eval", f"{config.train.num_steps}_best_median_worst.png"))
  # The scores also go to the run's history (and TensorBoard).
  rows = [json.loads(l) for l in open(os.path.join(workdir,
                                                   "metrics.jsonl"))]
  evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
  assert evals and evals[-1]["step"] == config.train.num_steps
  assert evals[-1][f"eval/{modes[0]}/{run.model.reported_segmentation}/ari"]\
      == pytest.approx(results[f"{modes[0]}/"
                               f"{run.model.reported_segmentation}/ari"])
  if base.can_sample(run.model):
    grid = sampling.sample(workdir, num=2)
    assert os.path.exists(grid)


@pytest.mark.slow
def test_segment_a_png_or_a_video(trained, tmp_path):
  config, workdir, _ = trained
  run = run_lib.build(config)
  if run.model.input_key == "video":
    _segment_a_video(run, workdir, tmp_path)
    return
  rng = np.random.default_rng(0)
  path = tmp_path / "scene.png"
  Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
  summary = segment.segment(workdir, str(path), str(tmp_path / "out"),
                            batch_size=2)
  assert summary["num_images"] == 1 and not summary["errors"]
  size = int(run.model.dummy_batch(1)["image"].shape[1])
  with Image.open(tmp_path / "out" / "scene" / "segmentation.png") as seg:
    assert seg.size == (size, size)
  with np.load(tmp_path / "out" / "scene" / "latents.npz") as z:
    masks = z["masks"]
  np.testing.assert_allclose(masks.sum(0), 1.0, atol=1e-4)
  assert summary["preprocessing"] == data_pipelines.preprocessing_for(
      config.data).description


def _segment_a_video(run, workdir, tmp_path):
  """A video model tracks an mp4 and a folder of frames (`ocjax.segment`)."""
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  frames = (rng.random((4, 40, 48, 3)) * 255).astype(np.uint8)
  folder = tmp_path / "frames"
  folder.mkdir()
  for t, f in enumerate(frames):
    Image.fromarray(f).save(folder / f"frame_{t:02d}.png")
  mp4 = str(tmp_path / "clip.mp4")
  writer = imageio_ffmpeg.write_frames(mp4, (48, 40), macro_block_size=8)
  writer.send(None)
  for f in frames:
    writer.send(np.ascontiguousarray(f))
  writer.close()
  size = int(run.model.dummy_batch(1)["video"].shape[2])
  for source, clip_length in ((str(folder), 0), (mp4, 3)):
    out = tmp_path / ("out_" + os.path.basename(source))
    summary = segment.segment(workdir, source, str(out),
                              clip_length=clip_length)
    assert summary["num_frames"] == 4 and len(summary["sources"]) == 4
    k = summary["num_slots"]
    assert len(summary["tracks"]) == k
    with np.load(out / "tracks.npz") as z:
      assert z["masks"].shape == (4, k, size, size)
      np.testing.assert_allclose(z["masks"].sum(1), 1.0, atol=1e-4)
      np.testing.assert_array_equal(z["segmentation"],
                                    z["masks"].argmax(1))
    with Image.open(out / "frames" / "segmentation_0003.png") as seg:
      assert seg.size == (size, size) and seg.mode == "P"
    assert os.path.exists(out / "tracks.gif")
    assert json.loads((out / "segment.json").read_text())["step"] >= 0
