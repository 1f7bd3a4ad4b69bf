r"""The trainer with and without its input cache, alternating, end to end.

    python benchmarks/input_cache.py \
        [--config=experiments/ast_seg.py:shapestacks] [--data=sprites] \
        [--num_train=64] [--batch=8] [--steps=21] [--rounds=2] \
        [--config.x.y=v ...]

Runs ``ocjax.train.loop.train`` on the experiment (its data replaced by the
procedural dataset ``--data`` at the model's image size with
``--num_train`` training examples, so no dataset directory is needed) for
``--steps`` steps in a fresh working directory, alternately with
``train.cache_inputs`` on and off, ``--rounds`` times each. AST-Seg's
default is its curriculum's phase 2 (the shapestacks preset: 64x64, K = 6,
the complex background autoencoder, frozen): with the cache the trainer
computes each example's background once, in an ordered pass, and then
reads it back (`ocjax.train.input_cache`); without it, every step runs the
frozen autoencoder's forward pass. For each side it prints the trainer's
own steps per second (``steps_per_sec`` of the run's last logged row: steps
2..N, compilation, figures and checkpoints excluded, as the trainer's clock
counts), the cache's one-off build and the host time spent looking batches
up. Alternating in one process is the comparison this machine allows: its
speed drifts by 20% or more between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import ocjax  # noqa: F401  (XLA flags before JAX starts)

import data_pipelines
from experiments import common
from ocjax import compare
from ocjax import run as run_lib
from ocjax.train import input_cache
from ocjax.train import loop


def config_for(experiment: str, *, data: str, num_train: int, batch: int,
               steps: int, cache: bool, overrides: dict):
  config = run_lib.load_experiment(experiment)
  with config.unlocked():
    common.set_fields(config, dict(overrides))
    size = int(config.model.image_size)
    config.data = data_pipelines.dataset_config(
        data, overrides=[f"image_size={size}", f"num_train={num_train}"])
    config.model.image_size = size
    config.train.batch_size = batch
    config.train.num_steps = steps
    config.train.log_every = steps
    config.train.image_every = 10 * steps
    config.train.checkpoint_every = 10 * steps
    config.train.eval_every = 0
    config.train.cache_inputs = cache
  return config


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="experiments/ast_seg.py:shapestacks")
  p.add_argument("--data", default="sprites")
  p.add_argument("--num_train", type=int, default=64)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=21)
  p.add_argument("--rounds", type=int, default=2)
  args, overrides = compare.parse_args_and_overrides(p, argv)
  timings = {"build": [], "fill": []}
  build, fill = input_cache.InputCache._build, input_cache.InputCache.fill  # pylint: disable=protected-access

  def timed_build(self, *a):
    t = time.perf_counter()
    out = build(self, *a)
    timings["build"].append(time.perf_counter() - t)
    return out

  def timed_fill(self, inputs):
    t = time.perf_counter()
    out = fill(self, inputs)
    if self.active:
      timings["fill"].append(time.perf_counter() - t)
    return out

  input_cache.InputCache._build = timed_build  # pylint: disable=protected-access
  input_cache.InputCache.fill = timed_fill
  try:
    rates = {True: [], False: []}
    with tempfile.TemporaryDirectory() as root:
      for r in range(args.rounds):
        for cache in (True, False):
          config = config_for(args.config, data=args.data,
                              num_train=args.num_train, batch=args.batch,
                              steps=args.steps, cache=cache,
                              overrides=overrides)
          workdir = os.path.join(root, f"{r}_{int(cache)}")
          loop.train(config, workdir)
          with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
          rates[cache].append(float(rows[-1]["steps_per_sec"]))
  finally:
    input_cache.InputCache._build, input_cache.InputCache.fill = build, fill  # pylint: disable=protected-access
  print(f"{args.config} on {args.num_train} {args.data} examples, batch "
        f"{args.batch}, {args.steps} steps, {args.rounds} alternating rounds")
  med = {}
  for cache in (True, False):
    seconds = [1 / x for x in rates[cache]]
    med[cache] = float(np.median(seconds))
    print(f"  cache_inputs={cache}: {med[cache]:.3f} s/step (median; "
          f"{min(seconds):.3f}-{max(seconds):.3f})")
  print(f"  without / with the cache: {med[False] / med[True]:.2f}x")
  if timings["build"]:
    print(f"  cache build (ordered pass over {args.num_train} examples): "
          f"median {np.median(timings['build']):.2f} s")
  if timings["fill"]:
    print(f"  batch look-up: median {1e3 * np.median(timings['fill']):.1f} "
          f"ms per step")
  return 0


if __name__ == "__main__":
  sys.exit(main())
