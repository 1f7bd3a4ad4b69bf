"""Evaluation on held-out data: segmentation metrics for every segmentation
the model exposes, with fixed and (where the model has it) flexible K.

Writes ``<workdir>/eval/<step>.json`` and prints a table. Metrics (see
`ocjax.metrics.segmentation`): ARI and ARI-FG, MSC and MSC-FG (GENESIS's mean
segmentation covering) and their pixel-weighted variants, per image then
averaged; plus the per-image NLL, KL and reconstruction MSE.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import data_pipelines
from ocjax.eval import best_worst
from ocjax.metrics import segmentation as seg_metrics
from ocjax.train import loop
from ocjax.train import mesh as mesh_lib
from ocjax.train import step as step_lib
from ocjax.train import writers

SCORES = ("ari", "ari_fg", "msc", "msc_fg", "msc_scaled", "msc_fg_scaled")


def _label_bound(seg: np.ndarray) -> int:
  """A static bound on GT labels (power of two, to limit recompilation)."""
  n = int(np.max(seg)) + 1 if seg.size else 1
  return max(8, 1 << (n - 1).bit_length())


def _supports_flexible(model) -> bool:
  return "flexible" in inspect.signature(type(model).__call__).parameters


@functools.lru_cache(maxsize=16)  # Periodic evaluations reuse the compiled fn.
def make_eval_fn(model, seed: int, flexible: bool):
  """Jitted ``(params, batch, segmentation, bound) -> per-image scores``.

  Everything per image (``[B]`` arrays): the segmentation scores of every
  segmentation the model exposes, ``num_slots_used`` where the model reports
  it, the loss terms and the reconstruction MSE.
  """
  kwargs = {"flexible": True} if flexible else {}

  @functools.partial(jax.jit, static_argnames=("num_true_labels",))
  def apply(params, batch, segmentation, *, num_true_labels):
    key = step_lib.purpose_key(seed, "eval")
    out = model.apply({"params": params}, batch, train=False,
                      rngs=step_lib.stream_rngs(key), **kwargs)
    image = batch.get("image", batch.get("video"))
    res = {"mse": jnp.mean((out.recon - image) ** 2,
                           axis=tuple(range(1, image.ndim)))}
    res.update({f"loss_{k}": v for k, v in out.losses.items()})
    if "num_slots_used" in out.aux:
      res["num_slots"] = out.aux["num_slots_used"].astype(jnp.float32)
    for name, masks in out.segmentations.items():
      scores = seg_metrics.segmentation_metrics(
          masks, segmentation, num_true_labels=num_true_labels)
      res.update({f"{name}/{s}": scores[s] for s in SCORES})
    return res

  return apply


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


def evaluate_params(config, params, model, *, split: str | None = None,
                    num_examples: int | None = None,
                    mesh=None,
                    per_image_out: dict[str, np.ndarray] | None = None
                    ) -> dict[str, Any]:
  """Scores ``params`` on the evaluation split; returns the results dict.

  Batches are global arrays sharded over the mesh (every process reads its
  rows); per-image scores are gathered, and the first ``num_examples`` valid
  images of the split (in order) are averaged. A dict ``per_image_out``
  receives the per-image scores (the results' keys) and ``position``, each
  image's position in the split's stream (for `ocjax.eval.best_worst`).
  """
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
  modes = {"fixed": make_eval_fn(model, config.seed, False)}
  if ec.flexible and _supports_flexible(model):
    modes["flexible"] = make_eval_fn(model, config.seed, True)

  ds = data_pipelines.get_dataset(config.data, split,
                                  batch_size=ec.batch_size, seed=config.seed,
                                  repeat=False)
  per_image: dict[str, list[np.ndarray]] = {}
  seen = 0
  for index, batch in enumerate(data_pipelines.iterate(ds)):
    if seen >= limit:
      break
    if "segmentation" not in batch:
      raise ValueError(
          f"The {split} split of {config.data.name!r} has no ground-truth "
          "segmentation; segmentation metrics need one.")
    bound = _global_label_bound(batch["segmentation"])
    inputs = mesh_lib.to_global(loop.model_inputs(batch), sharding)
    segmentation, valid = mesh_lib.to_global(
        (batch["segmentation"], batch["valid"]), sharding)
    keep = _fetch(valid).astype(bool)
    keep[np.flatnonzero(keep)[limit - seen:]] = False  # past the limit
    seen += int(keep.sum())
    per_image.setdefault("position", []).append(
        index * ec.batch_size + np.flatnonzero(keep))
    for mode, fn in modes.items():
      out = fn(params, inputs, segmentation, num_true_labels=bound)
      for key, value in out.items():
        if mode == "flexible" and (key == "mse" or key.startswith("loss_")):
          continue
        name = key if key == "mse" or key.startswith("loss_") else (
            f"{mode}/{key}")
        per_image.setdefault(name, []).append(_fetch(value)[keep])

  results: dict[str, Any] = {"split": split, "dataset": config.data.name,
                             "num_images": seen}
  for key, chunks in per_image.items():
    values = np.concatenate(chunks)
    if per_image_out is not None:
      per_image_out[key] = values
    if key != "position":
      results[key] = float(np.mean(values)) if values.size else float("nan")
  return results


def format_table(results: dict[str, Any]) -> str:
  """A plain-text table: one row per (K mode, segmentation)."""
  rows = sorted({tuple(k.split("/")[:2]) for k in results
                 if k.count("/") == 2})
  head = f"{'K':9s} {'masks':10s} " + " ".join(f"{s:>13s}" for s in SCORES)
  lines = [head, "-" * len(head)]
  for mode, name in rows:
    vals = " ".join(f"{results.get(f'{mode}/{name}/{s}', float('nan')):13.4f}"
                    for s in SCORES)
    lines.append(f"{mode:9s} {name:10s} {vals}")
  extra = []
  if "fixed/num_slots" in results:
    extra.append(f"avg. K fixed {results['fixed/num_slots']:.2f}")
  if "flexible/num_slots" in results:
    extra.append(f"avg. K flexible {results['flexible/num_slots']:.2f}")
  for k in ("loss_nll", "loss_kl", "mse"):
    if k in results:
      extra.append(f"{k.replace('loss_', '')} {results[k]:.4g}")
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


def evaluate_state(config, workdir: str, state, step: int):
  model = loop.build(config)[0]
  per_image: dict[str, np.ndarray] = {}
  results = evaluate_params(config, state.params, model,
                            per_image_out=per_image)
  results["step"] = int(step)
  path = write_results(workdir, step, results)
  writers.log("Evaluation of step %d on %d %s images (%s):\n%s", step,
              results.get("num_images", 0), results["split"], path,
              format_table(results))
  _write_best_worst_grid(config, workdir, state.params, model, step,
                         per_image)
  return results


# ----------------------------------------------- best / median / worst grid
def _write_best_worst_grid(config, workdir, params, model, step, per_image):
  """``<workdir>/eval/<step>_best_median_worst.png`` (process 0 only)."""
  if jax.process_index() != 0:
    return None
  try:
    path = best_worst.write_grid(config, workdir, step, params, model,
                                 per_image)
  except Exception as e:  # pylint: disable=broad-except
    # A figure; the scores are already written.
    writers.log("Could not write the best/median/worst grid: %s: %s",
                type(e).__name__, e)
    return None
  if path:
    writers.log("Best, median and worst images by %s: %s",
                best_worst.score_key(per_image), path)
  return path


# --------------------------------------------------------------- run config
def _merge(defaults: Any, saved: Any) -> Any:
  """``saved`` over ``defaults`` (JSON trees); a section naming another
  ``name`` (e.g. another dataset) replaces the default one whole."""
  if not (isinstance(defaults, dict) and isinstance(saved, dict)):
    return saved
  if "name" in saved and defaults.get("name", saved["name"]) != saved["name"]:
    return saved
  out = dict(defaults)
  for k, v in saved.items():
    out[k] = _merge(defaults.get(k), v)
  return out


def _experiment_defaults(model_name: str) -> dict[str, Any]:
  """The JSON tree of ``experiments/<model name>.py``'s default config, or
  {} where there is no such file."""
  import importlib  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    module = importlib.import_module(f"experiments.{model_name}")
  except ImportError:  # Not installed: the checkout's experiments/ folder.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "experiments", f"{model_name}.py")
    if not os.path.isfile(path):
      return {}
    spec = importlib.util.spec_from_file_location(
        f"_ocjax_experiment_{model_name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
    except Exception:  # pylint: disable=broad-except
      return {}
  try:
    return json.loads(module.get_config().to_json_best_effort())
  except (AttributeError, TypeError, ValueError):
    return {}


def config_from_workdir(workdir: str):
  """The locked config of the run in ``workdir`` (its ``config.json``).

  Fields added to the experiment file after the run was written take their
  default values there (``experiments/<model.name>.py``); JSON lists come
  back as tuples, as the experiment files write them.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No {path}: --workdir must be a run directory written by "
        "`python -m ocjax.main --mode=train` (it holds config.json and "
        "checkpoints/).")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read the run config {path}: {e}") from e
  if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
    raise ValueError(f"{path} has no 'model' section; it is not an ocjax "
                     "run config.")
  for section in ("data", "seed"):
    if section not in raw:
      raise ValueError(f"{path} has no {section!r} section; it is not an "
                       "ocjax run config.")
  merged = _merge(_experiment_defaults(str(raw["model"].get("name"))), raw)

  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x

  config = ml_collections.ConfigDict(tuples(merged))
  config.lock()
  return config


def evaluate(config, workdir: str, step: int | None = None):
  """Evaluates a checkpoint of ``workdir`` (default: ``config.eval.step``)."""
  data_pipelines.configure_tensorflow()
  model, objective, tx = loop.build(config)
  mesh = mesh_lib.make_mesh()
  checkpointer = loop.make_checkpointer(config, workdir, read_only=True)
  step = config.eval.step if step is None else step
  example = loop.example_batch(config)
  state, _ = loop.init_or_restore(config, model, objective, tx, checkpointer,
                                  mesh, example, step=step, require=True)
  return evaluate_state(config, workdir, state, int(state.step))
