r"""MONet-G (MONet trained with GECO; papers 001 Sec. 4, 002 App. B/E).

Default (no preset): the protocol of the official GENESIS code, which the
GENESIS-V2 papers use for their baselines (002 App. E): Adam, learning rate
1e-4, batch 32, 500k steps, GECO (goal 0.5655 nats per pixel and channel,
alpha 0.99, eta 1e-5 / 1e-4, beta from 1, floor 1e-10), sigma_x = 0.7, K = 7 on
64x64 images; the attention UNet starts with 32 filters, the component VAE
has 16 latents. The data default to the procedural sprites (no download).

    python -m ocjax.main --config=experiments/monet.py --workdir=runs/monet

Presets, ``--config=experiments/monet.py:<preset>``:
  quick           a CPU demo on procedural sprites, the same data and budget
                  as genesis_v2.py:quick (32x32, K = 6, 3,000 steps).
  objects_room    K = 7, 64x64     (--config.data.data_dir=DIR)
  multi_dsprites  K = 5, 64x64     (--config.data.data_dir=DIR)
  tetrominoes     K = 4, 32x32     (--config.data.data_dir=DIR)
  clevr6          K = 7, 128x128   CLEVR with masks, up to 6 objects
                  (--config.data.data_dir=DIR)
  shapestacks     K = 9, 64x64     (--config.data.data_dir=DIR)
The image sizes and K of objects_room, multi_dsprites and tetrominoes are the
official code's dataset defaults (``datasets/multi_object_config.py``).
Options may follow the preset, comma-separated: ``scope_prior`` (decoded
masks by stick breaking instead of a softmax); for tests ``smoke`` (a few
steps) and ``tiny`` (a minute model on 32x32 data). Any field can be
overridden: ``--config.model.num_slots=5``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from experiments import common

PRESETS = ("paper", "quick", "objects_room", "multi_dsprites", "tetrominoes",
           "clevr6", "shapestacks")
OPTIONS = ("scope_prior", "tiny")

# Dataset presets: (data module, data.name, image size, K).
DATASETS = {
    "objects_room": ("multi_object", "objects_room", 64, 7),
    "multi_dsprites": ("multi_object", "multi_dsprites", 64, 5),
    "tetrominoes": ("multi_object", "tetrominoes", 32, 4),
    "clevr6": ("multi_object", "clevr_with_masks", 128, 7),
    "shapestacks": ("shapestacks", "shapestacks", 64, 9),
}


def _data_config() -> ml_collections.ConfigDict:
  from data_pipelines import sprites  # pylint: disable=g-import-not-at-top
  return sprites.default_config()


def geco_objective() -> ml_collections.ConfigDict:
  """GECO (001 Eqs. 5-6, 002 App. E) over the NLL; every other term (the
  component KL and the mask KL) is constrained."""
  objective = ml_collections.ConfigDict()
  objective.name = "geco"
  objective.geco = True  # False: fixed beta = beta_init
  objective.reconstruction = "nll"
  objective.goal = 0.5655  # C, per pixel and channel
  objective.eta = 1e-5  # step size at 64x64, scaled by reference_pixels/(H W)
  objective.reference_pixels = 64 * 64
  objective.speedup = 10.0  # eta x 10 once the goal is met
  objective.alpha = 0.99  # alpha_g
  objective.beta_init = config_dict.placeholder(float)  # None: 1.0
  objective.beta_min = 1e-10
  objective.beta_max = 1e10
  return objective


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config of a preset (see module doc)."""
  preset, options = common.parse_arg(arg, label="MONet", presets=PRESETS,
                                     options=OPTIONS)

  # Model: the official re-implementation's defaults (models/monet_config.py
  # and the GENESIS flags it imports).
  model = ml_collections.ConfigDict()
  model.name = "monet"
  model.num_slots = 7  # K_steps: K - 1 attention steps + the last scope
  model.image_size = 64  # set from data.image_size below
  model.filter_start = 32  # attention UNet base width
  model.latent_dim = 16  # comp_ldim
  model.encoder_channels = 32  # comp_enc_channels
  model.decoder_channels = 32  # comp_dec_channels
  model.decoder_layers = 4  # comp_dec_layers
  model.mask_prior = "softmax"  # prior_mode: "softmax" or "scope"
  model.pixel_bound = True
  model.pixel_std1 = 0.7  # sigma_x of slot 0
  model.pixel_std2 = 0.7  # sigma_x of the other slots
  model.scan_unroll = 0  # attention steps unrolled per scan step; 0: all
  model.dtype = "float32"

  c = common.base_config(model=model, data=_data_config(),
                         objective=geco_objective())
  c.model.image_size = c.data.get_ref("image_size")
  # Optimizer and training (002 App. E): Adam 1e-4, batch 32, 500k steps.
  c.optimizer.learning_rate = 1e-4
  c.train.batch_size = 32
  c.train.num_steps = 500_000

  _apply_preset(c, preset)
  for o in options:
    if not common.apply_shared_option(c, o):
      _apply_option(c, o)
  c.lock()
  return c


def apply_quick(c: ml_collections.ConfigDict, num_slots: int = 6,
                grad_accum_steps: int = 4) -> None:
  """The CPU demo shared by the GENESIS-family experiments: 32x32 sprites,
  K = 6, batch 8, 3,000 steps at learning rate 4e-4 (genesis_v2.py:quick)."""
  c.data.image_size = 32
  c.model.num_slots = num_slots
  common.apply_quick_schedule(c, grad_accum_steps=grad_accum_steps)
  c.sample.num = 16


def apply_dataset(c: ml_collections.ConfigDict, preset: str) -> None:
  """A published dataset (read from --config.data.data_dir) with its size
  and K (``DATASETS``)."""
  import importlib  # pylint: disable=g-import-not-at-top
  module, name, size, k = DATASETS[preset]
  data = importlib.import_module(f"data_pipelines.{module}").default_config()
  data.name = name
  data.image_size = size
  if preset == "clevr6":
    # CLEVR6: the scenes with at most 6 objects.
    # TODO: set unconditionally once data_pipelines.multi_object has the
    # field (a colleague is adding `max_objects`).
    if "max_objects" in data:
      data.max_objects = 6
  c.data = data
  c.model.image_size = c.data.get_ref("image_size")
  c.model.num_slots = k


def _apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  if preset == "quick":
    apply_quick(c)
  elif preset in DATASETS:
    apply_dataset(c, preset)


def apply_tiny_data(c: ml_collections.ConfigDict) -> None:
  """32x32 images and (for the procedural data) a handful of examples."""
  c.data.image_size = 32
  for field, value in (("num_train", 64), ("num_test", 8)):
    if field in c.data:
      c.data[field] = value


def _apply_option(c: ml_collections.ConfigDict, option: str) -> None:
  if option == "scope_prior":
    c.model.mask_prior = "scope"
  elif option == "tiny":  # a minute model on small data, for tests
    apply_tiny_data(c)
    c.model.num_slots = 3
    c.model.filter_start = 8
    c.model.latent_dim = 8
    c.model.encoder_channels = 8
    c.model.decoder_channels = 8
