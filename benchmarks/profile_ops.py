r"""Where a model's jitted step spends its time, op by op, by module.

    python benchmarks/profile_ops.py --config=experiments/ast_seg.py:shapestacks \
        [--batch=8] [--steps=3] [--inference] [--top=25] [--grad_accum=N] \
        [--config.x.y=v ...]

Builds the experiment's training step (or forward pass) as the benchmarks do
(`vs_official.step_closure`), runs it twice to compile, traces ``--steps``
more with ``jax.profiler``, and reads the trace back (``ProfileData``). Each
XLA op executed is matched to the op metadata of the compiled HLO, which
names the Flax module and the JAX primitive it came from, so the report is

* the op time per step summed over XLA's threads, and the wall time;
* that time per module (the first two levels of the module path) and
  direction (``fwd``; ``bwd``: ops under ``transpose(...)``, i.e. gradients);
* the ``--top`` ops with their output shape and source.

Caveat: the trace undercounts XLA:CPU's convolutions and matmuls (probably
because they run on its thread pool outside the traced op): in AST-Seg's
training step (ShapeStacks setting, batch 8, 2026-12-07) they summed to
about 0.35 s of a 2.3 s step whose convolutions alone took about 2 s
(`benchmarks/conv_layers.py`). Trust it for the other ops (copies,
transposes, elementwise fusions) and time convolutions alone or by A/B.

Image and video models (clips of ``data.num_frames``); inputs are uniform
noise. For models whose arithmetic follows
the step (``uses_step``) ``--train_step`` sets the counter. Timings drift
with the machine: compare variants in one run (``benchmarks/vs_official*.py``).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import vs_official as vs
# pylint: enable=g-import-not-at-top,wrong-import-position

_INSTRUCTION = re.compile(
    r"^\s*%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]+)\"", re.M)


def op_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Optimised HLO text -> ``{instruction: (op_name metadata, shape)}``."""
  return {m.group(1): (m.group(3), m.group(2))
          for m in _INSTRUCTION.finditer(hlo_text)}


def module_of(op_name: str, depth: int = 2) -> str:
  """``jit(train_step)/transpose(jvp(AstSeg))/AstSeg.encode/unet/conv/...``
  -> ``AstSeg.encode/unet bwd`` (the first ``depth`` module levels)."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  parts = [p for p in op_name.split("/")
           if not re.match(r"^(jit|pjit|jvp|transpose|vmap|remat|checkpoint)"
                           r"\(|^closed_call$", p)]
  modules = [p for p in parts[:-1] if p]  # the last part is the primitive
  return f"{'/'.join(modules[:depth]) or '(top level)'} {direction}"


def op_times(trace_dir: str, sources: dict) -> collections.Counter:
  """Nanoseconds per HLO instruction, summed over XLA's worker threads."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                    recursive=True)
  if not files:
    raise FileNotFoundError(f"no .xplane.pb trace under {trace_dir}")
  times = collections.Counter()
  for plane in ProfileData.from_file(files[0]).planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in sources:
          times[event.name] += event.duration_ns
  return times


def report(times: collections.Counter, sources: dict, *, steps: int,
           wall: float, top: int) -> list[str]:
  total = sum(times.values()) / steps / 1e9
  lines = [f"wall {wall:.3f} s per step; XLA ops {total:.3f} s per step "
           "(summed over threads)", "", "per module and direction:"]
  modules = collections.Counter()
  for name, ns in times.items():
    modules[module_of(sources[name][0])] += ns
  rest = 0.0
  for module, ns in modules.most_common():
    s = ns / steps / 1e9
    if s < 0.005 * total:  # under 0.5%: summed in one line
      rest += s
      continue
    lines.append(f"  {s:8.3f} s {100 * s / total:5.1f}%  {module}")
  lines.append(f"  {rest:8.3f} s {100 * rest / total:5.1f}%  (the others, "
               "each under 0.5%)")
  lines += ["", f"top {top} ops:"]
  for name, ns in times.most_common(top):
    op_name, shape = sources[name]
    lines.append(f"  {ns / steps / 1e9:8.3f} s  {name:30s} {shape:30s} "
                 f"{module_of(op_name, depth=8)}")
  return lines


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True,
                 help="experiments/<model>.py[:preset[,options]]")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--inference", action="store_true")
  p.add_argument("--grad_accum", type=int, default=None,
                 help="micro-batches per step, 0: automatic (default: the "
                 "config's train.grad_accum_steps)")
  p.add_argument("--train_step", type=int, default=None,
                 help="the train state's step counter")
  p.add_argument("--trace_dir", default=None,
                 help="where the trace goes (default: a temporary folder)")
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import common  # pylint: disable=g-import-not-at-top
  from ocjax import compare  # pylint: disable=g-import-not-at-top
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  args, overrides = compare.parse_args_and_overrides(p, argv)
  config = run_lib.load_experiment(args.config)
  with config.unlocked():
    common.set_fields(config, overrides)
    config.train.batch_size = args.batch
    if args.grad_accum is not None:
      config.train.grad_accum_steps = args.grad_accum
  accum = int(config.train.grad_accum_steps)
  if accum > 0 and args.batch % accum:
    p.error(f"--batch={args.batch} is not a multiple of the config's "
            f"{accum} micro-batches (train.grad_accum_steps); set "
            "--grad_accum")
  size = int(config.data.image_size)
  # Video models (``data.num_frames``) take clips [B, T, H, W, 3].
  frames = (int(config.data.num_frames),) if "num_frames" in config.data else ()
  images = np.random.default_rng(0).random(
      (args.batch,) + frames + (size, size, 3), np.float32)
  step, _, _ = vs.step_closure(config, images, inference=args.inference,
                               step=args.train_step)
  sources = op_sources(step.compiled.as_text())
  for _ in range(2):
    step()
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="ocjax_profile_")
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  for _ in range(args.steps):
    step()
  wall = (time.perf_counter() - start) / args.steps
  jax.profiler.stop_trace()
  what = "forward pass" if args.inference else "training step"
  print(f"{args.config} {what}, batch {args.batch}, {args.steps} steps "
        f"traced in {trace_dir}")
  print("\n".join(report(op_times(trace_dir, sources), sources,
                         steps=args.steps, wall=wall, top=args.top)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
