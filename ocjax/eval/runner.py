"""Evaluation on held-out data: segmentation metrics for every segmentation
the model exposes, in every evaluation mode it declares (e.g. fixed and
flexible K). For video models each clip is scored as a whole (a slot must
follow one object over time to score well).

Writes ``<workdir>/eval/<step>.json`` and prints a table. Metrics (see
`ocjax.metrics.segmentation`): ARI and ARI-FG, MSC and MSC-FG (mean
segmentation covering, paper 001) and their pixel-weighted variants, and
for images CLEVRTEX's matched mIoU (background included, paper 003), per
image then averaged; plus the per-image loss terms and reconstruction MSE.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import data_pipelines
from ocjax import run as run_lib
from ocjax.eval import best_worst
from ocjax.metrics import segmentation as seg_metrics
from ocjax.metrics import tracking
from ocjax.train import loop
from ocjax.train import mesh as mesh_lib
from ocjax.train import writers

SCORES = ("ari", "ari_fg", "msc", "msc_fg", "msc_scaled", "msc_fg_scaled")
# The MOT protocol's scores (percent; `ocjax.metrics.tracking`), for videos:
# APEX's Table II.
MOT_SCORES = ("mota", "motp", "match", "id_switches", "false_positives",
              "misses", "mostly_detected", "mostly_tracked")


def _label_bound(seg: np.ndarray) -> int:
  """A static bound on GT labels (power of two, to limit recompilation)."""
  n = int(np.max(seg)) + 1 if seg.size else 1
  return max(8, 1 << (n - 1).bit_length())


@functools.lru_cache(maxsize=16)  # Periodic evaluations reuse the compiled fn.
def make_eval_fn(run: run_lib.Run, mode: str):
  """Jitted ``(variables, batch, segmentation, bound) -> per-image scores``.

  Everything per image (``[B]`` arrays): the segmentation scores of every
  segmentation the model exposes, ``num_slots_used`` where the model reports
  it, the loss terms and the reconstruction MSE.
  """
  apply = run.model_fn("eval", mode)
  input_key = run.model.input_key

  @run.jit(static_argnames=("num_true_labels",))
  def evaluate_batch(variables, batch, segmentation, *, num_true_labels):
    """Per-image scores and each segmentation's argmax over slots:
    ``[B, T, H, W]`` for videos (the slot index is the track id), and
    ``([B, H, W], K)`` for images (mIoU pads both to at least K labels)."""
    out = apply(variables, batch)
    labels = {}
    image = batch[input_key]
    res = {"mse": jnp.mean((out.recon - image) ** 2,
                           axis=tuple(range(1, image.ndim)))}
    res.update({f"loss_{k}": v for k, v in out.losses.items()})
    if "num_slots_used" in out.aux:
      res["num_slots"] = out.aux["num_slots_used"].astype(jnp.float32)
    for name, masks in out.segmentations.items():
      if masks.ndim == 6:  # Video [B, T, K, H, W, 1]: one score per clip,
        # with time stacked along the height (a slot is one track over time).
        labels[name] = jnp.argmax(masks[..., 0], axis=2).astype(jnp.int32)
        masks, truth = seg_metrics.stack_time(masks, segmentation)
      else:
        labels[name] = (seg_metrics.labels_from_masks(masks),
                        jnp.int32(masks.shape[1]))
        truth = segmentation
      scores = seg_metrics.segmentation_metrics(
          masks, truth, num_true_labels=num_true_labels)
      res.update({f"{name}/{s}": scores[s] for s in SCORES})
    return res, labels

  return evaluate_batch


def _fetch(x) -> np.ndarray:
  """A global array on every process's host."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _global_label_bound(segmentation: np.ndarray) -> int:
  bound = _label_bound(segmentation)
  if jax.process_count() > 1:
    bound = int(np.max(multihost_utils.process_allgather(np.int32(bound))))
  return bound


