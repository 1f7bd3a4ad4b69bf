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

import contextlib
import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import data_pipelines
from ocjax import run as run_lib
from ocjax.models import base
from ocjax.train import input_cache
from ocjax.train import mesh as mesh_lib
from ocjax.train import step as step_lib
from ocjax.train import workdir as workdir_lib
from ocjax.train import writers
from ocjax.viz import grids
from ocjax.viz import video as video_viz


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN or Inf."""


@dataclasses.dataclass(frozen=True)
class Hook:
  """Work the loop does every ``every`` steps: ``fn(run, state, step,
  info)``, ``info`` holding ``train_seconds`` (training time so far, pauses
  and earlier processes included) and ``last`` (the run's final step, where
  hooks with ``at_end`` also run); those with ``at_start`` also run once on
  the initial state (step 0) of a run started from scratch, before its
  first step (e.g. the untrained baseline). Evaluation reaches training
  this way, so this module never imports `ocjax.eval`."""
  every: int
  fn: Callable[[run_lib.Run, Any, int, dict], Any]
  at_end: bool = False
  at_start: bool = False


def example_batch(config, split: str = "test", size: int = 1):
  """A real batch (for figures)."""
  ds = data_pipelines.get_dataset(config.data, split, batch_size=size,
                                  seed=config.seed, process_index=0,
                                  process_count=1, repeat=False)
  return next(data_pipelines.iterate(ds))


# ------------------------------------------------------------------ figures
def write_figures(run: run_lib.Run, workdir, writer, step, state, batch,
                  mesh):
  """Figures in ``<workdir>/images`` and TensorBoard images.

  Images: a reconstruction grid (and prior samples). Videos: a strip per
  clip over time (PNG) and an animation of the first clip (GIF). Then the
  model's own figures (``model.extra_figures``, PNG). Every process
  computes (jitted calls are collective); process 0 writes.
  ``batch`` is the same host batch on every process.
  """
  model = run.model
  inputs = mesh_lib.to_global(run_lib.model_inputs(batch),
                              mesh_lib.replicated(mesh))
  variables = state.variables()
  out = jax.device_get(run.apply_fn("figures")(variables, inputs))
  samples = None
  if base.can_sample(model):
    samples = jax.device_get(run.sample_fn(int(run.config.sample.num))(
        variables))
  if jax.process_index() != 0:
    return
  key = model.input_key
  segmentations = {name: out.segmentations[name]
                   for name in model.segmentation_names}
  truth = batch.get("segmentation")
  figs, gifs = {}, {}
  if key == "image":
    figs["reconstruction"] = grids.reconstruction_grid(
        batch[key], out.recon, segmentations=segmentations, masks=out.masks,
        components=out.components, segmentation=truth)
    if samples is not None:
      figs["samples"] = grids.sample_grid(samples.image, samples.masks,
                                          samples.components)
  else:
    figs["video"] = video_viz.strip(
        batch[key], out.recon, segmentations, out.masks, out.components,
        truth)
    first = lambda a: None if a is None else np.asarray(a)[0]
    gifs["video"] = video_viz.animation_frames(
        first(batch[key]), first(out.recon),
        {k: first(v) for k, v in segmentations.items()}, first(out.masks),
        first(out.components), first(truth))
    if samples is not None:
      figs["samples"] = video_viz.strip(samples.image, samples.image,
                                        {"masks": samples.masks},
                                        samples.masks, samples.components)
  # The model's own figures (`base.ObjectCentricModel.extra_figures`).
  extra = model.extra_figures(batch, out)
  clash = sorted(set(extra) & (set(figs) | set(gifs)))
  if clash:
    raise ValueError(f"{type(model).__name__}.extra_figures returned "
                     f"{clash}, names of the standard figures.")
  figs.update(extra)
  folder = os.path.join(workdir, "images")
  for name, img in figs.items():
    grids.save_png(os.path.join(folder, f"{name}_{step:08d}.png"), img)
    grids.save_png(os.path.join(folder, f"{name}_latest.png"), img)
  for name, frames in gifs.items():
    video_viz.save_gif(os.path.join(folder, f"{name}_{step:08d}.gif"), frames)
    video_viz.save_gif(os.path.join(folder, f"{name}_latest.gif"), frames)
  writer.images(step, figs)


# -------------------------------------------------------------------- train
def train(config, workdir: str, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
  """Trains (or resumes) the run in ``workdir``; returns the last metrics.

  The whole config is validated before anything is written. ``hooks`` run on
  their schedule after a step's checkpoint (e.g. the periodic evaluation).
  SIGTERM or SIGINT finishes the step, saves a checkpoint and raises
  `workdir_lib.Stopped`.
  """
  # --- setup
  if config.mesh.distributed:
    mesh_lib.initialize_distributed(config.mesh)
  else:
    mesh_lib.use_cpu_devices(int(config.mesh.get("cpu_devices", 0)))
  run = run_lib.validate(config)
  workdir_lib.prepare(workdir)
  lock = (workdir_lib.Lock(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  with lock, workdir_lib.StopSignals() as signals:
    return _train(run, workdir, hooks, signals)


def _train(run: run_lib.Run, workdir: str, hooks: Sequence[Hook],
           signals: workdir_lib.StopSignals) -> dict[str, Any]:
  config = run.config
  run_lib.check_workdir_config(config, workdir)
  data_pipelines.configure_tensorflow()
  tc = config.train
  accum = step_lib.resolve_grad_accum(tc, model=run.model)
  if tc.batch_size % (jax.process_count() * accum):
    raise run_lib.ConfigError(
        f"train.batch_size={tc.batch_size} must divide by the number of "
        f"processes ({jax.process_count()}) times the micro-batches "
        f"({accum}; train.grad_accum_steps={tc.grad_accum_steps}).")

  # --- mesh
  mesh = mesh_lib.make_mesh()
  if tc.batch_size % mesh.size:
    raise ValueError(f"train.batch_size={tc.batch_size} must divide by the "
                     f"number of devices ({mesh.size}).")
  batch_sharding = mesh_lib.batch_sharding(mesh)

  # --- state: restore or init; the history follows the checkpoint
  checkpointer = run.checkpointer(workdir)
  state, meta = run.restore(checkpointer, mesh=mesh, require=False)
  start = int(state.step)
  if jax.process_index() == 0:
    dropped = workdir_lib.reconcile_history(workdir, start if meta else None)
    if dropped:
      writers.log("Dropped %d rows of metrics.jsonl (and TensorBoard "
                  "events) after step %d, the checkpoint resumed from.",
                  dropped, start)
  data_position = meta["data_position"] if meta else 0
  if meta and meta.get("batch_size", tc.batch_size) != tc.batch_size:
    raise run_lib.ConfigError(
        f"train.batch_size={tc.batch_size}, but the run in {workdir} was "
        f"trained with batch {meta['batch_size']} (its data position counts "
        "batches of that size, so the data order would shift). Resume with "
        f"--config.train.batch_size={meta['batch_size']}, or use a new "
        "--workdir.")
  # Seconds of training before this process started (time_budget_s counts
  # them, so a resumed run keeps its budget).
  seconds_before = float(meta.get("train_seconds", 0.0)) if meta else 0.0
  if meta:
    writers.log("Resuming from the checkpoint of step %d in %s.", start,
                checkpointer.directory)
  else:
    n = sum(x.size for x in jax.tree.leaves(state.params))
    writers.log("Starting %s from scratch: %d parameters, %d steps of "
                "batch %d (%d micro-batch(es)) on %d device(s).\n%s",
                config.model.name, n, tc.num_steps, tc.batch_size, accum,
                mesh.size, writers.parameter_table(state.params))

  # --- input
  ds = data_pipelines.get_dataset(config.data, "train",
                                  batch_size=tc.batch_size, seed=config.seed,
                                  start_step=data_position)
  batches = data_pipelines.iterate(ds)

  # --- compiled step
  train_step = step_lib.make_train_step(
      run.model, run.objective, run.tx, seed=config.seed,
      grad_accum_steps=accum,
      state_sharding=mesh_lib.replicated(mesh),
      batch_sharding=batch_sharding)
  # Inputs a stage computes from frozen parameters, once per example.
  cache = input_cache.InputCache(run, workdir, batch_sharding=batch_sharding)
  vis_batch = example_batch(config, "test", size=8)
  writer = writers.Writer(workdir, enabled=jax.process_index() == 0,
                          config=config)
  writer.text(start, {"config": "```\n" + config.to_json_best_effort(
      indent=2) + "\n```", "parameters": "```\n" + writers.parameter_table(
          state.params, depth=2) + "\n```"})

  if not meta:  # before the first step and its clock
    for hook in hooks:
      if hook.at_start:
        hook.fn(run, state, start, {"train_seconds": 0.0, "last": False})
  # --- loop
  profile = run_lib.profile_window(tc)
  tracing = False
  progress = writers.Progress(start, tc.num_steps)
  budget = float(tc.get("time_budget_s", 0) or 0)
  finite = jnp.bool_(True)
  last_good = start if meta else None
  last_checked = start
  metrics = {}
  step = start
  compiled_stages = set()
  try:
    while step < tc.num_steps:
      if profile and step + 1 == profile[0] and jax.process_index() == 0:
        jax.profiler.start_trace(os.path.join(workdir, "tb"))
        tracing = True
      batch = next(batches)
      # The model's stage (`step_lib.stage_of`): one compiled step each.
      stage = step_lib.stage_of(run.model, step)
      if stage != cache.stage:  # Building a cache is not training time.
        with progress.paused():
          cache.prepare(state, stage, step)
      inputs = cache.fill(run_lib.model_inputs(batch))
      device_batch = mesh_lib.to_global(inputs, batch_sharding)
      compiled = (stage, tuple(sorted(inputs)))
      if step == start or compiled not in compiled_stages:
        # Compilation is not training time.
        with progress.paused():
          state, metrics = train_step(state, device_batch, stage=stage)
          jax.block_until_ready(metrics)
        compiled_stages.add(compiled)
      else:
        state, metrics = train_step(state, device_batch, stage=stage)
      finite = finite & jnp.isfinite(metrics["loss"]) & jnp.isfinite(
          metrics["grad_norm"])
      step += 1
      if tracing and step >= profile[1]:
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        tracing = False
        writers.log("Profiled steps %d-%d: TensorBoard's Profile tab of %s.",
                    profile[0], step, os.path.join(workdir, "tb"))

      train_seconds = seconds_before + progress.elapsed()
      out_of_time = budget > 0 and train_seconds >= budget
      if out_of_time and jax.process_count() > 1:  # Every host stops together.
        out_of_time = bool(np.max(
            mesh_lib.process_allgather(np.int32(out_of_time))))
      signalled = _signalled(signals, step)
      is_last = step == tc.num_steps or out_of_time or bool(signalled)
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
        scalars["learning_rate"] = run.learning_rate(step - 1)
        writer.scalars(step, scalars)
        eta = progress.eta_seconds(step)
        if budget > 0:  # The time budget may end the run first.
          eta = min(eta, max(budget - train_seconds, 0.0))
        writers.log(writers.progress_line(step, tc.num_steps, scalars, rate,
                                          eta))
      # A signal stops with a checkpoint only: no figures or evaluation.
      figures_now = (step % tc.image_every == 0 or is_last) and not signalled
      hooks_now = [h for h in hooks
                   if (h.every and step % h.every == 0 and not is_last)
                   or (is_last and h.at_end and not signalled)]
      if figures_now or ckpt_now or hooks_now:
        jax.block_until_ready(metrics)  # The step's time is training time.
      with progress.paused():
        if figures_now:
          write_figures(run, workdir, writer, step, state, vis_batch, mesh)
        if ckpt_now:
          checkpointer.save(step, state, {
              "step": step, "data_position": data_position + (step - start),
              "batch_size": tc.batch_size, "model": config.model.name,
              "train_seconds": train_seconds})
          last_good = step
        for hook in hooks_now:
          hook.fn(run, state, step, {"train_seconds": train_seconds,
                                     "last": is_last})
      if signalled:
        checkpointer.wait()
        raise workdir_lib.Stopped(signalled, step, checkpointer.directory)
      if out_of_time:
        writers.log("Stopped after step %d: train.time_budget_s=%g s is "
                    "spent (the same command continues the run).", step,
                    budget)
        break
    if step >= tc.num_steps:  # complete: its caches are not needed
      cache.finish()
  finally:
    if tracing:
      jax.profiler.stop_trace()
    checkpointer.close()
    writer.close()
    writers.finish_wandb(workdir)
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _signalled(signals: workdir_lib.StopSignals, step: int) -> str | None:
  """The signal that asks to stop after ``step`` (every host agrees)."""
  if jax.process_count() == 1:
    return signals.signame
  # Several hosts: JAX's preemption notifier makes them all stop at the same
  # step (orbax's preemption protocol).
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  try:
    if multihost_utils.reached_preemption_sync_point(step):
      return "SIGTERM"
  except RuntimeError:  # No preemption service in this distributed setup.
    pass
  return None
