r"""GENESIS-V2 training (and inference) step time, FLOPs and fraction of peak.

    python benchmarks/train_step.py                    # 64x64, K=7, batch 8 and 32
    python benchmarks/train_step.py --inference        # forward pass only
    python benchmarks/train_step.py --batch=8 --plain  # without our speed-ups

Times the compiled step (forward, backward, Adam) after compilation, as the
median of ``--steps`` runs, and prints seconds per step, images per second,
the FLOPs of the compiled step (XLA's cost analysis), the achieved FLOP/s, and
that as a fraction of a peak measured in the same run (the faster of a large
matmul and a large convolution). Comparable across machines: the fraction of
peak. For the ratio to the official implementation, timed in the same run,
see ``benchmarks/vs_official.py``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ocjax.models import genesis_v2
from ocjax.train import step as step_lib

def _time(fn, *args, steps: int) -> float:
  out = fn(*args)  # warm-up
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def measured_peak(steps: int = 5) -> dict[str, float]:
  """FLOP/s of a large matmul and a large 3x3 convolution (float32)."""
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n))
  mm = jax.jit(lambda a: a @ a)
  t_mm = _time(mm, a, steps=steps)
  x = jax.random.normal(jax.random.key(1), (8, 64, 64, 128))
  w = jax.random.normal(jax.random.key(2), (3, 3, 128, 128))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  t_conv = _time(conv, x, w, steps=steps)
  return {"matmul": 2 * n**3 / t_mm,
          "conv": 2 * 8 * 64 * 64 * 128 * 128 * 9 / t_conv}


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def build(args, batch: int):
  model = genesis_v2.GenesisV2(
      num_slots=args.num_slots, image_size=args.image_size,
      subpixel_deconv=not args.plain, remat=args.remat,
      dtype=jnp.dtype(args.dtype))
  x = jax.random.uniform(jax.random.key(3), (batch, args.image_size,
                                             args.image_size, 3))
  batch_in = {"image": x}
  params = jax.jit(model.init)(
      step_lib.stream_rngs(jax.random.key(0), ("params", "icsbp", "sample")),
      {"image": x[:1]})["params"]
  if args.inference:
    fn = jax.jit(lambda p, b: model.apply(
        {"params": p}, b, rngs=step_lib.stream_rngs(jax.random.key(1),
                                                    model.rng_streams),
        train=False).losses)
    return fn, (params, batch_in)
  from ocjax.objectives import geco as geco_lib  # pylint: disable=g-import-not-at-top
  objective = geco_lib.GecoObjective(geco=geco_lib.Geco(goal=0.5655 * 3 *
                                                        args.image_size**2))
  tx = optax.adam(1e-4)
  state = step_lib.create_state({"params": params}, tx, objective)
  train_step = step_lib.make_train_step(model, objective, tx, seed=0,
                                        grad_accum_steps=args.grad_accum)
  return train_step, (state, batch_in)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", default="8,32")
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--num_slots", type=int, default=7)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--inference", action="store_true")
  p.add_argument("--remat", action="store_true")
  p.add_argument("--grad_accum", type=int, default=1,
                 help="micro-batches per step (train.grad_accum_steps)")
  p.add_argument("--memory_only", action="store_true",
                 help="compile and report XLA's memory estimate, no timing")
  p.add_argument("--plain", action="store_true",
                 help="zero-dilated transposed convolutions (XLA's default)")
  args = p.parse_args()
  kind = "inference" if args.inference else "train"

  if args.memory_only:
    for batch in (int(b) for b in args.batch.split(",")):
      fn, fn_args = build(args, batch)
      compiled = (jax.jit(fn) if args.inference else fn).lower(
          *fn_args).compile()
      mem = compiled.memory_analysis()
      print(f"{args.image_size}x{args.image_size} K={args.num_slots} batch "
            f"{batch}{' remat' if args.remat else ''}: XLA temporaries "
            f"{mem.temp_size_in_bytes / 2**30:.2f} GiB, arguments "
            f"{mem.argument_size_in_bytes / 2**30:.2f} GiB")
    return
  peak = measured_peak()
  best = max(peak.values())
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; "
        f"measured peak: matmul {peak['matmul'] / 1e9:.1f} GFLOP/s, conv "
        f"{peak['conv'] / 1e9:.1f} GFLOP/s")
  print(f"GENESIS-V2 {kind} step, {args.image_size}x{args.image_size}, "
        f"K={args.num_slots}, {args.dtype}{', remat' if args.remat else ''}"
        f"{f', {args.grad_accum} micro-batches' if args.grad_accum > 1 else ''}"
        f"{', plain deconvolutions' if args.plain else ''}")
  header = (f"{'batch':>5s} {'s/step':>8s} {'img/s':>7s} {'GFLOP/step':>11s} "
            f"{'GFLOP/s':>8s} {'of peak':>7s}")
  print(header)
  for batch in (int(b) for b in args.batch.split(",")):
    fn, fn_args = build(args, batch)
    compiled = jax.jit(fn).lower(*fn_args).compile() if args.inference else (
        fn.lower(*fn_args).compile())
    flops = _flops(compiled)
    if args.inference:
      seconds = _time(compiled, *fn_args, steps=args.steps)
    else:
      state, b = fn_args
      times = []
      for i in range(args.steps + 1):
        t = time.perf_counter()
        state, metrics = compiled(state, b)
        jax.block_until_ready(metrics)
        if i:
          times.append(time.perf_counter() - t)
      seconds = float(np.median(times))
    rate = flops / seconds
    print(f"{batch:5d} {seconds:8.3f} {batch / seconds:7.1f} "
          f"{flops / 1e9:11.1f} {rate / 1e9:8.1f} {rate / best:7.1%}")


if __name__ == "__main__":
  main()