def evaluate_variables(run: run_lib.Run, variables, *,
                       split: str | None = None,
                       num_examples: int | None = None, mesh=None,
                       per_image_out: dict[str, np.ndarray] | None = None
                       ) -> dict[str, Any]:
  """Scores the model's ``variables`` on the evaluation split.

  Every evaluation mode the run asks for (`ocjax.run.Run.eval_modes`) is
  scored; keys are ``<mode>/<segmentation>/<score>``, plus the per-image loss
  terms (``loss_<term>``) and ``mse`` of the first mode. Batches are global
  arrays sharded over the mesh (every process reads its rows); per-image
  scores are gathered, and the first ``num_examples`` valid images of the
  split (in order) are averaged. A dict ``per_image_out`` receives the
  per-image scores (the results' keys) and ``position``, each image's
  position in the split's stream (for `ocjax.eval.best_worst`).
  """
  config = run.config
  ec = config.eval
  split = split or ec.split
  limit = num_examples if num_examples is not None else ec.num_examples
  total = data_pipelines.num_examples(config.data, split)
  limit = total if limit is None or limit <= 0 else min(limit, total)
  mesh = mesh or mesh_lib.make_mesh()
  if ec.batch_size % mesh.size:
    raise ValueError(f"eval.batch_size={ec.batch_size} must divide by the "
                     f"number of devices ({mesh.size}).")
  sharding = mesh_lib.batch_sharding(mesh)
  modes = {m: make_eval_fn(run, m) for m in run.eval_modes()}
  first = next(iter(modes))

  ds = data_pipelines.get_dataset(config.data, split,
                                  batch_size=ec.batch_size, seed=config.seed,
                                  repeat=False)
  per_image: dict[str, list[np.ndarray]] = {}
  trackers: dict[str, Any] = {}  # "<mode>/<segmentation>" -> MOTEvaluator
  seen = 0
  for index, batch in enumerate(data_pipelines.iterate(ds)):
    if seen >= limit:
      break
    if "segmentation" not in batch:
      raise ValueError(
          f"The {split} split of {config.data.name!r} has no ground-truth "
          "segmentation; segmentation metrics need one.")
    bound = _global_label_bound(batch["segmentation"])
    inputs = mesh_lib.to_global(run_lib.model_inputs(batch), sharding)
    segmentation, valid = mesh_lib.to_global(
        (batch["segmentation"], batch["valid"]), sharding)
    keep = _fetch(valid).astype(bool)
    keep[np.flatnonzero(keep)[limit - seen:]] = False  # past the limit
    seen += int(keep.sum())
    per_image.setdefault("position", []).append(
        index * ec.batch_size + np.flatnonzero(keep))
    truth = None
    for mode, fn in modes.items():
      out, labels = fn(variables, inputs, segmentation,
                       num_true_labels=bound)
      for name, pred in labels.items():
        if truth is None:
          truth = _fetch(segmentation)
        key = f"{mode}/{name}"
        if isinstance(pred, tuple):  # images: CLEVRTEX's matched mIoU
          pred, num_slots = pred  # (AST-Seg's Tables 1-3)
          miou = seg_metrics.miou_clevrtex(
              _fetch(pred)[keep], truth[keep], num_slots=int(num_slots),
              num_true_labels=bound)["miou"]
          per_image.setdefault(f"{key}/miou", []).append(miou)
        else:  # videos: the MOT protocol
          if key not in trackers:
            trackers[key] = tracking.MOTEvaluator()
          trackers[key].add_batch(truth, _fetch(pred), keep)
      for key, value in out.items():
        shared = key == "mse" or key.startswith("loss_")
        if shared and mode != first:
          continue
        name = key if shared else f"{mode}/{key}"
        per_image.setdefault(name, []).append(_fetch(value)[keep])

  results: dict[str, Any] = {"split": split, "dataset": config.data.name,
                             "num_images": seen}
  for key, chunks in per_image.items():
    values = np.concatenate(chunks)
    if per_image_out is not None:
      per_image_out[key] = values
    if key != "position":
      results[key] = float(np.mean(values)) if values.size else float("nan")
  for key, evaluator in trackers.items():
    if evaluator.num_frames:
      mot = evaluator.result()
      results.update({f"{key}/mot_{m}": mot[m] for m in MOT_SCORES})
  return results


