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
beta from 1e-10), ``flexible`` (flexible K at evaluation only; it is on by
default anyway), ``independent_prior``, ``laplacian`` / ``epanechnikov``,
``no_semiconv``. Any field can be overridden: ``--config.model.num_slots=5``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

PRESETS = ("paper", "quick", "objects_room", "shapestacks", "sketchy", "apc")
OPTIONS = ("mask_loss", "independent_prior", "laplacian", "epanechnikov",
           "no_semiconv", "smoke")


def _data_config() -> ml_collections.ConfigDict:
  from data_pipelines import sprites  # pylint: disable=g-import-not-at-top
  return sprites.default_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config of a preset (see module doc)."""
  parts = [p for p in (arg or "paper").split(",") if p]
  preset, options = parts[0], parts[1:]
  if preset in OPTIONS:  # Only options given: start from the paper.
    preset, options = "paper", parts
  if preset not in PRESETS:
    raise ValueError(f"Unknown GENESIS-V2 preset {preset!r}; expected one of "
                     f"{PRESETS}.")
  for o in options:
    if o not in OPTIONS:
      raise ValueError(f"Unknown GENESIS-V2 option {o!r}; expected any of "
                       f"{OPTIONS}.")

  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data: procedural sprites unless a preset names a real dataset.
  c.data = _data_config()

  # Model (paper 002 App. B).
  c.model = ml_collections.ConfigDict()
  c.model.name = "genesis_v2"
  c.model.num_slots = 7  # K
  c.model.image_size = c.data.get_ref("image_size")
  c.model.feat_dim = 64  # D_e; latents have the same size
  c.model.embed_dim = 8  # D_zeta
  c.model.kernel = "gaussian"  # Eq. (3)
  c.model.semiconv = True
  c.model.autoregressive_prior = True  # Eq. (2)
  c.model.pixel_bound = True
  c.model.pixel_std = 0.7  # sigma_x of Eq. (1)
  c.model.mask_consistency = False  # Eq. (7)
  c.model.decoder_channels = 64
  c.model.min_mask_pixels = 20.0  # flexible K, Sec. 4.1
  c.model.flexible_decode_all = False
  c.model.subpixel_deconv = True
  c.model.remat = False  # recompute activations in the backward pass
  c.model.dtype = "float32"  # compute dtype ("bfloat16" for speed)

  # Objective: GECO (Eqs. 5-6, App. E).
  c.objective = ml_collections.ConfigDict()
  c.objective.name = "geco"
  c.objective.geco = True  # False: fixed beta = beta_init
  c.objective.goal = 0.5655  # C, per pixel and channel
  c.objective.eta = 1e-5  # step size at 64x64, scaled by 64^2 / (H W)
  c.objective.speedup = 10.0  # eta x 10 once the goal is met
  c.objective.alpha = 0.99  # alpha_g
  # beta_g at step 0; None: 1.0, or 1e-10 with the mask-consistency loss.
  c.objective.beta_init = config_dict.placeholder(float)
  c.objective.beta_min = 1e-10
  c.objective.beta_max = 1e10

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 0.0  # 0: off (the paper does not clip)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global
  c.train.num_steps = 500_000
  c.train.log_every = 100  # scalars + progress line
  c.train.image_every = 5_000  # TensorBoard images and PNG grids
  c.train.checkpoint_every = 1_000  # the "latest" checkpoint
  c.train.keep_every = 50_000  # periodic checkpoints kept besides it
  c.train.max_to_keep = 3  # periodic checkpoints kept
  c.train.eval_every = 0  # 0: no evaluation during training
  c.train.grad_accum_steps = 1

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.batch_size = 32
  c.eval.num_examples = 320  # the paper averages over 320 test images
  c.eval.flexible = True  # also evaluate with flexible K
  c.eval.step = -1  # checkpoint step to evaluate; -1: latest

  c.sample = ml_collections.ConfigDict()
  c.sample.num = 64
  c.sample.step = -1

  c.mesh = ml_collections.ConfigDict()
  # Multi-host: call jax.distributed.initialize(). On SLURM, Open MPI,
  # Kubernetes and Cloud TPU the cluster is detected; elsewhere give the
  # coordinator's "host:port", the number of processes and this process's id.
  c.mesh.distributed = False
  c.mesh.coordinator_address = ""
  c.mesh.num_processes = 0  # 0: detected
  c.mesh.process_id = -1  # -1: detected

  _apply_preset(c, preset)
  for o in options:
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
    c.train.batch_size = 8
    c.train.grad_accum_steps = 4
    c.train.num_steps = 3_000
    c.train.log_every = 100
    c.train.image_every = 500
    c.train.checkpoint_every = 250
    c.train.keep_every = 1_000
    c.train.eval_every = 1_000
    c.eval.num_examples = 320
    c.eval.batch_size = 32
    c.optimizer.learning_rate = 4e-4
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
  elif option == "independent_prior":
    c.model.autoregressive_prior = False
  elif option in ("laplacian", "epanechnikov"):
    c.model.kernel = option
  elif option == "no_semiconv":
    c.model.semiconv = False
  elif option == "smoke":  # a few steps, for tests
    c.train.batch_size = 4
    c.train.grad_accum_steps = 1
    c.train.eval_every = 0
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.image_every = 4
    c.train.checkpoint_every = 2
    c.train.keep_every = 4
    c.eval.num_examples = 8
    c.eval.batch_size = 4
    c.sample.num = 4
