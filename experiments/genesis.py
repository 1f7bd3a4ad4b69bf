r"""GENESIS (v1; Engelcke et al., ICLR 2020): the official code's protocol.

Default (no preset): the official GENESIS code's defaults, which the
GENESIS-V2 papers use for this baseline (002 App. E): Adam, learning rate
1e-4, batch 32, 500k steps, GECO (goal 0.5655 nats per pixel and channel,
alpha 0.99, eta 1e-5 / 1e-4, beta from 1, floor 1e-10), sigma_x = 0.7, K = 7 on
64x64 images; 64 mask latents, 16 component latents, BatchNorm in the mask
VAE, autoregressive and component priors. The data default to the procedural
sprites (no download).

    python -m ocjax.main --config=experiments/genesis.py --workdir=runs/genesis

Presets, ``--config=experiments/genesis.py:<preset>``:
  quick           a CPU demo on procedural sprites, the same data and budget
                  as genesis_v2.py:quick (32x32, K = 6, 3,000 steps, batch 8).
  objects_room    K = 7, 64x64     (--config.data.data_dir=DIR)
  multi_dsprites  K = 5, 64x64     (--config.data.data_dir=DIR)
  tetrominoes     K = 4, 32x32     (--config.data.data_dir=DIR)
  clevr6          K = 7, 128x128   (--config.data.data_dir=DIR)
  shapestacks     K = 9, 64x64     (--config.data.data_dir=DIR)
Options may follow the preset, comma-separated: ``independent_prior`` (mask
latents from N(0, I)), ``no_component_prior`` (component latents from
N(0, I)), ``instance_norm`` (InstanceNorm instead of BatchNorm in the mask
VAE); for tests ``smoke`` (a few steps) and ``tiny`` (a small model on 32x32
data). Any field can be overridden: ``--config.model.num_slots=5``.

BatchNorm statistics are computed over each (micro-)batch, so the quick
preset computes its batch of 8 in one piece (``grad_accum_steps = 1``):
micro-batches would change the model's arithmetic, not only its speed.
"""

from __future__ import annotations

import ml_collections

from experiments import common
from experiments import monet as monet_experiment

PRESETS = monet_experiment.PRESETS
OPTIONS = ("independent_prior", "no_component_prior", "instance_norm", "tiny")


def _data_config() -> ml_collections.ConfigDict:
  from data_pipelines import sprites  # pylint: disable=g-import-not-at-top
  return sprites.default_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config of a preset (see module doc)."""
  preset, options = common.parse_arg(arg, label="GENESIS", presets=PRESETS,
                                     options=OPTIONS)

  # Model: the official defaults (models/genesis_config.py).
  model = ml_collections.ConfigDict()
  model.name = "genesis"
  model.num_slots = 7  # K_steps
  model.image_size = 64  # set from data.image_size below
  model.mask_latent_dim = 64  # attention_latents
  model.latent_dim = 16  # comp_ldim
  model.encoder_channels = 32  # comp_enc_channels
  model.decoder_channels = 32  # comp_dec_channels
  model.decoder_layers = 4  # comp_dec_layers
  model.encoder_norm = "bn"  # enc_norm: "bn", "in" or "none"
  model.decoder_norm = "bn"  # dec_norm
  model.autoregressive_prior = True  # autoreg_prior (paper 001 Eq. 2)
  model.component_prior = True  # comp_prior: p(z^c_k | z^m_k)
  model.pixel_bound = True
  model.pixel_std1 = 0.7  # sigma_x of slot 0
  model.pixel_std2 = 0.7  # sigma_x of the other slots
  model.sample_tanh_mean = False  # the official sampler's raw prior means
  model.dtype = "float32"

  c = common.base_config(model=model, data=_data_config(),
                         objective=monet_experiment.geco_objective())
  c.model.image_size = c.data.get_ref("image_size")
  # Optimizer and training (002 App. E): Adam 1e-4, batch 32, 500k steps.
  c.optimizer.learning_rate = 1e-4
  c.train.batch_size = 32
  c.train.num_steps = 500_000

  if preset == "quick":
    monet_experiment.apply_quick(c, grad_accum_steps=1)
  elif preset in monet_experiment.DATASETS:
    monet_experiment.apply_dataset(c, preset)
  for o in options:
    if not common.apply_shared_option(c, o):
      _apply_option(c, o)
  c.lock()
  return c


def _apply_option(c: ml_collections.ConfigDict, option: str) -> None:
  if option == "independent_prior":
    c.model.autoregressive_prior = False
  elif option == "no_component_prior":
    c.model.component_prior = False
  elif option == "instance_norm":
    c.model.encoder_norm = "in"
    c.model.decoder_norm = "in"
  elif option == "tiny":  # a small model on small data, for tests
    # The mask VAE's widths are the official fixed ones; the latents and the
    # component VAE shrink.
    monet_experiment.apply_tiny_data(c)
    c.model.num_slots = 3
    c.model.mask_latent_dim = 8
    c.model.latent_dim = 8
    c.model.encoder_channels = 8
    c.model.decoder_channels = 8
