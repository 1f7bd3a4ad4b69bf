r"""GENESIS-V2 on one GPU, in one run: the side-by-side table, the precision
check and the paper preset's throughput.

    python benchmarks/gpu_genesis_v2.py --official_dir=DIR [--budget_s=400]

Three parts, in order, each within what is left of ``--budget_s`` (the
last may run up to a minute past it while it stops):

1. Side by side (`vs_official.py` on this machine, one process per
   precision and mode, since each sets its process's arithmetic): training
   step and forward pass at batch 32 and 64 (64x64, K = 7) in float32, TF32
   and bfloat16, ours against the official code on the same device: medians,
   ratios per round, FLOPs, fraction of the peak measured in the same
   precision, memory. The training rows come first: where the budget runs
   out (each row compiles our step), the forward passes are skipped.
   Without ``--official_dir`` this part is skipped (it says how to get the
   code).
2. The loss curve: ``--curve_steps`` training steps of ``--config`` (the
   paper's, at ``--batch``) on its procedural data, from the same initial
   parameters and batches, in float32, TF32 and bfloat16, and in float32
   from another seed (other parameters and batches: the noise scale). For
   each: the mean loss over the last half, and the largest gap between its
   moving average (``--window`` steps) and float32's; a precision is within
   noise when its gap is at most the other seed's.
3. The paper preset trained by ``python -m ocjax.main`` (the trainer, its
   input pipeline included) for the rest of the budget
   (``train.time_budget_s``: it stops with a checkpoint): images/s from the
   logged rates (training only) and from the log's timestamps (figures and
   checkpoints included), beside images/s of the input pipeline alone, and
   the paper's 500k steps projected at the training rate.

Every part runs in its own process (this one starts no JAX backend), so
no process holds the GPU's memory while another runs. ``--smoke`` runs
everything small on any device (a minute model; the test).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Before any JAX code (ocjax.xla_flags).
import ocjax  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
from benchmarks import vs_official  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

PAPER_STEPS = 500_000
# The seconds parts 2 and 3 keep for themselves while part 1 runs.
RESERVE_S = {"curve": 120.0, "paper": 90.0}
_STEP_LINE = re.compile(
    r"^\[(\d\d):(\d\d):(\d\d)\] step (\d+)/\d+ .*\| ([\d.]+) steps/s")


class Clock:
  """What is left of the run's budget."""

  def __init__(self, budget_s: float):
    self.end = time.monotonic() + budget_s

  def left(self) -> float:
    return self.end - time.monotonic()


def side_by_side(args, clock: Clock) -> None:
  """Part 1: `vs_official.py` per precision and mode, in subprocesses."""
  print("\n== 1. Side by side with the official code", flush=True)
  if not args.official_dir:
    print("skipped: no --official_dir.\n" + vs_official.HOW_TO_GET,
          flush=True)
    return
  reserve = RESERVE_S["curve"] + RESERVE_S["paper"]
  for inference in (False, True):  # The training rows first.
    for precision in args.precisions.split(","):
      left = clock.left() - reserve
      label = f"{precision} {'forward' if inference else 'training'}"
      if left < 30:
        print(f"{label}: skipped, out of time", flush=True)
        continue
      cmd = [sys.executable, os.path.join(REPO, "benchmarks",
                                          "vs_official.py"),
             f"--official_dir={args.official_dir}", f"--batch={args.batches}",
             f"--rounds={args.rounds}", f"--precision={precision}",
             f"--image_size={args.image_size}"]
      if inference:
        cmd.append("--inference")
      out, err, code = _subprocess(cmd, left, label)
      print(out.rstrip(), flush=True)
      if code != 0:
        print(f"{label}: exit {code}\n{err[-3000:]}", flush=True)


def _config(args, *, precision: str, seed: int):
  from experiments import common  # pylint: disable=g-import-not-at-top
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  config = run_lib.load_experiment(args.config)
  with config.unlocked():
    common.set_fields(config, {
        "train.batch_size": args.batch, "seed": seed,
        "model.dtype": vs_official.model_dtype(precision),
        **args.overrides})
  return config


