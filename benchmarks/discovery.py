r"""A model's curve to object discovery: held-out ARI-FG against steps and time.

    python benchmarks/discovery.py --model=slot_attention --preset=quick \
        --dataset=tetrominoes_like --minutes=12 --eval_every=250 \
        --workdir=runs/discovery/sa_tetrominoes [--config.x.y=v ...]

Trains ``experiments/<model>.py:<preset>`` (on ``--dataset``'s procedural
data when given, at the preset's image size unless overridden) for
``--minutes`` of training time (compilation, figures, checkpoints and
evaluation left out), evaluating every ``--eval_every`` steps on the first
``--eval_images`` test images, and writes to the workdir

* ``curve.json``: per evaluation the step, training seconds, ARI-FG and
  MSC-FG of the model's reported masks, the best ARI-FG of any of its
  masks, and MSE; the untrained model's scores; the first step and time at
  which ARI-FG reached 0.5 and 0.8;
* ``curve.png``: ARI-FG and MSC-FG against training time;
* TensorBoard ``eval/*`` scalars (as every evaluation writes them).

Re-running the command resumes a killed run (and keeps its curve); a larger
``--minutes`` continues a finished one.

Several models and datasets, comma-separated, train one after the other,
each in ``<workdir>/<model>_<dataset>`` (a finished one is read back, a cut
one resumed), and the table of all of them goes to ``discovery.md`` and
``discovery.json`` in the workdir:

    python benchmarks/discovery.py --model=genesis_v2,monet,genesis,slot_attention \
        --dataset=sprites,tetrominoes_like --minutes=6 --eval_every=500 \
        --eval_images=128 --workdir=runs/discovery

On another dataset than the preset's, a model keeps the preset's image size
and shifts K by the change in the most objects per scene (``build_config``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

import data_pipelines
from experiments import common
from ocjax import compare
from ocjax import run as run_lib
from ocjax.eval import curve
from ocjax.eval import runner
from ocjax.train import loop
from ocjax.train import writers
# pylint: enable=g-import-not-at-top,wrong-import-position

THRESHOLDS = (0.5, 0.8)


def max_objects(data) -> int | None:
  """The most objects a scene of the data config holds (None: not declared,
  or no limit, as the DeepMind sets' ``max_objects = -1``)."""
  for field in ("max_objects", "num_objects"):
    if field in data and data[field] is not None:
      return int(data[field]) if int(data[field]) >= 0 else None
  return None


def build_config(model: str, preset: str, dataset: str | None,
                 minutes: float, eval_every: int, eval_images: int,
                 overrides: dict):
  """The preset, moved to ``dataset`` when given: the preset's image size,
  and, where the preset's K covers its data's objects, K shifted by the
  change in the most objects per scene (the preset's slots minus its data's
  objects are what the model keeps for the background: sprites' K = 6 for 5
  objects -> K = 4 for 3 tetrominoes)."""
  config = compare.model_config(model, preset, minutes=minutes, seed=0,
                                eval_every=eval_every, overrides={})
  with config.unlocked():
    if dataset and dataset != config.data.name:
      size = int(config.data.image_size)
      module = data_pipelines.DATASETS[dataset]
      import importlib  # pylint: disable=g-import-not-at-top
      data = importlib.import_module(module).default_config()
      data.image_size = size
      old, new = max_objects(config.data), max_objects(data)
      if ("num_slots" in config.model and old is not None and new is not None
          and int(config.model.num_slots) >= old):
        config.model.num_slots = int(config.model.num_slots) - old + new
      config.data = data
      if "image_size" in config.model:
        config.model.image_size = size
    config.eval.num_examples = eval_images
    common.set_fields(config, overrides)
    if "image_size" in config.model:
      config.model.image_size = int(config.data.image_size)
  return config


def discovery(workdir: str, config) -> dict:
  # The untrained model before the first step (eval/untrained.json), then
  # every eval_every steps and at the end.
  loop.train(config, workdir, hooks=runner.training_hooks(
      workdir, eval_every=int(config.train.eval_every), at_end=True))
  run = run_lib.validate(config)
  initial = runner.headline_scores(runner.evaluate_untrained(run, workdir),
                                   run)
  points = curve.read(workdir, run)
  result = {"model": config.model.name, "experiment": config.experiment,
            "dataset": config.data.name,
            "image_size": int(config.data.image_size),
            "batch_size": int(config.train.batch_size),
            "num_slots": int(config.model.get("num_slots", 0)) or None,
            "minutes": float(config.train.time_budget_s) / 60,
            "initial": initial, "curve": points,
            "first_reach": curve.first_reach(points, THRESHOLDS)}
  with open(os.path.join(workdir, "curve.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  curve.plot(curve.read(workdir, run, untrained=True),
             os.path.join(workdir, "curve.png"),
             f"{config.model.name} on {config.data.name} "
             f"{config.data.image_size}x{config.data.image_size}")
  last = points[-1] if points else {}
  reach = ", ".join(
      f"ARI-FG {t}: " + (f"step {v['step']} ({v['train_seconds'] / 60:.1f} "
                         "min)" if v else "not reached")
      for t, v in result["first_reach"].items())
  writers.log("%s: ARI-FG %.3f (untrained %.3f), MSC-FG %.3f after %d steps "
              "(%.1f min); %s. Wrote %s.", config.model.name,
              last.get("ari_fg", np.nan), initial["ari_fg"],
              last.get("msc_fg", np.nan), last.get("step", 0),
              last.get("train_seconds", 0) / 60, reach,
              os.path.join(workdir, "curve.json"))
  return result


def finished(workdir: str, minutes: float) -> dict | None:
  """The run's ``curve.json`` if it spent a budget of ``minutes``."""
  path = os.path.join(workdir, "curve.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    result = json.load(f)
  curve = result.get("curve") or [{}]
  if (abs(result.get("minutes", -1) - minutes) > 1e-9
      or curve[-1].get("train_seconds", 0) < minutes * 60):
    return None
  return result


def _reach(hit: dict | None, steps: int) -> str:
  if hit is None:
    return f"not within {steps:,} steps"
  return f"{hit['step']:,} ({hit['train_seconds'] / 60:.1f} min)"


def table(results: list[dict]) -> str:
  """Markdown: per run the step (training minutes) of first reaching each
  ARI-FG threshold, and the scores at the start and the end."""
  head = ("| model | dataset | K | steps | minutes | untrained ARI-FG | "
          "ARI-FG 0.5 at | ARI-FG 0.8 at | peak ARI-FG | last ARI-FG | "
          "last MSC-FG | last MSE |")
  lines = [head, "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
  for r in results:
    curve = r["curve"] or [{}]
    last = curve[-1]
    steps = int(last.get("step", 0))
    peak = max((p["ari_fg"] for p in r["curve"]), default=float("nan"))
    lines.append(
        f"| {r['model']} | {r['dataset']} | {r.get('num_slots') or '-'} | "
        f"{steps:,} | {last.get('train_seconds', 0) / 60:.1f} | "
        f"{r['initial']['ari_fg']:.3f} | "
        + " | ".join(_reach(r["first_reach"][str(t)], steps)
                     for t in THRESHOLDS)
        + f" | {peak:.3f} | {last.get('ari_fg', float('nan')):.3f} | "
        f"{last.get('msc_fg', float('nan')):.3f} | "
        f"{last.get('mse', float('nan')):.4f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True,
                 help="a model, or several comma-separated")
  p.add_argument("--preset", default="quick")
  p.add_argument("--dataset", default=None,
                 help="a procedural dataset, or several comma-separated "
                 "(default: the preset's)")
  p.add_argument("--minutes", type=float, default=12.0)
  p.add_argument("--eval_every", type=int, default=250)
  p.add_argument("--eval_images", type=int, default=256)
  p.add_argument("--workdir", required=True)
  args, overrides = compare.parse_args_and_overrides(p, argv)
  models = [m for m in args.model.split(",") if m]
  datasets = [d for d in (args.dataset or "").split(",") if d] or [None]
  for d in datasets:
    if d is not None and d not in data_pipelines.DATASETS:
      p.error(f"--dataset: unknown dataset {d!r}; expected one of "
              f"{sorted(data_pipelines.DATASETS)}")
  pairs = [(m, d) for d in datasets for m in models]
  results = []
  for model, dataset in pairs:
    config = build_config(model, args.preset, dataset, args.minutes,
                          args.eval_every, args.eval_images, overrides)
    workdir = args.workdir if len(pairs) == 1 else os.path.join(
        args.workdir, f"{model}_{config.data.name}")
    result = finished(workdir, args.minutes)
    if result is None:
      result = discovery(workdir, config)
    else:
      writers.log("%s on %s: finished earlier (%s).", model,
                  config.data.name, os.path.join(workdir, "curve.json"))
    results.append(result)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "discovery.json"), "w",
            encoding="utf-8") as f:
    json.dump([{k: r[k] for k in r if k != "curve"} for r in results], f,
              indent=2)
  md = table(results)
  with open(os.path.join(args.workdir, "discovery.md"), "w",
            encoding="utf-8") as f:
    f.write(md)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main())
