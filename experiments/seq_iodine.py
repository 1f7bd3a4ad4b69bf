r"""SEQ-IODINE (paper 004, Sec. 4.1 and App. A.3): IODINE fed a new frame at
each refinement.

Default (no preset, ``paper``): IODINE's settings as paper 004 uses them for
its baselines (`experiments/iodine.py`: K = 5, latents of 64, LSTM of 128,
variance 0.3, beta = 10, Adam 3e-4) on binary Bouncing Balls clips of 4
frames (`data_pipelines.bouncing_balls`, procedural); a clip of T frames
gets T refinements.

    python -m ocjax.main --config=experiments/seq_iodine.py --workdir=runs/seq

Presets: ``quick`` (colour Bouncing Balls at 32x32, the video model's quick
data and networks), ``colour``, ``binary678`` (K = 9, tested on 6-8 balls).
Options: ``clamp`` (the paper's clamping of the gradient and the update at
10, for long binary clips), ``tiny`` and ``smoke`` for tests.
"""

from __future__ import annotations

import ml_collections

from experiments import common
from experiments import iodine as iodine_experiment
from experiments import provide as provide_experiment

PRESETS = ("paper", "quick", "colour", "binary678")
OPTIONS = ("tiny", "clamp")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config of a preset (see module doc)."""
  preset, options = common.parse_arg(arg, label="SEQ-IODINE",
                                     presets=PRESETS, options=OPTIONS)
  # IODINE's model and optimiser, the video model's data.
  c = iodine_experiment.get_config("paper")
  video = provide_experiment.get_config(preset)
  with c.unlocked():
    c.model.name = "seq_iodine"
    c.model.clamp = 0.0  # App. A.3: 10 on long binary clips
    c.data = video.data
    c.model.image_size = c.data.get_ref("image_size")
    c.eval.batch_size = video.eval.batch_size
    if preset == "quick":
      for field in ("latent_size", "decoder_channels", "refine_channels",
                    "refine_strides", "refine_pool"):
        c.model[field] = video.model[field]
      for section in ("train", "optimizer", "eval"):
        c[section] = video[section]
      # 1,500 steps (2.6-2.7 steps/s: about 10 minutes), where the video
      # model, slower per step, stops at 1,200.
      c.train.num_steps = 1_500
      c.train.eval_every = 500
    elif preset == "binary678":
      c.model.num_slots = 9
    for o in options:
      if common.apply_shared_option(c, o):
        continue
      if o == "clamp":
        c.model.clamp = 10.0
      elif o == "tiny":
        iodine_experiment.apply_tiny(c)
        c.data.num_frames = 3
        if "num_validation" in c.data:
          c.data.num_validation = 8
  c.lock()
  return c