def format_table(results: dict[str, Any]) -> str:
  """A plain-text table: one row per (evaluation mode, segmentation)."""
  rows = sorted({tuple(k.split("/")[:2]) for k in results
                 if k.count("/") == 2})
  scores = SCORES + (("miou",) if any(k.endswith("/miou") for k in results)
                     else ())
  head = f"{'mode':9s} {'masks':10s} " + " ".join(f"{s:>13s}" for s in scores)
  lines = [head, "-" * len(head)]
  for mode, name in rows:
    vals = " ".join(f"{results.get(f'{mode}/{name}/{s}', float('nan')):13.4f}"
                    for s in scores)
    lines.append(f"{mode:9s} {name:10s} {vals}")
  for mode, name in rows:
    if f"{mode}/{name}/mot_mota" in results:
      lines.append(f"{mode:9s} {name:10s} tracking: " + ", ".join(
          f"{s} {results[f'{mode}/{name}/mot_{s}']:.1f}" for s in MOT_SCORES))
  extra = [f"avg. K {k.split('/')[0]} {results[k]:.2f}"
           for k in sorted(results) if k.endswith("/num_slots")]
  extra += [f"{k[len('loss_'):]} {results[k]:.4g}"
            for k in sorted(results) if k.startswith("loss_")]
  if "mse" in results:
    extra.append(f"mse {results['mse']:.4g}")
  if extra:
    lines.append(", ".join(extra) + f"  ({results.get('num_images')} images)")
  return "\n".join(lines)


def write_results(workdir: str, step: int, results: dict[str, Any]) -> str:
  path = os.path.join(workdir, "eval", f"{step}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  return path


def evaluate_state(run: run_lib.Run, workdir: str, state, step: int,
                   info: dict[str, Any] | None = None):
  """Scores a train state; writes ``eval/<step>.json`` and the grid.

  ``info`` (from the training loop's hook) adds ``train_seconds``.
  """
  per_image: dict[str, np.ndarray] = {}
  variables = state.variables()
  results = evaluate_variables(run, variables, per_image_out=per_image)
  results["step"] = int(step)
  if info and "train_seconds" in info:
    results["train_seconds"] = float(info["train_seconds"])
  path = write_results(workdir, step, results)
  writers.log("Evaluation of step %d on %d %s images (%s):\n%s", step,
              results.get("num_images", 0), results["split"], path,
              format_table(results))
  grid = _write_best_worst_grid(run, workdir, variables, step, per_image)
  _log_to_history(workdir, step, results, grid, run.config)
  return results


def _log_to_history(workdir: str, step: int, results: dict[str, Any],
                    grid: str | None, config: Any = None) -> None:
  """The scores as ``eval/...`` scalars in TensorBoard and metrics.jsonl,
  and the best/median/worst grid as a TensorBoard image (process 0)."""
  if jax.process_index() != 0:
    return
  scalars = {f"eval/{k}": float(v) for k, v in results.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)
             and k != "step"}
  writer = writers.Writer(workdir, config=config)
  try:
    writer.scalars(step, scalars)
    if grid:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      with Image.open(grid) as img:
        writer.images(step, {"eval/best_median_worst": np.asarray(
            img.convert("RGB"))})
  finally:
    writer.close()


# ----------------------------------------------- best / median / worst grid
def _write_best_worst_grid(run, workdir, variables, step, per_image):
  """``<workdir>/eval/<step>_best_median_worst.png`` (process 0 only)."""
  if jax.process_index() != 0:
    return None
  try:
    path = best_worst.write_grid(run, workdir, step, variables, per_image)
  except Exception as e:  # pylint: disable=broad-except
    # A figure; the scores are already written.
    writers.log("Could not write the best/median/worst grid: %s: %s",
                type(e).__name__, e)
    return None
  if path:
    writers.log("Best, median and worst images by %s: %s",
                best_worst.score_key(per_image, run), path)
  return path


def headline_scores(results: dict[str, Any], run: run_lib.Run
                    ) -> dict[str, Any]:
  """The scores a run is judged by: ARI-FG and MSC-FG of the model's
  reported segmentation (``reported_segmentation``) in its first evaluation
  mode, the best ARI-FG of any of its segmentations, and the MSE."""
  mode = next(iter(run.eval_modes()))
  seg = run.model.reported_segmentation
  best = max((results[k] for k in results
              if k.startswith(f"{mode}/") and k.endswith("/ari_fg")),
             default=float("nan"))
  return {"ari_fg": results.get(f"{mode}/{seg}/ari_fg", float("nan")),
          "msc_fg": results.get(f"{mode}/{seg}/msc_fg", float("nan")),
          "best_ari_fg": best, "mse": results.get("mse", float("nan")),
          "segmentation": f"{mode}/{seg}"}


