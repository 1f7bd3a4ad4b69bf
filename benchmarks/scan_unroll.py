r"""A training step with its loop rolled vs unrolled, side by side.

    python benchmarks/scan_unroll.py                        # APEX quick, batch 8
    python benchmarks/scan_unroll.py --experiment=experiments/apex.py:p2d --batch=4
    python benchmarks/scan_unroll.py --experiment=experiments/provide.py:quick

Builds the experiment's model, objective and optimizer, compiles the
training step (forward, backward, Adam) once per value of
``model.scan_unroll`` (the models whose time or refinement loop is a scan:
APEX, the video model of paper 004, IODINE, SEQ-IODINE, MONet-G; 1: one
iteration per loop step, 0: fully unrolled) and times each as the median of
``--steps`` runs in the same process, with the FLOPs of the compiled step
(XLA's cost analysis) as a fraction of a peak measured in the same run
(`benchmarks/train_step.py`).
Prints the compile time too: unrolling trades compile time for step time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import train_step as bench
from ocjax import run as run_lib
from ocjax.train import step as step_lib


def build(experiment: str, unroll: int, batch: int, frames: int):
  config = run_lib.load_experiment(experiment)
  if "scan_unroll" not in config.model:
    raise SystemExit(f"{experiment}: model {config.model.name!r} has no "
                     "model.scan_unroll field.")
  with config.unlocked():
    config.model.scan_unroll = unroll
    if frames and "num_frames" in config.data:
      config.data.num_frames = frames
  run = run_lib.build(config)
  key = run.model.input_key
  shape = run.model.dummy_batch(1)[key].shape[1:]
  if key == "video":
    shape = (int(config.data.num_frames),) + shape[1:]
  x = jax.random.uniform(jax.random.key(3), (batch,) + shape)
  state = run.init_state()
  fn = step_lib.make_train_step(run.model, run.objective, run.tx, seed=0)
  return fn, state, {key: x}, (shape[0] if key == "video" else 1)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--experiment", default="experiments/apex.py:quick")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--frames", type=int, default=0,
                 help="clip length (default: the preset's)")
  p.add_argument("--unroll", default="1,0",
                 help="model.scan_unroll values (0: all frames)")
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  peak = max(bench.measured_peak().values())
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; "
        f"measured peak {peak / 1e9:.1f} GFLOP/s")
  rows = []
  for unroll in (int(u) for u in args.unroll.split(",")):
    fn, state, batch, t = build(args.experiment, unroll, args.batch,
                                args.frames)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = bench._flops(compiled)  # pylint: disable=protected-access
    times = []
    for _ in range(args.steps + 1):  # the first is a warm-up
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
    sec = float(np.median(times[1:]))
    rows.append((unroll, sec, compile_s, flops))
  # XLA's cost analysis counts a loop's body once: the same step's FLOPs
  # are the largest count (the unrolled one).
  flops = max(r[3] for r in rows)
  for unroll, sec, compile_s, _ in rows:
    label = "all" if unroll == 0 else str(unroll)
    print(f"{args.experiment}, batch {args.batch}, T={t}, scan_unroll="
          f"{label}: compile {compile_s:.1f} s, {sec:.3f} s/step, "
          f"{flops / 1e9:.2f} GFLOP/step, {flops / sec / 1e9:.1f} GFLOP/s = "
          f"{flops / sec / peak:.1%} of peak", flush=True)
  if len(rows) > 1:
    base = rows[0][1]
    for unroll, sec, _, _ in rows[1:]:
      print(f"scan_unroll={unroll or 'all'} vs {rows[0][0] or 'all'}: "
            f"{base / sec:.2f}x faster per step (same run)")


if __name__ == "__main__":
  main()
