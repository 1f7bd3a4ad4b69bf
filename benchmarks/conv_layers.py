r"""Every convolution of a model, timed alone: XLA's against im2col + matmul.

    python benchmarks/conv_layers.py --config=experiments/ast_seg.py:shapestacks \
        --batch=8 [--rounds=5] [--grad] [--layers=N] [--torch]

Records the shapes of every `ocjax.nn.conv.conv2d` call of the model's
forward pass at ``--batch`` (tracing only; convolutions the model computes
elsewhere, e.g. Flax's ``nn.Conv``, are not seen), then times each distinct
convolution alone, jitted, XLA's ``conv_general_dilated`` and im2col + one
matmul alternating ``--rounds`` times, and prints the medians, their ratio,
the achieved GFLOP/s and its fraction of the peak of a large convolution
measured in the same run. With ``--torch`` PyTorch's ``conv2d`` (NCHW, as the
official codes call it, all CPU threads) of the same shapes alternates with
them, and ``model/torch`` says where our layer is slower than theirs. With ``--grad`` it times the gradient with
respect to input and kernel instead, with XLA's kernel-gradient convolution
against the kernel gradient as a matmul (`conv2d`'s ``matmul_grad``; stride 1
only; on small maps the matmul forward, differentiated). The column
``model`` says which of the two the model's call uses on a CPU: where the
other is much faster, that layer is the place to look. GFLOP/s count the
forward's multiply-adds, three times that for a gradient.
"""

from __future__ import annotations

import argparse
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
from ocjax import run as run_lib
from ocjax.nn import conv


def record_convolutions(experiment: str, batch_size: int) -> list[dict]:
  """The distinct ``conv2d`` calls of the forward pass of ``experiment`` at
  ``batch_size``, in call order: x and kernel shapes, padding, strides and
  whether the call asked for ``matmul_grad``."""
  config = run_lib.load_experiment(experiment)
  with config.unlocked():
    config.train.batch_size = batch_size
  run = run_lib.build(config)
  batch = {k: np.repeat(v[:1], batch_size, axis=0)
           for k, v in run.model.dummy_batch(1).items()}
  calls, original = [], conv.conv2d

  def recording(x, kernel, padding, strides=(1, 1), **kwargs):
    call = dict(x=tuple(x.shape), kernel=tuple(kernel.shape),
                padding=tuple(map(tuple, padding)), strides=tuple(strides),
                matmul_grad=bool(kwargs.get("matmul_grad", False)),
                dtype=jnp.dtype(x.dtype).name)
    if call not in calls:
      calls.append(call)
    return original(x, kernel, padding, strides, **kwargs)

  state = jax.eval_shape(run.init_state)  # (its convolutions: batch 1)
  conv.conv2d = recording
  try:
    jax.eval_shape(run.model_fn("eval"), state.variables(), batch)
  finally:
    conv.conv2d = original
  return calls


def output_pixels(call: dict) -> int:
  """``H_out W_out`` of ``call`` (`ocjax.nn.conv`'s own arithmetic)."""
  _, h, w, _ = call["x"]
  kh, kw = call["kernel"][:2]
  (ly, hy), (lx, hx) = call["padding"]
  sy, sx = call["strides"]
  return (conv._output_size(h, kh, sy, ly, hy)  # pylint: disable=protected-access
          * conv._output_size(w, kw, sx, lx, hx))  # pylint: disable=protected-access


def flops(call: dict) -> float:
  """Multiply-adds x 2 of the forward convolution."""
  return 2.0 * call["x"][0] * output_pixels(call) * np.prod(call["kernel"])


def small_map(call: dict) -> bool:
  """Whether `conv2d` computes ``call`` as im2col + matmul on a CPU."""
  return output_pixels(call) <= conv.SMALL_MAP_PIXELS


def candidates(call: dict, grad: bool) -> dict:
  """The two jitted ways to compute ``call`` (forward, or its gradient):
  XLA's convolution (and its kernel-gradient convolution), and im2col +
  matmul (on small maps the forward as a matmul, differentiated by XLA;
  elsewhere the kernel gradient as a matmul, `conv2d`'s ``matmul_grad``)."""
  padding, strides = call["padding"], call["strides"]
  lax_conv = lambda x, k: conv._lax_conv(x, k, padding, strides)  # pylint: disable=protected-access
  matmul_conv = lambda x, k: conv._matmul_conv(x, k, padding, strides)  # pylint: disable=protected-access
  if not grad:
    return {"xla": jax.jit(lax_conv), "matmul": jax.jit(matmul_conv)}
  grad_conv = lambda x, k: conv.conv2d(  # pylint: disable=g-long-lambda
      x, k, padding, strides, matmul_grad=True, small_maps=False)

  def gradient(fn):
    return jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) ** 2),
                            argnums=(0, 1)))

  return {"xla": gradient(lax_conv),
          "matmul": gradient(matmul_conv if small_map(call) else grad_conv)}


