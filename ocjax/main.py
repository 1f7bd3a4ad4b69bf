r"""ocjax command line: train, evaluate or sample one experiment.

    python -m ocjax.main --config=experiments/genesis_v2.py:quick \
        --workdir=runs/quick [--mode=train|eval|sample|fid] [--config.x.y=v]
    python -m ocjax.main --workdir=runs/quick --mode=eval   # the run's config

Re-running the same command resumes a killed run from its last checkpoint
(and a curriculum from its unfinished phase: `ocjax.train.curriculum`).
Evaluation, sampling and FID use the run's own ``config.json``; a
``--config`` given with them may only change the ``eval``, ``sample`` and
``mesh`` sections.
"""

from __future__ import annotations

import os

# Before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally `file.py:preset`. "
    "Required to train; optional for the other modes (the run's "
    "config.json).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory of the run (checkpoints, logs).")
_MODE = flags.DEFINE_enum("mode", "train",
                          ["train", "eval", "sample", "fid"], "What to do.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step for --mode=eval/sample/fid (default: "
    "latest).")
_INCEPTION = flags.DEFINE_string(
    "inception_weights", None, "--mode=fid: the FID Inception-v3 weights "
    "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth or its .npz; see "
    "docs/eval.md).")
_FID_NUM = flags.DEFINE_integer(
    "fid_num", 10_000, "--mode=fid: prior samples and test images.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # Our own progress goes to stdout; libraries (orbax) only warn unless -v.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if config is not None:
    config.experiment = flags.FLAGS["config"].config_filename
  elif mode == "train":
    raise app.UsageError("--config is required to train (e.g. "
                         "--config=experiments/genesis_v2.py:quick).")
  # Imports after flag parsing keep `--help` fast.
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  from ocjax.eval import curve  # pylint: disable=g-import-not-at-top
  from ocjax.eval import fid  # pylint: disable=g-import-not-at-top
  from ocjax.eval import runner  # pylint: disable=g-import-not-at-top
  from ocjax.eval import sampling  # pylint: disable=g-import-not-at-top
  from ocjax.train import checkpoint  # pylint: disable=g-import-not-at-top
  from ocjax.train import curriculum  # pylint: disable=g-import-not-at-top
  from ocjax.train import loop  # pylint: disable=g-import-not-at-top
  from ocjax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  try:
    if mode == "train":
      every = int(config.train.eval_every)
      hooks = runner.training_hooks(
          workdir, eval_every=every,
          untrained=config.eval.get("untrained_baseline", False))
      # Earlier phases (e.g. AST-Seg's background pretraining), each its own
      # resumable run in <workdir>/<phase>; they fill fields of the config.
      config = curriculum.prepare(config, workdir, loop.train)
      loop.train(config, workdir, hooks=hooks)
      runner.evaluate(workdir)
      if every > 0:
        curve.write_plot(workdir)
    elif mode == "eval":
      runner.evaluate(workdir, _STEP.value, config=config)
    elif mode == "fid":
      fid.compute_fid(workdir, _INCEPTION.value, num=_FID_NUM.value,
                      step=_STEP.value, config=config)
    else:
      sampling.sample(workdir, _STEP.value, config=config)
  except workdir_lib.Stopped as e:
    print(e, flush=True)
    raise SystemExit(143 if e.signame == "SIGTERM" else 130) from None
  except (fid.FIDError, fid.convert.WeightsError, FileNotFoundError,
          run_lib.ConfigError, checkpoint.CheckpointError,
          workdir_lib.WorkdirError) as e:
    raise SystemExit(f"error: {e}") from None


def _run_with_mode(mode: str | None) -> None:
  """Console scripts: ``ocjax-<mode>`` is ``python -m ocjax.main --mode=..``."""
  import sys  # pylint: disable=g-import-not-at-top
  if mode and not any(a.startswith("--mode") for a in sys.argv[1:]):
    sys.argv.insert(1, f"--mode={mode}")
  app.run(main)


def run_train() -> None:
  _run_with_mode("train")


def run_eval() -> None:
  _run_with_mode("eval")


def run_sample() -> None:
  _run_with_mode("sample")


def run_fid() -> None:
  _run_with_mode("fid")


if __name__ == "__main__":
  app.run(main)
