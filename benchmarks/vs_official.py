r"""GENESIS-V2 against the official PyTorch implementation, side by side.

    python benchmarks/vs_official.py --official_dir=DIR [--batch=8,32] \
        [--rounds=7] [--inference] [--grad_accum=auto] [--threads=0] \
        [--device=auto] [--precision=float32]

``DIR`` is a checkout of the official code (never copied into this
repository; it is imported from there):

    git clone --recursive https://github.com/applied-ai-lab/genesis DIR
    pip install torch             # (or .[torch])

Both sides build GENESIS-V2 with the paper's configuration (64x64, K = 7,
feat_dim 64, Gaussian kernel, semi-convolutions, autoregressive prior,
sigma_x 0.7), take the same random images, and time a training step
(forward, GECO loss, backward, Adam update) or, with ``--inference``, a
forward pass. The timings alternate, ours then theirs, for ``--rounds``
rounds after two warm-up rounds (ours also compiles then), so both see the
same machine state; the table gives each side's median and the ratio
ours / official per round as median [min, max]. Also printed: the FLOPs of
our compiled step (XLA's count), the fraction of the machine's peak it
achieves (the faster of a large matmul and a large convolution, measured in
the same run), and the same for the official step (torch's FlopCounterMode
count; it counts matmuls and convolutions only, so it is a lower bound).

On a GPU (``--device=cuda``; ``auto``, the default, takes it when torch sees
one) the official model runs the way its ``train.py`` runs it there (CUDA
as torch's default device) and our step on JAX's default backend; each
batch's row is followed by both sides' memory: XLA's buffers of our
compiled step and torch's peak allocation. ``--precision`` sets both sides'
arithmetic: ``float32`` (no TF32 anywhere: JAX's matmul precision
``highest``, torch's TF32 switches off), ``tf32`` (TF32 matmuls and
convolutions on both sides; on a CPU the same as float32) or ``bfloat16``
(our ``model.dtype``; ``torch.autocast`` around the official forward pass;
what stays float32 may use TF32 on both sides). The peak is measured in the
same precision.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# Before any JAX code: ocjax sets XLA's CPU convolutions (ocjax.xla_flags),
# for our step and for the measured peak alike.
import ocjax  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import,wrong-import-position

HOW_TO_GET = """\
The official implementation is not part of ocjax (it is not ours to copy):
  git clone --recursive https://github.com/applied-ai-lab/genesis DIR
  pip install torch               # PyTorch is an optional extra: .[torch]
