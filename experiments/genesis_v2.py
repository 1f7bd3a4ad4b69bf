r"""GENESIS-V2 (Engelcke et al., NeurIPS 2021): the paper's training protocol.

Default (no preset): paper 002 App. E on 64x64 images with K = 7: Adam,
learning rate 1e-4, batch 32, 500k steps, GECO (goal 0.5655 nats per pixel
and channel, alpha 0.99, eta 1e-5 / 1e-4, beta from 1, floor 1e-10),
sigma_x = 0.7, Gaussian kernel, semi-convolutions, autoregressive prior. The
data defaults to the procedural sprites (no download).

    python -m ocjax.main --config=experiments/genesis_v2.py --workdir=runs/g2

Presets, ``--config=experiments/genesis_v2.py:<preset>``:
  quick          a CPU demo on procedural sprites (see README for its
                 runtime and ARI-FG).
  objects_room   K = 7, 64x64   (--config.data.data_dir=DIR)
  shapestacks    K = 9, 64x64   (--config.data.data_dir=DIR)
  sketchy        K = 10, 128x128, GECO goal 0.5645 (--config.data.data_dir)
  apc            K = 10, 128x128 (--config.data.data_dir=DIR)
Options may follow the preset, comma-separated: ``mask_loss`` (Eq. 7 with
beta from 1e-10), ``independent_prior``, ``laplacian`` / ``epanechnikov``,
``no_semiconv``; for tests ``smoke`` (a few steps) and ``tiny`` (a minute
model on 32x32 data). Any field can be overridden:
``--config.model.num_slots=5``. Evaluation scores fixed and flexible K (the
model's two evaluation modes; ``--config.eval.modes=fixed`` for one).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from experiments import common

PRESETS = ("paper", "quick", "objects_room", "shapestacks", "sketchy", "apc")
OPTIONS = ("mask_loss", "independent_prior", "laplacian", "epanechnikov",
           "no_semiconv", "tiny")


def _data_config() -> ml_collections.ConfigDict:
  from data_pipelines import sprites  # pylint: disable=g-import-not-at-top
  return sprites.default_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config of a preset (see module doc)."""
  preset, options = common.parse_arg(arg, label="GENESIS-V2",
                                     presets=PRESETS, options=OPTIONS)

  # Model (paper 002 App. B).
  model = ml_collections.ConfigDict()
  model.name = "genesis_v2"
  model.num_slots = 7  # K
  model.image_size = 64  # set from data.image_size below
  model.feat_dim = 64  # D_e; latents have the same size
  model.embed_dim = 8  # D_zeta
  model.kernel = "gaussian"  # Eq. (3)
  model.semiconv = True
  model.autoregressive_prior = True  # Eq. (2)
  model.pixel_bound = True
  model.pixel_std = 0.7  # sigma_x of Eq. (1)
  model.mask_consistency = False  # Eq. (7)
  model.decoder_channels = 64
  model.min_mask_pixels = 20.0  # flexible K, Sec. 4.1
  model.flexible_decode_all = False
  model.subpixel_deconv = True
  model.remat = False  # recompute activations in the backward pass
  model.dtype = "float32"  # compute dtype ("bfloat16" for speed)

  # Objective: GECO (Eqs. 5-6, App. E) over the reconstruction NLL; every
  # other loss term (the KL, and the mask KL of Eq. 7) is constrained.
  objective = ml_collections.ConfigDict()
  objective.name = "geco"
  objective.geco = True  # False: fixed beta = beta_init
  objective.reconstruction = "nll"
  objective.goal = 0.5655  # C, per pixel and channel
  objective.eta = 1e-5  # step size at 64x64, scaled by reference_pixels/(H W)
  objective.reference_pixels = 64 * 64
  objective.speedup = 10.0  # eta x 10 once the goal is met
  objective.alpha = 0.99  # alpha_g
  # beta_g at step 0; None: 1.0 (the mask_loss option sets 1e-10, App. E).
  objective.beta_init = config_dict.placeholder(float)
  objective.beta_min = 1e-10
  objective.beta_max = 1e10

  c = common.base_config(model=model, data=_data_config(),
                         objective=objective)
  c.model.image_size = c.data.get_ref("image_size")
  # Optimizer and training (App. E): Adam 1e-4, batch 32, 500k steps.
  c.optimizer.learning_rate = 1e-4
  c.train.batch_size = 32
  c.train.num_steps = 500_000

  _apply_preset(c, preset)
  for o in options:
    if not common.apply_shared_option(c, o):
      _apply_option(c, o)
  c.lock()
  return c


def _apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  if preset == "quick":
    # A CPU demo that finishes in about 12 minutes on 2 cores (README): the
    # paper's model and objective on 32x32 sprites with K = 6 (up to 5
    # objects), batch 8 computed as 4 micro-batches (faster on CPUs), a
    # higher learning rate, and an evaluation every 1,000 steps for the
    # learning curve.
    c.data.image_size = 32
    c.model.num_slots = 6
    common.apply_quick_schedule(c, grad_accum_steps=4)
    c.sample.num = 16
  elif preset in ("objects_room", "shapestacks", "sketchy", "apc"):
    _real_dataset(c, preset)


def _real_dataset(c: ml_collections.ConfigDict, name: str) -> None:
  """Paper presets on the published datasets (App. D-E)."""
  import importlib  # pylint: disable=g-import-not-at-top
  module = {"objects_room": "multi_object", "shapestacks": "shapestacks",
            "sketchy": "sketchy", "apc": "apc"}[name]
  data = importlib.import_module(f"data_pipelines.{module}").default_config()
  data.name = name
  c.data = data
  c.model.image_size = c.data.get_ref("image_size")
  c.model.num_slots = {"objects_room": 7, "shapestacks": 9, "sketchy": 10,
                       "apc": 10}[name]
  if name == "sketchy":
    c.objective.goal = 0.5645


def _apply_option(c: ml_collections.ConfigDict, option: str) -> None:
  if option == "mask_loss":
    c.model.mask_consistency = True
    c.objective.beta_init = 1e-10
  elif option == "independent_prior":
    c.model.autoregressive_prior = False
  elif option in ("laplacian", "epanechnikov"):
    c.model.kernel = option
  elif option == "no_semiconv":
    c.model.semiconv = False
  elif option == "tiny":  # a minute model on small data, for tests
    c.data.image_size = 32
    c.data.num_train = 64
    c.data.num_test = 8
    c.model.num_slots = 3
    c.model.feat_dim = 16
    c.model.decoder_channels = 16
