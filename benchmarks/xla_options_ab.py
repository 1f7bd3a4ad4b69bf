r"""One model's step under two XLA settings, A/B in one process.

    python benchmarks/xla_options_ab.py --config=experiments/apex.py:quick \
        --batch=4 [--rounds=10] [--inference] \
        [--a=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE] \
        [--b=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT] [--flag=xla_cpu_experimental_ynn_fusion_type]

Compiles the experiment's training step (or forward pass) twice, with
``--flag`` set to ``--a`` and to ``--b`` for that compilation only
(``compile(compiler_options=...)``: the process's ``XLA_FLAGS`` are left as
they are), then times the two alternately, ``--rounds`` times each, on the
same state and batch (uniform noise; video models get clips of
``data.num_frames``). Alternating in one process is the comparison this
machine allows: its speed drifts by 20% or more between runs. The defaults
compare YNNPACK's reduce fusions (jax 0.10's default, which ocjax keeps) with
none; each side's ``__ynn_fusion`` count is printed so the setting can be
seen to bite.
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

from ocjax import run as run_lib
from ocjax import xla_flags
from ocjax.train import step as step_lib

_WITH_REDUCE = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                "LIBRARY_FUSION_TYPE_REDUCE")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True,
                 help="experiments/<model>.py[:preset[,options]]")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rounds", type=int, default=10)
  p.add_argument("--inference", action="store_true")
  p.add_argument("--flag", default=xla_flags.YNN_FLAG)
  p.add_argument("--a", default=_WITH_REDUCE)
  p.add_argument("--b", default="LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
  args = p.parse_args(argv)
  config = run_lib.load_experiment(args.config)
  with config.unlocked():
    config.train.batch_size = args.batch
  run = run_lib.build(config)
  state = run.init_state()
  size = int(config.data.image_size)
  frames = ((int(config.data.num_frames),) if "num_frames" in config.data
            else ())
  x = np.random.default_rng(0).random(
      (args.batch,) + frames + (size, size, 3), np.float32)
  batch = {run.model.input_key: jax.numpy.asarray(x)}
  settings = {"A": args.a, "B": args.b}
  if args.inference:
    fn = run.apply_fn("eval")
    lowered = fn.lower(state.variables(), batch)

    def call(compiled):
      jax.block_until_ready(compiled(state.variables(), batch).losses)
  else:
    accum = step_lib.resolve_grad_accum(config.train, args.batch,
                                        model=run.model)
    fn = step_lib.make_train_step(run.model, run.objective, run.tx, seed=0,
                                  grad_accum_steps=accum)
    lowered = fn.lower(state, batch)
    box = [state]

    def call(compiled):
      box[0], metrics = compiled(box[0], batch)  # the state is donated
      float(metrics["loss"])
  compiled = {k: lowered.compile(compiler_options={args.flag: v})
              for k, v in settings.items()}
  for k, c in compiled.items():
    print(f"{k}: --{args.flag}={settings[k]}: "
          f"{c.as_text().count('__ynn_fusion')} __ynn_fusion ops")
    call(c)  # warm-up
  times = {k: [] for k in compiled}
  for _ in range(args.rounds):
    for k, c in compiled.items():
      start = time.perf_counter()
      call(c)
      times[k].append(time.perf_counter() - start)
  what = "forward pass" if args.inference else "training step"
  print(f"{args.config} {what}, batch {args.batch}, {args.rounds} "
        "alternating rounds")
  for k, v in times.items():
    print(f"  {k}: median {np.median(v):.3f} s [{min(v):.3f}, "
          f"{max(v):.3f}]")
  ratio = np.asarray(times["B"]) / np.asarray(times["A"])
  print(f"  B / A per round: median {np.median(ratio):.3f} "
        f"[{ratio.min():.3f}, {ratio.max():.3f}]")
  return 0


if __name__ == "__main__":
  sys.exit(main())
