r"""IODINE (Greff et al. 2019) as paper 004 trains it for its baselines.

Default (no preset, ``paper``): paper 004 App. A.2 / C / D: the IODINE
baseline with K = 5 slots on 64x64 images, R = 6 refinement steps, latents
of 64 (lambda of 128), LSTM hidden size 128, the per-pixel Gaussian mixture
with variance 0.3, beta = 10 on the NLL, the KL at weight 1, the steps
weighted r / R, lambda_0 from U(-0.5, 0.5), Adam at learning rate 3e-4
(gradients clipped at norm 5, as the code paper 004 builds on does), batch
32. The data default to the procedural sprites (no download).

    python -m ocjax.main --config=experiments/iodine.py --workdir=runs/iodine

Presets, ``--config=experiments/iodine.py:<preset>``:
  quick           a CPU demo on 32x32 procedural sprites, K = 6, batch 8,
                  3,000 steps (the other models' quick data and budget),
                  with narrower networks and strided refinement convolutions.
  multi_dsprites  K = 6, 64x64       (--config.data.data_dir=DIR)
  tetrominoes     K = 4, 32x32       (--config.data.data_dir=DIR)
  clevr6          K = 7, 128x128 CLEVR with masks (--config.data.data_dir=DIR),
                  the refinement network of IODINE's CLEVR configuration
                  (four stride-2 3x3 convolutions, a global average, a dense
                  layer and an LSTM of 256) and R = 5 refinements (IODINE's CLEVR6
                  configuration).
  bouncing_balls  paper 004's IODINE baseline on Bouncing Balls frames (the
                  first frame of each procedural clip as an image; binary,
                  4 balls, K = 5, R = 6); ``bouncing_balls_colour``: colour.
                  Evaluate on clips with ``python -m ocjax.eval.video_table``.
Options may follow the preset, comma-separated: ``tiny`` (a minute model on
32x32 data, for tests) and ``smoke`` (a few steps). Any field can be
overridden: ``--config.model.num_refinements=4``.
"""

from __future__ import annotations

import ml_collections

from experiments import common

PRESETS = ("paper", "quick", "multi_dsprites", "tetrominoes", "clevr6",
           "bouncing_balls", "bouncing_balls_colour")
OPTIONS = ("tiny",)

# Dataset presets: (data.name, image size, K).
DATASETS = {
    "multi_dsprites": ("multi_dsprites", 64, 6),
    "tetrominoes": ("tetrominoes", 32, 4),
    "clevr6": ("clevr_with_masks", 128, 7),
}


def _data_config() -> ml_collections.ConfigDict:
  from data_pipelines import sprites  # pylint: disable=g-import-not-at-top
  return sprites.default_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config of a preset (see module doc)."""
  preset, options = common.parse_arg(arg, label="IODINE", presets=PRESETS,
                                     options=OPTIONS)
  model = ml_collections.ConfigDict()
  model.name = "iodine"
  model.num_slots = 5  # K (paper 004 App. C, Bouncing Balls)
  model.image_size = 64  # set from data.image_size below
  model.latent_size = 64  # dim(z) (App. C)
  model.num_refinements = 6  # R (App. A.2)
  model.sigma = 0.3**0.5  # "the variance of the likelihood ... 0.3" (App. C)
  model.nll_weight = 10.0  # beta (App. A.2)
  model.kl_weight = 1.0
  model.decoder_channels = (64, 64, 64, 64)
  model.refine_channels = (64, 64, 64, 64)
  model.refine_strides = (1, 1, 1, 1)
  model.refine_pool = 4
  model.refine_mlp_size = 128
  model.hidden_size = 128  # App. C
  model.scan_unroll = 0  # 0: the R refinements unrolled (CPU speed)
  model.dtype = "float32"

  # Objective: beta NLL + psi KL, each summed over the steps with r / R.
  objective = ml_collections.ConfigDict()
  objective.name = "weighted_sum"
  objective.weights = ml_collections.ConfigDict()

  c = common.base_config(model=model, data=_data_config(),
                         objective=objective)
  c.data.image_size = 64
  c.model.image_size = c.data.get_ref("image_size")
  c.objective.weights.nll = c.model.get_ref("nll_weight")
  c.objective.weights.kl = c.model.get_ref("kl_weight")
  c.optimizer.learning_rate = 3e-4  # App. D
  c.optimizer.grad_clip_norm = 5.0
  c.train.batch_size = 32  # App. D (at the start of training)
  c.train.num_steps = 500_000

  _apply_preset(c, preset)
  for o in options:
    if not common.apply_shared_option(c, o):
      _apply_option(c, o)
  c.lock()
  return c


def _apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  if preset == "quick":
    c.data.image_size = 32
    c.model.num_slots = 6
    c.model.latent_size = 32
    c.model.decoder_channels = (32, 32, 32)
    c.model.refine_channels = (32, 32, 32)
    c.model.refine_strides = (2, 2, 2)
    c.model.refine_pool = 0
    c.model.refine_mlp_size = 128
    c.model.num_refinements = 3
    # Micro-batches of 4 (automatic).
    common.apply_quick_schedule(c, grad_accum_steps=0)
    c.optimizer.learning_rate = 3e-4
  elif preset in ("bouncing_balls", "bouncing_balls_colour"):
    from data_pipelines import bouncing_balls  # pylint: disable=g-import-not-at-top
    c.data = bouncing_balls.preset_config(
        "colour4" if preset.endswith("colour") else "binary4")
    c.data.num_frames = 1
    c.data.frames_as_images = True  # frame 0 of each clip, as an image
    c.model.image_size = c.data.get_ref("image_size")
  elif preset in DATASETS:
    from data_pipelines import multi_object  # pylint: disable=g-import-not-at-top
    name, size, k = DATASETS[preset]
    data = multi_object.default_config()
    data.name = name
    data.image_size = size
    c.data = data
    c.model.image_size = c.data.get_ref("image_size")
    c.model.num_slots = k
    if preset == "clevr6":
      c.model.num_refinements = 5
      if "max_objects" in c.data:
        c.data.max_objects = 6
      c.model.refine_strides = (2, 2, 2, 2)
      c.model.refine_pool = 0
      c.model.refine_mlp_size = 256
      c.model.hidden_size = 256


def _apply_option(c: ml_collections.ConfigDict, option: str) -> None:
  if option == "tiny":
    apply_tiny(c)


def apply_tiny(c: ml_collections.ConfigDict) -> None:
  """A minute model on small data, for tests (also SEQ-IODINE's)."""
  c.data.image_size = 32
  for field, value in (("num_train", 64), ("num_test", 8)):
    if field in c.data:
      c.data[field] = value
  c.model.num_slots = 3
  c.model.latent_size = 8
  c.model.num_refinements = 2
  c.model.decoder_channels = (16, 16)
  c.model.refine_channels = (16, 16)
  c.model.refine_strides = (2, 2)
  c.model.refine_pool = 0
  c.model.refine_mlp_size = 16
  c.model.hidden_size = 16
