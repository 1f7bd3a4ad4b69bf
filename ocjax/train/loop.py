"""The training loop: one file, one order.

``train(config, workdir)`` runs, in this order (big_vision / Kauldron):
  setup -> mesh -> model, objective, optimizer -> state (restore or init)
  -> input -> compiled step -> loop.
Inside the loop, at each step: take the next batch -> step -> bookkeeping
(logs, images, checkpoint). A checkpoint written after step ``s`` records
data position ``s`` (global batches consumed), so a restarted run asks the
pipeline for batches from ``s`` on and continues exactly as if never stopped.
A non-finite loss or gradient stops the run before any checkpoint is written
over a good one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import data_pipelines
from ocjax import models
from ocjax import objectives
from ocjax.train import checkpoint as ckpt_lib
from ocjax.train import mesh as mesh_lib
from ocjax.train import step as step_lib
from ocjax.train import writers
from ocjax.viz import grids

# Batch entries that are ground truth or bookkeeping, never model inputs.
NON_INPUT_KEYS = ("segmentation", "valid")


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN or Inf."""


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in batch.items() if k not in NON_INPUT_KEYS}


# ----------------------------------------------------------------- workdir
def check_workdir_config(config, workdir: str) -> None:
  """Writes ``config.json``; refuses to resume a run of another setup.

  Fields of ``model``, ``data`` and ``objective`` must match the run already
  in ``workdir`` (training length, logging and evaluation may change).
  """
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    diffs = []
    for section in ("model", "data", "objective", "seed"):
      a, b = saved.get(section), current.get(section)
      if a != b:
        if isinstance(a, dict) and isinstance(b, dict):
          diffs += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
          diffs.append(f"{section}: {a!r} -> {b!r}")
    if diffs:
      raise ValueError(
          f"{workdir} holds a run with a different configuration "
          f"({'; '.join(diffs)}). Use a new --workdir, or restore the "
          "original settings to resume it.")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(current, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


# ------------------------------------------------------------------- state
def build(config):
  """Model, objective and optimizer of an experiment config."""
  model = models.build(config.model)
  objective = objectives.build(config)
  tx = step_lib.make_optimizer(config.optimizer)
  return model, objective, tx


def example_batch(config, split: str = "test", size: int = 1):
  """A real batch (for shapes, initialisation and figures)."""
  ds = data_pipelines.get_dataset(config.data, split, batch_size=size,
                                  seed=config.seed, process_index=0,
                                  process_count=1, repeat=False)
  return next(data_pipelines.iterate(ds))


def init_or_restore(config, model, objective, tx, checkpointer, mesh,
                    example, *, step: int | None = None, require=False):
  """The train state, restored from the newest checkpoint if there is one.

  Returns ``(state, meta)``; ``meta`` is None for a fresh state.
  """
  replicated = mesh_lib.replicated(mesh)

  def init_fn():
    params = step_lib.init_params(model, model_inputs(example), config.seed)
    return step_lib.create_state(params, tx, objective)

  abstract = jax.eval_shape(init_fn)
  abstract = ckpt_lib.abstract_like(abstract, replicated)
  if checkpointer.latest_step() is not None or require:
    state, meta = checkpointer.restore(abstract, step)
    if meta.get("model") not in (None, config.model.name):
      raise ckpt_lib.CheckpointError(
          f"The checkpoint in {checkpointer.directory} is of model "
          f"{meta.get('model')!r}, not {config.model.name!r}.")
    return state, meta
  state = jax.jit(init_fn, out_shardings=replicated)()
  return state, None


def make_checkpointer(config, workdir: str, read_only: bool = False):
  return ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      keep_every=config.train.keep_every,
      max_to_keep=config.train.max_to_keep, read_only=read_only)


# ------------------------------------------------------------------ figures
def make_predict(model, seed: int):
  """Jitted model application for figures and evaluation (fixed rng)."""

  @jax.jit
  def predict(params, batch):
    key = step_lib.purpose_key(seed, "figures")
    return model.apply({"params": params}, batch,
                       rngs=step_lib.stream_rngs(key), train=False)

  return predict


def make_sampler(model, num: int, seed: int):
  """Jitted prior sampling, or None for models without a prior."""
  if not hasattr(model, "sample"):
    return None

  @jax.jit
  def sample(params):
    key = step_lib.purpose_key(seed, "sample")
    return model.apply({"params": params}, num, method=type(model).sample,
                       rngs=step_lib.stream_rngs(key))

  return sample


def _flatten_time(x):
  """Videos ``[B, T, ...]`` are shown frame by frame."""
  x = np.asarray(x)
  return x.reshape((-1,) + x.shape[2:])


def write_figures(workdir, writer, step, params, batch, predict, sampler,
                  mesh):
  """PNG grids in ``<workdir>/images`` and TensorBoard images.

  Every process computes (jitted calls are collective); process 0 writes.
  ``batch`` is the same host batch on every process.
  """
  inputs = mesh_lib.to_global(model_inputs(batch), mesh_lib.replicated(mesh))
  out = jax.device_get(predict(params, inputs))
  samples = jax.device_get(sampler(params)) if sampler is not None else None
  if jax.process_index() != 0:
    return
  key = "image" if "image" in batch else "video"
  images = np.asarray(batch[key])
  flat = (lambda a: np.asarray(a)) if key == "image" else _flatten_time
  segs = out.segmentations
  grid = grids.reconstruction_grid(
      flat(images), flat(out.recon), attention=(
          flat(segs["attention"]) if "attention" in segs else None),
      decoder=flat(out.masks), components=flat(out.components),
      segmentation=(flat(batch["segmentation"])
                    if "segmentation" in batch else None))
  figs = {"reconstruction": grid}
  if samples is not None:
    s = samples
    figs["samples"] = grids.sample_grid(
        np.asarray(s["image"]), np.asarray(s["masks"]),
        np.asarray(s["components"]))
  for name, img in figs.items():
    grids.save_png(os.path.join(workdir, "images",
                                f"{name}_{step:08d}.png"), img)
    grids.save_png(os.path.join(workdir, "images", f"{name}_latest.png"),
                   img)
  writer.images(step, figs)


