r"""A model's stride-2 transposed convolutions, each form timed side by side.

    python benchmarks/transposed_convs.py --config=experiments/ast_seg.py:shapestacks \
        --batch=8 [--rounds=5] [--step] [--train_step=N] [--layers=N] \
        [--config.x.y=v ...]

`ocjax.nn.conv_transpose` computes a stride-2 transposed convolution that
doubles the size in two ways with the same numbers: ``subpixel`` (phase
convolutions, with the kernel gradients as matmuls where the model asks;
for a call the model makes as col2im, as AST-Seg's networks asked on CPU) and
``col2im`` (one matmul of every input pixel with every tap, then each phase
adds its taps' shifted slices). This script records the distinct calls of
either function in the model's forward pass at ``--batch`` (tracing only),
times the forward pass and both gradients of each call in both forms, jitted,
alternating ``--rounds`` times, and prints the medians, their ratio, and the
GFLOP/s (three times the forward's multiply-adds x 2) of the form the model
uses as a fraction of the peak of a large convolution measured in the same
run. ``--step`` also times the whole training step three ways, alternating:
as the model computes it, with every one of these calls as ``subpixel`` and
with every one as ``col2im`` (the ratios per round, median [min, max]), at
the train state's step ``--train_step``; ``--config.x.y=v`` sets any field
(JSON values), e.g. ``--config.model.background_training=joint``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import ocjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import jax.numpy as jnp

from benchmarks import train_step
from benchmarks import vs_official as vs
from experiments import common
from ocjax import compare
from ocjax import run as run_lib
from ocjax.nn import conv_transpose

FORMS = ("subpixel", "col2im")
_ORIGINAL = {"subpixel": conv_transpose.conv_transpose_subpixel,
             "col2im": conv_transpose.conv_transpose_col2im}


def _compute(form: str, x, kernel, padding, output_padding,
             matmul_grad: bool | None = None):
  """``form``; subpixel with ``matmul_grad`` (None: on CPU, as AST-Seg's
  networks ask)."""
  if form == "subpixel":
    if matmul_grad is None:
      matmul_grad = jax.default_backend() == "cpu"
    return _ORIGINAL[form](x, kernel, padding, output_padding,
                           matmul_grad=matmul_grad)
  return _ORIGINAL[form](x, kernel, padding, output_padding)


@contextlib.contextmanager
def patched(record: list | None = None, force: str | None = None):
  """Within: calls of either form are recorded in ``record`` (distinct
  shapes, in call order) and, with ``force``, computed as that form."""
  def wrap(form):
    def call(x, kernel, padding, output_padding, **kwargs):
      if record is not None:
        entry = dict(x=tuple(x.shape), kernel=tuple(kernel.shape),
                     padding=padding, output_padding=output_padding,
                     form=form, dtype=jnp.dtype(x.dtype).name,
                     matmul_grad=kwargs.get("matmul_grad"))
        if entry not in record:
          record.append(entry)
      if force is None:
        return _ORIGINAL[form](x, kernel, padding, output_padding, **kwargs)
      return _compute(force, x, kernel, padding, output_padding,
                      kwargs.get("matmul_grad"))
    return call

  try:
    conv_transpose.conv_transpose_subpixel = wrap("subpixel")
    conv_transpose.conv_transpose_col2im = wrap("col2im")
    yield
  finally:
    conv_transpose.conv_transpose_subpixel = _ORIGINAL["subpixel"]
    conv_transpose.conv_transpose_col2im = _ORIGINAL["col2im"]


def record_calls(config, batch_size: int) -> list[dict]:
  """The distinct transposed convolutions of the forward pass."""
  run = run_lib.build(config)
  batch = {k: np.repeat(v[:1], batch_size, axis=0)
           for k, v in run.model.dummy_batch(1).items()}
  state = jax.eval_shape(run.init_state)
  calls = []
  with patched(record=calls):
    jax.eval_shape(run.model_fn("eval"), state.variables(), batch)
  return calls


def flops(call: dict) -> float:
  """Forward multiply-adds x 2 (every tap of every input pixel)."""
  return 2.0 * np.prod(call["x"][:3]) * np.prod(call["kernel"])


def time_layers(calls, rounds: int, peak: float) -> None:
  print(f"{'x':>20} {'kernel':>20} {'model':>8} {'subpixel ms':>11} "
        f"{'col2im ms':>9} {'col2im/sub':>10} {'GFLOP/s':>8} {'of peak':>7}")
  totals = dict.fromkeys(FORMS + ("model",), 0.0)
  key = jax.random.key(0)
  for i, call in enumerate(calls):
    kx, kk = jax.random.split(jax.random.fold_in(key, i))
    dtype = jnp.dtype(call["dtype"])
    x = jax.random.normal(kx, call["x"], dtype)
    k = (jax.random.normal(kk, call["kernel"], dtype)
         / np.sqrt(np.prod(call["kernel"][:3])))
    fns = {form: jax.jit(jax.grad(  # pylint: disable=g-long-lambda
        lambda x, k, form=form: jnp.sum(_compute(
            form, x, k, call["padding"], call["output_padding"],
            call["matmul_grad"]) ** 2),
        argnums=(0, 1))) for form in FORMS}
    for fn in fns.values():
      jax.block_until_ready(fn(x, k))  # compiles
    times = {form: [] for form in FORMS}
    for _ in range(rounds):
      for form, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x, k))
        times[form].append(time.perf_counter() - start)
    med = {form: float(np.median(t)) for form, t in times.items()}
    for form in FORMS:
      totals[form] += med[form]
    totals["model"] += med[call["form"]]
    rate = 3 * flops(call) / med[call["form"]]
    print(f"{str(call['x']):>20} {str(call['kernel']):>20} "
          f"{call['form']:>8} {med['subpixel'] * 1e3:11.1f} "
          f"{med['col2im'] * 1e3:9.1f} {med['col2im'] / med['subpixel']:10.2f}"
          f" {rate / 1e9:8.1f} {rate / peak:7.1%}", flush=True)
  print(f"total ms: all subpixel {totals['subpixel'] * 1e3:.1f}, all col2im "
        f"{totals['col2im'] * 1e3:.1f}, the model's forms "
        f"{totals['model'] * 1e3:.1f}")


def time_steps(config, batch_size: int, rounds: int,
               train_step_counter: int | None) -> None:
  images = np.random.default_rng(0).random(
      (batch_size, int(config.data.image_size), int(config.data.image_size),
       3), np.float32)
  steps = {}
  for name, force in (("model", None), ("subpixel", "subpixel"),
                      ("col2im", "col2im")):
    with patched(force=force):
      steps[name], _, _ = vs.step_closure(config, images, inference=False,
                                          step=train_step_counter)
      steps[name]()  # traced and compiled under the patch
  for step in steps.values():
    step()
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      times[name].append(vs.timed(step))
  model = np.array(times["model"])
  print(f"training step, batch {batch_size}, {rounds} alternating rounds:")
  for name, t in times.items():
    ratio = np.array(t) / model
    print(f"  {name:>8}: {np.median(t):.3f} s, / model's "
          f"{np.median(ratio):.2f}x [{ratio.min():.2f}, {ratio.max():.2f}]")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True,
                 help="experiments/<model>.py[:preset[,options]]")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--layers", type=int, default=0,
                 help="time only the first N distinct calls (0: all)")
  p.add_argument("--step", action="store_true",
                 help="also time the training step in the three ways")
  p.add_argument("--train_step", type=int, default=None,
                 help="the train state's step counter (models that declare "
                 "uses_step)")
  args, overrides = compare.parse_args_and_overrides(p, argv)
  config = run_lib.load_experiment(args.config)
  with config.unlocked():
    common.set_fields(config, overrides)
    common.set_fields(config, {"train.batch_size": args.batch})
  calls = record_calls(config, args.batch)
  if args.layers > 0:
    calls = calls[:args.layers]
  if not calls:
    print(f"{args.config}: the model computes no stride-2 transposed "
          "convolution with ocjax.nn.conv_transpose.")
    return 0
  peak = train_step.measured_peak()["conv"]
  print(f"{args.config}, batch {args.batch}: {len(calls)} distinct transposed"
        f" convolutions, forward and both gradients, medians of {args.rounds}"
        f" alternating rounds; peak (a large 3x3 convolution, this run) "
        f"{peak / 1e9:.0f} GFLOP/s")
  time_layers(calls, args.rounds, peak)
  if args.step:
    time_steps(config, args.batch, args.rounds, args.train_step)
  return 0


if __name__ == "__main__":
  sys.exit(main())