def train_losses(args, *, precision: str, seed: int) -> np.ndarray:
  """The loss of ``args.curve_steps`` training steps (the trainer's step
  and data, without its checkpoints and figures)."""
  import jax  # pylint: disable=g-import-not-at-top
  import data_pipelines  # pylint: disable=g-import-not-at-top
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  from ocjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_default_matmul_precision",
                    vs_official.JAX_MATMUL_PRECISION[precision])
  config = _config(args, precision=precision, seed=seed)
  run = run_lib.build(config)
  state = run.init_state()
  accum = step_lib.resolve_grad_accum(config.train, args.batch,
                                      model=run.model)
  train_step = step_lib.make_train_step(
      run.model, run.objective, run.tx, seed=config.seed,
      grad_accum_steps=accum)
  batches = data_pipelines.iterate(data_pipelines.get_dataset(
      config.data, "train", batch_size=args.batch, seed=config.seed))
  losses = []
  for _ in range(args.curve_steps):
    state, metrics = train_step(state, run_lib.model_inputs(next(batches)))
    losses.append(metrics["loss"])
  return np.asarray(jax.device_get(losses), np.float64)


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
  window = max(1, min(window, len(x)))
  return np.convolve(x, np.ones(window) / window, mode="valid")


def curve_table(curves: dict[str, np.ndarray], window: int) -> list[str]:
  """Part 2's rows: mean loss over the last half and the largest gap of the
  moving average to float32's (seed 0); the verdict against the noise."""
  base = moving_average(curves["float32"], window)
  gap = {k: float(np.abs(moving_average(v, window) - base).max())
         for k, v in curves.items()}
  noise = gap.get("float32, other seed", float("nan"))
  rows = [f"{'run':>20s} {'mean loss, last half':>21s} "
          f"{'largest gap to float32':>23s}  verdict"]
  for k, v in curves.items():
    verdict = ("" if k.startswith("float32") else
               "within noise" if gap[k] <= noise else "BEYOND NOISE")
    rows.append(f"{k:>20s} {np.mean(v[len(v) // 2:]):21.4f} "
                f"{gap[k]:23.4f}  {verdict}")
  return rows


def loss_curves(args, clock: Clock) -> None:
  """Part 2 (run by a subprocess of `main`), then the input pipeline's
  rate alone."""
  import jax  # pylint: disable=g-import-not-at-top
  print(f"\n== 2. Loss curves on {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}, jax {jax.__version__}): "
        f"{args.curve_steps} steps of batch {args.batch}, moving average "
        f"of {args.window}", flush=True)
  runs = [("float32", "float32", 0), ("float32, other seed", "float32", 1)]
  runs += [(p, p, 0) for p in args.precisions.split(",") if p != "float32"]
  curves = {}
  for label, precision, seed in runs:
    if clock.left() < 15:
      print(f"{label}: skipped, out of time", flush=True)
      continue
    t = time.perf_counter()
    curves[label] = train_losses(args, precision=precision, seed=seed)
    print(f"{label}: {time.perf_counter() - t:.0f} s", flush=True)
  if "float32" in curves:
    print("\n".join(curve_table(curves, args.window)), flush=True)
  rate_in = input_rate(args, 10.0 if not args.smoke else 2.0)
  print(f"input pipeline alone (batch {args.batch}): {rate_in:.0f} "
        "images/s", flush=True)


def _subprocess(cmd, timeout: float, label: str) -> tuple[str, str, object]:
  """Runs ``cmd`` from the repository root: its stdout, stderr and exit
  code (or "timeout")."""
  text = lambda x: x.decode() if isinstance(x, bytes) else (x or "")
  try:
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       timeout=max(timeout, 1.0), check=False)
    return r.stdout, r.stderr, r.returncode
  except subprocess.TimeoutExpired as e:
    return (text(e.stdout) + f"\n{label}: stopped after {timeout:.0f} s",
            text(e.stderr), "timeout")


def input_rate(args, seconds: float) -> float:
  """Images/s of the training input pipeline alone (after one batch)."""
  import data_pipelines  # pylint: disable=g-import-not-at-top
  config = _config(args, precision="float32", seed=0)
  batches = data_pipelines.iterate(data_pipelines.get_dataset(
      config.data, "train", batch_size=args.batch, seed=config.seed))
  next(batches)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(batches)
    n += 1
  return n * args.batch / (time.perf_counter() - t0)


def parse_rates(log: str) -> tuple[list[float], float]:
  """The logged steps/s after the first line (which includes compilation),
  and steps/s from the timestamps of the first and last step lines."""
  lines = [m.groups() for m in map(_STEP_LINE.match, log.splitlines()) if m]
  rates = [float(g[4]) for g in lines[1:]]
  if len(lines) < 2:
    return rates, float("nan")
  seconds = lambda g: int(g[0]) * 3600 + int(g[1]) * 60 + int(g[2])
  span = (seconds(lines[-1]) - seconds(lines[0])) % 86400
  steps = int(lines[-1][3]) - int(lines[0][3])
  return rates, steps / span if span else float("nan")