# -------------------------------------------------------------------- train
def train(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir``; returns the last metrics."""
  # --- setup
  if config.mesh.distributed:
    mesh_lib.initialize_distributed(config.mesh)
  os.makedirs(workdir, exist_ok=True)
  check_workdir_config(config, workdir)
  data_pipelines.configure_tensorflow()
  tc = config.train
  if tc.batch_size % (jax.process_count() * tc.grad_accum_steps):
    raise ValueError(
        f"train.batch_size={tc.batch_size} must divide by the number of "
        f"processes ({jax.process_count()}) times "
        f"train.grad_accum_steps={tc.grad_accum_steps}.")

  # --- mesh
  mesh = mesh_lib.make_mesh()
  if tc.batch_size % mesh.size:
    raise ValueError(f"train.batch_size={tc.batch_size} must divide by the "
                     f"number of devices ({mesh.size}).")
  batch_sharding = mesh_lib.batch_sharding(mesh)

  # --- model, objective, optimizer, state
  model, objective, tx = build(config)
  example = example_batch(config)
  checkpointer = make_checkpointer(config, workdir)
  state, meta = init_or_restore(config, model, objective, tx, checkpointer,
                                mesh, example)
  start = int(state.step)
  data_position = meta["data_position"] if meta else 0
  if meta:
    writers.log("Resuming from the checkpoint of step %d in %s.", start,
                checkpointer.directory)
  else:
    n = sum(x.size for x in jax.tree.leaves(state.params))
    writers.log("Starting %s from scratch: %d parameters, %d steps of "
                "batch %d on %d device(s).", config.model.name, n,
                tc.num_steps, tc.batch_size, mesh.size)

  # --- input
  ds = data_pipelines.get_dataset(config.data, "train",
                                  batch_size=tc.batch_size, seed=config.seed,
                                  start_step=data_position)
  batches = data_pipelines.iterate(ds)

  # --- compiled step
  train_step = step_lib.make_train_step(
      model, objective, tx, seed=config.seed,
      grad_accum_steps=tc.grad_accum_steps,
      state_sharding=mesh_lib.replicated(mesh),
      batch_sharding=batch_sharding)
  predict = make_predict(model, config.seed)
  sampler = make_sampler(model, config.sample.num, config.seed)
  vis_batch = example_batch(config, "test", size=8)
  writer = writers.Writer(workdir, enabled=jax.process_index() == 0)

  # --- loop
  progress = writers.Progress(start, tc.num_steps)
  finite = jnp.bool_(True)
  last_good = start if meta else None
  last_checked = start
  metrics = {}
  step = start
  try:
    while step < tc.num_steps:
      batch = next(batches)
      device_batch = mesh_lib.to_global(model_inputs(batch), batch_sharding)
      state, metrics = train_step(state, device_batch)
      finite = finite & jnp.isfinite(metrics["loss"]) & jnp.isfinite(
          metrics["grad_norm"])
      step += 1

      is_last = step == tc.num_steps
      log_now = step % tc.log_every == 0 or is_last or step == start + 1
      ckpt_now = step % tc.checkpoint_every == 0 or is_last or (
          tc.keep_every > 0 and step % tc.keep_every == 0)
      if log_now or ckpt_now:
        host_metrics = jax.device_get(metrics)
        if not bool(finite):
          bad = sorted(k for k, v in host_metrics.items()
                       if not np.all(np.isfinite(v)))
          where = (f"the checkpoint of step {last_good} in "
                   f"{checkpointer.directory}" if last_good is not None
                   else "none yet")
          raise NonFiniteError(
              f"Non-finite values ({', '.join(bad) or 'loss/gradients'}) "
              f"within steps ({last_checked}, {step}]; no checkpoint was "
              f"written. Last good checkpoint: {where}.")
        last_checked = step
      if log_now:
        rate = progress.rate(step)
        scalars = {k: float(v) for k, v in host_metrics.items()}
        scalars["steps_per_sec"] = rate
        scalars["learning_rate"] = config.optimizer.learning_rate
        writer.scalars(step, scalars)
        writers.log(writers.progress_line(step, tc.num_steps, scalars, rate,
                                          progress.eta_seconds(step)))
      if step % tc.image_every == 0 or is_last:
        write_figures(workdir, writer, step, state.params, vis_batch, predict,
                      sampler, mesh)
      if ckpt_now:
        checkpointer.save(step, state, {
            "step": step, "data_position": data_position + (step - start),
            "model": config.model.name})
        last_good = step
      if tc.eval_every and step % tc.eval_every == 0 and not is_last:
        from ocjax.eval import runner  # pylint: disable=g-import-not-at-top
        runner.evaluate_state(config, workdir, state, step)
  finally:
    checkpointer.close()
    writer.close()
  return {k: float(v) for k, v in jax.device_get(metrics).items()}