UNTRAINED_FILE = "untrained.json"  # in <workdir>/eval


def evaluate_untrained(run: run_lib.Run, workdir: str,
                       variables=None) -> dict[str, Any]:
  """The untrained baseline: the run's initial weights (``variables``, or
  the initial state ``config.seed`` gives) scored like a checkpoint, once
  (``eval/untrained.json``, read back after that); what training adds is
  measured against it."""
  results = read_untrained(workdir)
  if results is not None:
    return results
  if variables is None:
    variables = run.init_state().variables()
  results = evaluate_variables(run, variables)
  results["step"] = 0
  path = os.path.join(workdir, "eval", UNTRAINED_FILE)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
  top = headline_scores(results, run)
  writers.log("The untrained model (the baseline) on %d %s images: ARI-FG "
              "%.3f (%s masks), MSE %.4f (%s).", results.get("num_images", 0),
              results["split"], top["ari_fg"], top["segmentation"],
              top["mse"], path)
  return results


def read_untrained(workdir: str) -> dict[str, Any] | None:
  """``eval/untrained.json`` of the run, or None if it was not scored."""
  path = os.path.join(workdir, "eval", UNTRAINED_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def summary(run: run_lib.Run, results: dict[str, Any],
            untrained: dict[str, Any] | None = None) -> str:
  """One line: held-out ARI-FG after training next to the untrained one."""
  top = headline_scores(results, run)
  line = (f"Held-out ARI-FG {top['ari_fg']:.3f} ({top['segmentation']} "
          f"masks, {results.get('num_images', 0)} {results.get('split')} "
          f"images, step {results.get('step')})")
  if untrained is not None:
    line += (f"; untrained {headline_scores(untrained, run)['ari_fg']:.3f}"
             " (the same model before training")
    if untrained.get("num_images") != results.get("num_images"):
      line += f", {untrained.get('num_images')} images"
    line += ")"
  return line + f"; MSC-FG {top['msc_fg']:.3f}, MSE {top['mse']:.4f}."


def training_hooks(workdir: str, *, eval_every: int, untrained: bool = True,
                   at_end: bool = False) -> list[loop.Hook]:
  """The evaluation a training run does (`ocjax.train.loop.train`'s hooks):
  with ``untrained`` the untrained baseline before its first step, and an
  evaluation every ``eval_every`` steps (0: none; ``at_end``: also at the
  last step)."""
  hooks = []
  if untrained:
    hooks.append(loop.Hook(0, lambda run, state, step, info: (
        evaluate_untrained(run, workdir, state.variables())), at_start=True))
  if eval_every > 0:
    hooks.append(loop.Hook(int(eval_every), lambda run, state, step, info: (
        evaluate_state(run, workdir, state, step, info)), at_end=at_end))
  return hooks


def evaluate(workdir: str, step: int | None = None, *, config=None):
  """Evaluates a checkpoint of the run in ``workdir`` (default: the step
  ``eval.step`` names, -1 for the latest).

  The run's own ``config.json`` is used; ``config`` (e.g. ``--config``) may
  only change the evaluation settings (`ocjax.run.config_from_workdir`).
  """
  data_pipelines.configure_tensorflow()
  saved = run_lib.config_from_workdir(workdir, config)
  mesh_lib.use_cpu_devices(int(saved.mesh.get("cpu_devices", 0)))
  if step is None:
    step = int(saved.eval.step)
  run, state, meta = run_lib.restore(workdir, step, config=config,
                                     with_meta=True)
  info = ({"train_seconds": float(meta["train_seconds"])}
          if meta and "train_seconds" in meta else None)
  results = evaluate_state(run, workdir, state, int(state.step), info)
  writers.log("%s", summary(run, results, read_untrained(workdir)))
  return results
