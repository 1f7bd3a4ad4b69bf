r"""Train several models the same way and compare them in one table.

    python -m ocjax.compare --workdir=runs/compare \
        [--models=genesis_v2,monet,genesis,slot_attention] [--preset=quick] \
        [--minutes=10] [--seed=0] [--eval_every=0] [--config.x.y=v ...]

Each model trains its experiment's ``preset`` (default ``quick``) in
``WORKDIR/<model>`` for the same training time (``train.time_budget_s``:
time in training steps, figures, checkpoints and evaluation left out) on the
same data (the presets must agree on the ``data`` section; the command
refuses otherwise) with the same seed, then the last checkpoint and the
untrained initialisation are scored by the evaluation runner. Re-running the
command resumes what a kill interrupted and skips finished models.

Writes ``WORKDIR/compare.md`` and ``WORKDIR/compare.json``: per model the
steps taken, steps/s, parameters, and ARI-FG, MSC-FG (the model's reported
segmentation in its first evaluation mode), the best ARI-FG of any of its
segmentations, and MSE, each after training and at initialisation; with
``--eval_every`` also the learning curve (``eval/<step>.json`` per model,
with its ``train_seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

# Before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from experiments import common
from ocjax import run as run_lib
from ocjax.eval import runner
from ocjax.train import loop
from ocjax.train import writers
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_MODELS = ("genesis_v2", "monet", "genesis", "slot_attention")
DONE_FILE = "compare_done.json"


def model_config(name: str, preset: str, *, minutes: float, seed: int,
                 eval_every: int, overrides: dict[str, Any]):
  """The model's preset with the comparison's budget, seed and schedule."""
  spec = f"experiments/{name}.py:{preset}"
  config = run_lib.load_experiment(spec)
  with config.unlocked():
    config.experiment = spec
    config.seed = seed
    config.train.time_budget_s = float(minutes) * 60.0
    # The budget ends the run; the step count only has to be out of reach.
    config.train.num_steps = max(int(config.train.num_steps), 10_000_000)
    config.train.eval_every = int(eval_every)
    common.set_fields(config, overrides)
  return config


def _parameters(state) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(state.params)))


def compare_model(name: str, workdir: str, config) -> dict[str, Any]:
  """Trains (or resumes) one model and scores it; returns its table row."""
  done = os.path.join(workdir, DONE_FILE)
  if os.path.exists(done):
    with open(done, encoding="utf-8") as f:
      row = json.load(f)
    writers.log("%s: finished earlier (%s).", name, done)
    return row
  # The untrained model, scored the same way before the first step (what
  # training added), and the learning curve with --eval_every.
  hooks = runner.training_hooks(workdir,
                                eval_every=int(config.train.eval_every))
  t0 = time.monotonic()
  loop.train(config, workdir, hooks=hooks)
  wall = time.monotonic() - t0
  run = run_lib.build(run_lib.config_from_workdir(workdir))
  initial = runner.evaluate_untrained(run, workdir)
  checkpointer = run.checkpointer(workdir, read_only=True)
  try:
    state, meta = run.restore(checkpointer)
  finally:
    checkpointer.close()
  steps = int(state.step)
  seconds = float(meta.get("train_seconds", float("nan")))
  results = runner.evaluate_state(run, workdir, state, steps,
                                  {"train_seconds": seconds})
  row = {"model": name, "experiment": config.experiment,
         "steps": steps, "train_seconds": seconds,
         "steps_per_sec": steps / seconds if seconds > 0 else float("nan"),
         "batch_size": int(config.train.batch_size),
         "parameters": _parameters(state),
         "trained": runner.headline_scores(results, run),
         "initial": runner.headline_scores(initial, run),
         "wall_seconds_this_call": wall,
         "num_images": results.get("num_images")}
  if jax.process_index() == 0:
    with open(done, "w", encoding="utf-8") as f:
      json.dump(row, f, indent=2)
  return row


def format_markdown(rows: Sequence[dict[str, Any]], *, preset: str,
                    minutes: float, data: str) -> str:
  head = ("| model | steps | steps/s | parameters | ARI-FG | MSC-FG | "
          "best ARI-FG (any masks) | MSE | untrained ARI-FG | untrained "
          "best ARI-FG |")
  lines = [f"Preset `{preset}` of each model on `{data}`, {minutes:g} "
           "minutes of training each, same seed; scores on the held-out "
           "test images (the model's reported masks).", "", head,
           "|" + "|".join(["---"] + ["---:"] * 9) + "|"]
  for r in rows:
    t, i = r["trained"], r["initial"]
    lines.append(
        f"| {r['model']} | {r['steps']:,} | {r['steps_per_sec']:.2f} | "
        f"{r['parameters']:,} | {t['ari_fg']:.3f} | {t['msc_fg']:.3f} | "
        f"{t['best_ari_fg']:.3f} | {t['mse']:.4f} | {i['ari_fg']:.3f} | "
        f"{i['best_ari_fg']:.3f} |")
  return "\n".join(lines) + "\n"


def compare(workdir: str, models: Sequence[str], *, preset: str = "quick",
            minutes: float = 10.0, seed: int = 0, eval_every: int = 0,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs the comparison; writes and returns the table."""
  overrides = overrides or {}
  configs = {m: model_config(m, preset, minutes=minutes, seed=seed,
                             eval_every=eval_every, overrides=overrides)
             for m in models}
  datas = {m: json.loads(c.data.to_json_best_effort())
           for m, c in configs.items()}
  first = models[0]
  differ = [m for m in models if datas[m] != datas[first]]
  if differ:
    fields = sorted(k for m in differ for k in set(datas[m]) | set(
        datas[first]) if datas[m].get(k) != datas[first].get(k))
    raise ValueError(
        f"The {preset!r} presets of {differ} and {first!r} train on "
        f"different data (fields {sorted(set(fields))}); override them "
        "(--config.data.<field>=...) to compare on the same data.")
  rows = [compare_model(m, os.path.join(workdir, m), configs[m])
          for m in models]
  data = configs[first].data
  table = {"preset": preset, "minutes": minutes, "seed": seed,
           "data": datas[first], "rows": rows}
  md = format_markdown(rows, preset=preset, minutes=minutes,
                       data=f"{data.name} {data.image_size}x{data.image_size}")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "compare.json"), "w",
              encoding="utf-8") as f:
      json.dump(table, f, indent=2)
    with open(os.path.join(workdir, "compare.md"), "w",
              encoding="utf-8") as f:
      f.write(md)
  writers.log("Comparison (%s):\n%s", os.path.join(workdir, "compare.md"),
              md)
  return table


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.startswith("--config."):
      raise ValueError(f"Unexpected argument {item!r}; overrides look like "
                       "--config.section.field=value.")
    try:
      out[key[len("--config."):]] = json.loads(value)
    except ValueError:
      out[key[len("--config."):]] = value
  return out


def parse_args_and_overrides(parser: argparse.ArgumentParser,
                             argv: Sequence[str] | None
                             ) -> tuple[argparse.Namespace, dict[str, Any]]:
  """``parser``'s arguments and the ``--config.section.field=value``
  overrides among ``argv`` (JSON values, else strings); anything else is
  the parser's usage error (exit 2)."""
  args, rest = parser.parse_known_args(argv)
  try:
    return args, _parse_overrides(rest)
  except ValueError as e:
    parser.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ocjax.compare",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
  parser.add_argument("--preset", default="quick")
  parser.add_argument("--minutes", type=float, default=10.0,
                      help="training time per model")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--eval_every", type=int, default=0,
                      help="steps between evaluations (learning curve); "
                      "0: only at the end")
  args, rest = parser.parse_known_args(argv)
  try:
    compare(args.workdir, [m for m in args.models.split(",") if m],
            preset=args.preset, minutes=args.minutes, seed=args.seed,
            eval_every=args.eval_every, overrides=_parse_overrides(rest))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def console() -> None:
  """The ``ocjax-compare`` console script."""
  sys.exit(main())


if __name__ == "__main__":
  sys.exit(main())