then: python benchmarks/vs_official.py --official_dir=DIR"""


def _ensure_attrdict() -> None:
  """The official code imports ``attrdict``, whose last release does not
  import on Python >= 3.10 (``collections.Mapping``): stand in a dict with
  attribute access, all the official code uses of it."""
  try:
    import attrdict  # pylint: disable=g-import-not-at-top,unused-import
    return
  except Exception:  # pylint: disable=broad-except
    pass
  import types  # pylint: disable=g-import-not-at-top

  class AttrDict(dict):
    def __getattr__(self, name):
      try:
        return self[name]
      except KeyError:
        raise AttributeError(name) from None

    def __setattr__(self, name, value):
      self[name] = value

  module = types.ModuleType("attrdict")
  module.AttrDict = AttrDict
  sys.modules["attrdict"] = module


def official_model(official_dir: str, *, image_size: int, num_slots: int):
  """The official GenesisV2 module (imported from ``official_dir``)."""
  for path in (official_dir, os.path.join(official_dir, "forge")):
    if path not in sys.path:
      sys.path.insert(0, path)
  _ensure_attrdict()
  from attrdict import AttrDict  # pylint: disable=g-import-not-at-top
  import models.genesisv2_config as official  # pylint: disable=g-import-not-at-top
  cfg = AttrDict(K_steps=num_slots, img_size=image_size, feat_dim=64,
                 kernel="gaussian", semiconv=True, dynamic_K=False,
                 klm_loss=False, detach_mr_in_klm=True, debug=False,
                 multi_gpu=False, pixel_bound=True, autoreg_prior=True,
                 pixel_std1=0.7, pixel_std2=0.7)
  return official.GenesisV2(cfg)


def official_step(model, images, *, inference: bool,
                  precision: str = "float32"):
  """A closure running one official training step (or forward pass) on
  torch's default device (see `set_precision`)."""
  import torch  # pylint: disable=g-import-not-at-top
  device = torch.get_default_device()
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))
                       ).to(device)
  optimiser = torch.optim.Adam(model.parameters(), 1e-4)
  beta = 1.0  # GECO's beta enters as a constant factor of the step.
  autocast = lambda: torch.autocast(  # pylint: disable=g-long-lambda
      device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")

  def train():
    optimiser.zero_grad()
    with autocast():
      _, losses, _, _, _ = model(x)
    err = losses.err.mean(0)
    kl_l = torch.stack(losses.kl_l_k, dim=1).mean(dim=0).sum()
    loss = err + beta * kl_l
    loss.backward()
    optimiser.step()
    return float(loss.detach())

  def forward():
    with torch.no_grad(), autocast():
      _, losses, _, _, _ = model(x)
    return float(losses.err.mean())

  return forward if inference else train


def our_step(images, *, image_size: int, num_slots: int, inference: bool,
             grad_accum: int | str, precision: str = "float32"):
  """A closure running our jitted training step (or forward pass); returns
  it, XLA's FLOP count of the compiled computation and the micro-batches."""
  from experiments import common  # pylint: disable=g-import-not-at-top
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  config = run_lib.load_experiment("experiments/genesis_v2.py")
  with config.unlocked():
    common.set_fields(config, {
        "data.image_size": image_size, "model.num_slots": num_slots,
        "train.batch_size": len(images),
        "model.dtype": model_dtype(precision)})
    if grad_accum != "auto":
      config.train.grad_accum_steps = int(grad_accum)
  return step_closure(config, images, inference=inference)


def step_closure(config, images, *, inference: bool, step: int | None = None,
                 extra: dict | None = None):
  """Our jitted training step (or forward pass) of ``config`` on ``images``
  as a closure (its ``compiled`` attribute: the compiled computation);
  returns it, XLA's FLOP count of the compiled computation and the
  micro-batches. ``step`` sets the train state's step counter (the
  trainer passes it to models that declare ``uses_step``) and the model's
  training stage, as the trainer does (`ocjax.train.step.stage_of`);
  ``extra`` holds further batch entries."""
  import jax  # pylint: disable=g-import-not-at-top
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  run = run_lib.build(config)
  state = run.init_state()
  batch = {run.model.input_key: jax.numpy.asarray(images),
           **{k: jax.numpy.asarray(v) for k, v in (extra or {}).items()}}
  if inference:
    fn = run.apply_fn("eval")
    compiled = fn.lower(state.variables(), batch).compile()

    def forward():
      return jax.block_until_ready(fn(state.variables(), batch).losses)

    forward.compiled = compiled
    return forward, _flops(compiled), 1
  if step is not None:
    state = state.replace(step=jax.numpy.int32(step))
  accum = step_lib.resolve_grad_accum(config.train, len(images),
                                      model=run.model)
  stage = step_lib.stage_of(run.model, 0 if step is None else step)
  train_step = functools.partial(step_lib.make_train_step(
      run.model, run.objective, run.tx, seed=0, grad_accum_steps=accum),
                                 stage=stage)
  # The micro-batches are an unrolled loop: XLA counts every one.
  compiled = train_step.func.lower(state, batch, stage=stage).compile()
  box = [state]

  def run_step():
    box[0], metrics = train_step(box[0], batch)
    return float(metrics["loss"])

  run_step.compiled = compiled  # its HLO, for benchmarks/profile_ops.py
  return run_step, _flops(compiled), accum


def official_flops(step) -> float:
  """FLOPs of one official step, counted by torch's FlopCounterMode."""
  from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
  counter = flop_counter.FlopCounterMode(display=False)
  with counter:
    step()
  return float(counter.get_total_flops())


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def measured_peak(precision: str = "float32") -> float:
  """FLOP/s of the faster of a large matmul and a large convolution, in
  ``precision`` (bfloat16 operands for ``bfloat16``; the matmul precision
  `set_precision` chose); on accelerators 4x larger, to fill them."""
  import jax  # pylint: disable=g-import-not-at-top
  dtype = jax.numpy.bfloat16 if precision == "bfloat16" else "float32"
  scale = 1 if jax.default_backend() == "cpu" else 4
  n, b, c = 2048 * scale, 8 * scale, 128 * scale
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  mm = jax.jit(lambda a: a @ a)
  x = jax.random.normal(jax.random.key(1), (b, 64, 64, c), dtype)
  w = jax.random.normal(jax.random.key(2), (3, 3, c, c), dtype)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  best = 0.0
  for fn, args, flops in ((mm, (a,), 2 * n**3),
                          (conv, (x, w), 2 * b * 64 * 64 * c * c * 9)):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(5):
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t)
    best = max(best, flops / float(np.median(times)))
  return best


def timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def import_torch(threads: int = 0):
  """torch with ``threads`` intra-op threads (0: its default) and its
  UserWarnings off, or None when it is not installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if threads:
    torch.set_num_threads(threads)
  warnings.filterwarnings("ignore", category=UserWarning,
                          module=r"torch\..*")
  return torch


def model_dtype(precision: str) -> str:
  """Our ``model.dtype`` for ``--precision``."""
  return "bfloat16" if precision == "bfloat16" else "float32"


def set_precision(precision: str, torch) -> None:
  """Both sides' arithmetic for ``--precision`` (module doc)."""
  import jax  # pylint: disable=g-import-not-at-top
  if precision not in PRECISIONS:
    raise ValueError(f"--precision={precision!r}: expected one of "
                     f"{', '.join(PRECISIONS)}")
  jax.config.update("jax_default_matmul_precision",
                    JAX_MATMUL_PRECISION[precision])
  torch.backends.cuda.matmul.allow_tf32 = precision != "float32"
  torch.backends.cudnn.allow_tf32 = precision != "float32"


def set_device(device: str, torch) -> str:
  """torch's default device for ``--device`` (``auto``: CUDA when torch
  sees a GPU); returns the device used."""
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  if device not in ("cpu", "cuda"):
    raise ValueError(f"--device={device!r}: expected auto, cpu or cuda")
  if device == "cuda" and not torch.cuda.is_available():
    raise ValueError("--device=cuda: torch sees no CUDA device "
                     f"(torch {torch.__version__})")
  if device == "cuda":
    # Both frameworks share the GPU: JAX preallocates half of it rather
    # than its default 75% (unless the user chose).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
  torch.set_default_device(device)
  return device


def machine(torch, peak: float, precision: str = "float32") -> str:
  """The header's description of the two sides' setup."""
  import jax  # pylint: disable=g-import-not-at-top
  device = torch.get_default_device()
  theirs = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
            else f"CPU with {torch.get_num_threads()} threads")
  return (f"{precision}; ours: jax {jax.__version__} on "
          f"{jax.device_count()} {jax.devices()[0].device_kind} "
          f"({jax.default_backend()}) device(s); official: torch "
          f"{torch.__version__} on {theirs}; measured peak "
          f"{peak / 1e9:.0f} GFLOP/s")


def memory(compiled, torch) -> str:
  """A row's memory line on a GPU: XLA's buffers of our compiled step
  (arguments, outputs and temporaries, less what outputs reuse) and torch's
  peak allocation since the last reset; empty on a CPU."""
  device = torch.get_default_device()
  if device.type != "cuda":
    return ""
  m = compiled.memory_analysis()
  ours = (m.argument_size_in_bytes + m.output_size_in_bytes
          + m.temp_size_in_bytes - m.alias_size_in_bytes)
  theirs = torch.cuda.max_memory_allocated(device)
  return (f"      memory: ours {ours / 2**20:.0f} MiB (XLA's buffers), "
          f"official {theirs / 2**20:.0f} MiB (torch's peak allocation)")


PRECISIONS = ("float32", "tf32", "bfloat16")
# JAX's default matmul precision per ``--precision`` (bfloat16: operands in
# bfloat16, what stays float32 as XLA's default, TF32 on GPUs).
JAX_MATMUL_PRECISION = {"float32": "highest", "tf32": "tensorfloat32",
                        "bfloat16": "default"}
TABLE_HEAD = (f"{'batch':>5s} {'ours s':>8s} {'official s':>10s} "
              f"{'ratio median [min, max]':>26s} {'GFLOP ours':>10s} "
              f"{'of peak':>8s} {'GFLOP official':>14s} {'of peak':>8s} "
              f"{'micro-batches':>13s}")


