r"""ocjax command line: train, evaluate or sample one experiment.

    python -m ocjax.main --config=experiments/genesis_v2.py:quick \
        --workdir=runs/quick [--mode=train|eval|sample|fid] [--config.x.y=v]

Re-running the same command resumes a killed run from its last checkpoint.
"""

from __future__ import annotations

import os

# Before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally `file.py:preset`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory of the run (checkpoints, logs).")
_MODE = flags.DEFINE_enum("mode", "train",
                          ["train", "eval", "sample", "fid"], "What to do.")
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step for --mode=eval/sample (default: latest).")
_INCEPTION = flags.DEFINE_string(
    "inception_weights", None, "--mode=fid: the FID Inception-v3 weights "
    "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth or its .npz; see "
    "docs/eval.md).")
_FID_NUM = flags.DEFINE_integer(
    "fid_num", 10_000, "--mode=fid: prior samples and test images.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  # Our own progress goes to stdout; libraries (orbax) only warn unless -v.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config, workdir = _CONFIG.value, _WORKDIR.value
  # Imports after flag parsing keep `--help` fast.
  from ocjax.eval import runner  # pylint: disable=g-import-not-at-top
  from ocjax.eval import sampling  # pylint: disable=g-import-not-at-top
  from ocjax.train import loop  # pylint: disable=g-import-not-at-top

  if _MODE.value == "train":
    loop.train(config, workdir)
    runner.evaluate(config, workdir)
  elif _MODE.value == "eval":
    runner.evaluate(config, workdir, _STEP.value)
  elif _MODE.value == "fid":
    from ocjax.eval import fid  # pylint: disable=g-import-not-at-top
    try:
      fid.compute_fid(config, workdir, _INCEPTION.value, num=_FID_NUM.value,
                      step=_STEP.value)
    except (fid.FIDError, fid.convert.WeightsError) as e:
      raise SystemExit(f"error: {e}") from None
  else:
    sampling.sample(config, workdir, _STEP.value)


if __name__ == "__main__":
  app.run(main)
