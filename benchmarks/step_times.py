r"""Training-step time of experiments at several batch sizes, alternating.

    python benchmarks/step_times.py --config=experiments/provide.py:quick \
        --batch=8,4 [--rounds=6] [--train_steps=0,30000] [--without_stages] \
        [--without_frozen] \
        [--config.x.y=v ...]

Builds the experiment's training step for each batch size (micro-batches as
the trainer resolves them), then times the steps alternately, ``--rounds``
times each, on uniform-noise inputs (video models get clips of
``data.num_frames``), and prints each side's median and range of seconds
per step and the ratio of the medians to the first. ``--train_steps``
starts the train state's step counter at each of the given values (models
that declare ``uses_step`` follow it: AST-Seg's curriculum freezes its
background for the first 30k), one side per batch size and counter. Each
side runs the model's training stage at its counter as the trainer does
(`ocjax.train.step.stage_of`: AST-Seg's phase 2 compiles without the
background's gradients); ``--without_stages`` adds, for a model that has
stages, the same side without one (the step-only computation, equal in
value); ``--without_frozen`` adds, where the stage freezes parameters
(``frozen_parameters``), the same side with the optimizer updating them too
(``make_train_step(skip_frozen=False)``, equal in value). ``--config.x.y=v`` sets any field (JSON values). Alternating in one
process is the comparison this machine allows: its speed drifts by 20% or
more between runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import ocjax  # noqa: F401  (XLA flags before JAX starts)
import jax

from experiments import common
from ocjax import compare
from ocjax import run as run_lib
from ocjax.train import step as step_lib


def build_step(experiment: str, batch_size: int,
               overrides: dict | None = None, skip_frozen: bool = True):
  """``(step, state, batch, micro-batches, model)`` of ``experiment`` (with
  the fields ``overrides``) at a batch; ``skip_frozen`` as in
  `ocjax.train.step.make_train_step`."""
  config = run_lib.load_experiment(experiment)
  with config.unlocked():
    common.set_fields(config, dict(overrides or {}))
    config.train.batch_size = batch_size
  run = run_lib.build(config)
  size = int(config.data.image_size)
  frames = ((int(config.data.num_frames),)
            if run.model.input_key == "video" else ())
  x = np.random.default_rng(0).random(
      (batch_size,) + frames + (size, size, 3), np.float32)
  accum = step_lib.resolve_grad_accum(config.train, batch_size,
                                      model=run.model)
  step = step_lib.make_train_step(run.model, run.objective, run.tx, seed=0,
                                  grad_accum_steps=accum,
                                  skip_frozen=skip_frozen)
  return (step, run.init_state(),
          {run.model.input_key: jax.numpy.asarray(x)}, accum, run.model)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True,
                 help="experiments/<model>.py[:preset[,options]]")
  p.add_argument("--batch", default="8,4", help="comma-separated sizes")
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--train_steps", default="",
                 help="comma-separated start values of the train state's "
                 "step counter (default: the initial state's)")
  p.add_argument("--without_stages", action="store_true",
                 help="also time each counter without the model's training "
                 "stage (models that declare training_stages)")
  p.add_argument("--without_frozen", action="store_true",
                 help="also time each side whose stage freezes parameters "
                 "with the optimizer updating them too")
  args, overrides = compare.parse_args_and_overrides(p, argv)
  sizes = [int(b) for b in args.batch.split(",")]
  counters = ([int(s) for s in args.train_steps.split(",")]
              if args.train_steps else [None])
  sides, names = [], []
  for b in sizes:
    step, state0, batch, accum, model = build_step(args.config, b, overrides)
    full_step = (build_step(args.config, b, overrides, skip_frozen=False)[0]
                 if args.without_frozen else None)
    for counter in counters:
      stage = step_lib.stage_of(model, int(state0.step) if counter is None
                                else counter)
      stages = [stage, None] if (
          args.without_stages and stage is not None) else [stage]
      variants = [(s, step, "") for s in stages]
      if full_step is not None and step_lib.frozen_of(model, stage):
        variants.append((stage, full_step, ", frozen parameters updated"))
      for s, step_fn, note in variants:
        name = f"batch {b}" + ("" if counter is None else f", step {counter}")
        name += ("" if s is None else f", stage {s}") + note
        state = jax.tree.map(jax.numpy.copy, state0)  # the step donates it
        if counter is not None:
          state = state.replace(step=jax.numpy.int32(counter))
        fn = functools.partial(step_fn, stage=s)
        start = time.perf_counter()
        for _ in range(2):  # compiles (the second call sees its output)
          state, metrics = fn(state, batch)
          jax.block_until_ready(metrics)
        print(f"{name}: {accum} micro-batch(es), compile and two steps "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        sides.append([fn, state, batch, []])
        names.append((name, b))
  for _ in range(args.rounds):
    for side in sides:
      step, state, batch, times = side
      start = time.perf_counter()
      side[1], metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  print(f"{args.config} training step, {args.rounds} alternating rounds")
  first = float(np.median(sides[0][3]))
  for (name, b), (_, _, _, times) in zip(names, sides):
    med = float(np.median(times))
    print(f"  {name}: median {med:.3f} s [{min(times):.3f}, "
          f"{max(times):.3f}], {b / med:.1f} examples/s, "
          f"{med / first:.2f}x the first's time")
  return 0


if __name__ == "__main__":
  sys.exit(main())