def compare(ours, theirs, rounds: int):
  """Two warm-up rounds (ours compiles), the official step's FLOPs, then
  ``rounds`` alternating timings, ours first: ``(t_ours, t_theirs,
  official FLOPs)``."""
  for _ in range(2):  # Warm-up (and our compilation).
    ours()
    theirs()
  their_flops = official_flops(theirs)
  t_ours, t_theirs = [], []
  for _ in range(rounds):
    t_ours.append(timed(ours))
    t_theirs.append(timed(theirs))
  return t_ours, t_theirs, their_flops


def table_row(batch: int, t_ours, t_theirs, flops: float,
              their_flops: float, peak: float, accum: int) -> str:
  """A row of `TABLE_HEAD`: medians, ratio per round, FLOPs, peak use."""
  ratios = np.asarray(t_ours) / np.asarray(t_theirs)
  mo, mt = float(np.median(t_ours)), float(np.median(t_theirs))
  return (f"{batch:5d} {mo:8.3f} {mt:10.3f} "
          f"{np.median(ratios):9.2f}x [{ratios.min():.2f}, "
          f"{ratios.max():.2f}]{'':5s} {flops / 1e9:10.1f} "
          f"{flops / mo / peak:8.1%} {their_flops / 1e9:14.1f} "
          f"{their_flops / mt / peak:8.1%} {accum:13d}")


def arg_parser(description: str, *, official_env: str,
               num_slots: int) -> argparse.ArgumentParser:
  """The flags every side-by-side benchmark takes (``--official_dir``
  defaults to the environment variable ``official_env``)."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--official_dir", default=os.environ.get(official_env))
  p.add_argument("--batch", default="8,32")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--num_slots", type=int, default=num_slots)
  p.add_argument("--inference", action="store_true")
  p.add_argument("--grad_accum", default="auto",
                 help="our micro-batches: 'auto' (the trainer's default) or N")
  p.add_argument("--threads", type=int, default=0,
                 help="torch intra-op threads (0: torch's default)")
  p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                 help="the official side's: auto (CUDA when torch sees a "
                 "GPU), cpu or cuda; ours runs on JAX's default backend")
  p.add_argument("--precision", default="float32", choices=PRECISIONS,
                 help="both sides' arithmetic (module doc)")
  return p


def main(argv=None) -> int:
  args = arg_parser(__doc__.splitlines()[0], official_env="GENESIS_OFFICIAL",
                    num_slots=7).parse_args(argv)
  if not args.official_dir or not os.path.isdir(
      os.path.join(args.official_dir, "models")):
    print(HOW_TO_GET, file=sys.stderr)
    return 2
  torch = import_torch(args.threads)
  if torch is None:
    print(HOW_TO_GET, file=sys.stderr)
    return 2
  try:
    set_device(args.device, torch)
  except ValueError as e:  # --device=cuda without a GPU
    print(e, file=sys.stderr)
    return 2
  set_precision(args.precision, torch)
  what = "forward pass" if args.inference else "training step"
  peak = measured_peak(args.precision)
  print(f"GENESIS-V2 {what}, {args.image_size}x{args.image_size}, "
        f"K={args.num_slots}; {machine(torch, peak, args.precision)}")
  print(TABLE_HEAD)
  rng = np.random.default_rng(0)
  for b in [int(v) for v in args.batch.split(",")]:
    images = rng.uniform(size=(b, args.image_size, args.image_size, 3)
                         ).astype(np.float32)
    torch.manual_seed(0)
    theirs = official_step(official_model(
        args.official_dir, image_size=args.image_size,
        num_slots=args.num_slots), images, inference=args.inference,
                           precision=args.precision)
    ours, flops, accum = our_step(
        images, image_size=args.image_size, num_slots=args.num_slots,
        inference=args.inference, grad_accum=args.grad_accum,
        precision=args.precision)
    if torch.cuda.is_available():
      torch.cuda.reset_peak_memory_stats()
    t_ours, t_theirs, their_flops = compare(ours, theirs, args.rounds)
    print(table_row(b, t_ours, t_theirs, flops, their_flops, peak, accum),
          flush=True)
    if line := memory(ours.compiled, torch):
      print(line, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