def torch_candidate(call: dict, grad: bool, x: np.ndarray, k: np.ndarray):
  """PyTorch's ``conv2d`` of ``call`` on NCHW copies of ``x`` [B, H, W, C]
  and ``k`` [kh, kw, C, O] (its forward, or forward and both gradients),
  as a function of no arguments that returns when the work is done. Padding
  is symmetric in the models' convolutions; an asymmetric one is padded
  explicitly first."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  xt = torch.from_numpy(np.ascontiguousarray(
      np.asarray(x, np.float32).transpose(0, 3, 1, 2)))
  kt = torch.from_numpy(np.ascontiguousarray(
      np.asarray(k, np.float32).transpose(3, 2, 0, 1)))
  (ly, hy), (lx, hx) = call["padding"]
  symmetric = ly == hy and lx == hx and min(ly, lx) >= 0
  pad = (ly, lx) if symmetric else 0

  def forward(xt, kt):
    if not symmetric:
      xt = F.pad(xt, (lx, hx, ly, hy))
    return F.conv2d(xt, kt, stride=call["strides"], padding=pad)

  if not grad:
    def run():
      with torch.no_grad():
        return forward(xt, kt)
    return run
  xt.requires_grad_(True)
  kt.requires_grad_(True)

  def run_grad():
    xt.grad = kt.grad = None
    (forward(xt, kt) ** 2).sum().backward()
    return kt.grad
  return run_grad


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True,
                 help="experiments/<model>.py[:preset[,options]]")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--grad", action="store_true",
                 help="time the gradients (input and kernel)")
  p.add_argument("--layers", type=int, default=0,
                 help="time only the first N distinct convolutions (0: all)")
  p.add_argument("--torch", action="store_true",
                 help="time PyTorch's conv2d of the same shapes beside ours")
  args = p.parse_args(argv)
  calls = record_convolutions(args.config, args.batch)
  if args.layers > 0:
    calls = calls[:args.layers]
  if not calls:
    print(f"{args.config}: the model calls no ocjax.nn.conv.conv2d.")
    return 0
  peak = train_step.measured_peak()["conv"]
  what = "gradient (input and kernel)" if args.grad else "forward"
  print(f"{args.config}, batch {args.batch}: {len(calls)} distinct "
        f"convolutions, {what}, medians of {args.rounds} alternating rounds; "
        f"peak (a large 3x3 convolution, this run) {peak / 1e9:.0f} GFLOP/s")
  print(f"{'x':>20} {'kernel':>18} {'stride':>6} {'model':>6} "
        f"{'xla ms':>8} {'matmul ms':>9} {'matmul/xla':>10} "
        f"{'GFLOP/s':>8} {'of peak':>7}"
        + (f" {'torch ms':>8} {'model/torch':>11}" if args.torch else ""))
  totals = {"xla": 0.0, "matmul": 0.0, "model": 0.0, "best": 0.0,
            "torch": 0.0}
  key = jax.random.key(0)
  for i, call in enumerate(calls):
    if args.grad and call["strides"] != (1, 1) and not small_map(call):
      continue  # matmul_grad is for stride 1 only
    kx, kk = jax.random.split(jax.random.fold_in(key, i))
    dtype = jnp.dtype(call["dtype"])
    x = jax.random.normal(kx, call["x"], dtype)
    k = (jax.random.normal(kk, call["kernel"], dtype)
         / np.sqrt(np.prod(call["kernel"][:3])))
    fns = candidates(call, args.grad)
    if args.torch:
      run_torch = torch_candidate(call, args.grad, x, k)
      fns["torch"] = lambda x, k, run_torch=run_torch: run_torch()
    times = {name: [] for name in fns}
    for fn in fns.values():
      jax.block_until_ready(fn(x, k))  # compiles
    for _ in range(args.rounds):
      for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x, k))
        times[name].append(time.perf_counter() - start)
    med = {name: float(np.median(t)) for name, t in times.items()}
    # The model's choice on a CPU: small maps as a matmul
    # (`conv.SMALL_MAP_PIXELS`); elsewhere the kernel gradient as a matmul
    # where the call asked for it.
    used = ("matmul" if small_map(call) or (args.grad and call["matmul_grad"])
            else "xla")
    for name in ("xla", "matmul"):
      totals[name] += med[name]
    totals["model"] += med[used]
    totals["best"] += min(med["xla"], med["matmul"])
    work = flops(call) * (3.0 if args.grad else 1.0)  # forward + 2 grads
    rate = work / med[used]
    print(f"{str(call['x']):>20} {str(call['kernel']):>18} "
          f"{str(call['strides'][0]):>6} {used:>6} {med['xla'] * 1e3:8.1f} "
          f"{med['matmul'] * 1e3:9.1f} {med['matmul'] / med['xla']:10.2f} "
          f"{rate / 1e9:8.1f} {rate / peak:7.1%}"
          + (f" {med['torch'] * 1e3:8.1f} {med[used] / med['torch']:11.2f}"
             if args.torch else ""), flush=True)
    totals["torch"] += med.get("torch", 0.0)
  print(f"total ms: all XLA {totals['xla'] * 1e3:.1f}, all matmul "
        f"{totals['matmul'] * 1e3:.1f}, the model's choices "
        f"{totals['model'] * 1e3:.1f}, the faster of the two per layer "
        f"{totals['best'] * 1e3:.1f}"
        + (f", PyTorch {totals['torch'] * 1e3:.1f}" if args.torch else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