def paper_preset(args, clock: Clock) -> None:
  """Part 3."""
  print(f"\n== 3. {args.config} trained by ocjax.main, batch {args.batch}",
        flush=True)
  startup = 60.0 if not args.smoke else 35.0  # start-up and compilation
  train_s = clock.left() - startup
  if args.train_s > 0:
    train_s = min(train_s, args.train_s)
  if train_s < 5:
    print("skipped, out of time", flush=True)
    return
  workdir = tempfile.mkdtemp(prefix="paper_", dir=args.out)
  cmd = [sys.executable, "-m", "ocjax.main", f"--config={args.config}",
         f"--workdir={workdir}", f"--config.train.batch_size={args.batch}",
         f"--config.train.time_budget_s={train_s:.0f}",
         "--config.train.log_every=20",
         "--config.eval.untrained_baseline=False",
         *(f"--config.{k}={v}" for k, v in args.overrides.items())]
  t = time.perf_counter()
  log_path = os.path.join(workdir, "log.txt")
  with open(log_path, "w", encoding="utf-8") as f:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  # Training ends at its time budget with a checkpoint; the evaluation the
  # trainer runs after it is not timed here, so it is stopped (SIGTERM).
  read = lambda: open(log_path, encoding="utf-8", errors="replace").read()
  while proc.poll() is None and clock.left() > -startup and (
      "Stopped after step" not in read()):
    time.sleep(1.0)
  if proc.poll() is None:
    proc.terminate()
    try:
      proc.wait(30)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
  code = proc.returncode
  log = read()
  wall = time.perf_counter() - t
  rates, overall = parse_rates(log)
  if "Stopped after step" in log:
    code = 0
  if code != 0 or not rates:
    print(f"ocjax.main: exit {code} after {wall:.0f} s\n{log[-3000:]}",
          flush=True)
    if not rates:
      return
  rate = float(np.median(rates))
  print(f"training: {rate:.2f} steps/s = {rate * args.batch:.0f} images/s "
        f"(median of {len(rates)} logged rates); {overall:.2f} steps/s = "
        f"{overall * args.batch:.0f} images/s with figures and checkpoints; "
        f"{wall:.0f} s in all (workdir {workdir})")
  print(f"the paper's {PAPER_STEPS:,} steps at this rate: "
        f"{PAPER_STEPS / rate / 3600:.1f} h (the paper: 2 days on a Titan "
        "RTX)", flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--official_dir", default=os.environ.get("GENESIS_OFFICIAL"))
  p.add_argument("--budget_s", type=float, default=400.0)
  p.add_argument("--config", default="experiments/genesis_v2.py")
  p.add_argument("--batch", type=int, default=32,
                 help="parts 2 and 3's batch")
  p.add_argument("--batches", default="32,64", help="part 1's batches")
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--precisions", default=",".join(vs_official.PRECISIONS))
  p.add_argument("--curve_steps", type=int, default=300)
  p.add_argument("--window", type=int, default=50)
  p.add_argument("--out", default=None,
                 help="folder for part 3's run (default: a temporary one)")
  p.add_argument("--train_s", type=float, default=0.0,
                 help="part 3's training seconds (0: the rest of the budget)")
  p.add_argument("--smoke", action="store_true",
                 help="a minute model and a few steps (the test)")
  p.add_argument("--part", default="all", choices=("all", "curve"),
                 help=argparse.SUPPRESS)  # curve: part 2 in this process
  args = p.parse_args(argv)
  bad = set(args.precisions.split(",")) - set(vs_official.PRECISIONS)
  if bad or "float32" not in args.precisions.split(","):
    p.error(f"--precisions={args.precisions!r}: a comma-separated subset of "
            f"{', '.join(vs_official.PRECISIONS)} that includes float32")
  args.overrides = {}
  if args.smoke:  # One micro-batch: the quick preset's 4 compile slowly.
    args.config = "experiments/genesis_v2.py:quick,tiny"
    args.batch, args.curve_steps, args.window = 4, 6, 2
    args.overrides = {"train.grad_accum_steps": 1}
  if args.out:
    os.makedirs(args.out, exist_ok=True)
  clock = Clock(args.budget_s)
  if args.part == "curve":
    loss_curves(args, clock)
    return 0
  print(f"GENESIS-V2 on one device, budget {args.budget_s:.0f} s",
        flush=True)
  side_by_side(args, clock)
  left = clock.left() - RESERVE_S["paper"] * (0.5 if args.smoke else 1)
  cmd = [sys.executable, os.path.abspath(__file__),
         *(argv if argv is not None else sys.argv[1:]), "--part=curve",
         f"--budget_s={left:.0f}"]
  out, err, code = _subprocess(cmd, left + 60, "part 2")
  print(out.rstrip(), flush=True)
  if code != 0:
    print(f"part 2: exit {code}\n{err[-3000:]}", flush=True)
  paper_preset(args, clock)
  return 0


if __name__ == "__main__":
  sys.exit(main())
