r"""APEX (paper 000): segmentation and tracking in robot-manipulation videos.

Default (no preset, ``p2d``): the paper's P2D setting (Sec. IV): 128x128
clips of 20 frames from the P2D-like pybullet simulator
(`data_pipelines.p2d`; ``pip install .[sim]``, simulated on the fly unless
``--config.data.data_dir`` names a directory written by ``python -m
data_pipelines.generate p2d``), Adam at 1e-4, batch 4, 40,000 steps; the
SGMM with sigma_fg = 0.1 and sigma_bg = 0.04, the principled mask
normalisation, the feature-space STNs, the inclusive KL and the entropy loss
at weight 1 (Eq. 22). Model sizes the paper does not give are in
docs/apex.md.

    python -m ocjax.main --config=experiments/apex.py --workdir=runs/apex

Presets, ``--config=experiments/apex.py:<preset>``:
  p2d       the paper's P2D setting (above).
  sketchy   Sketchy clips of 10 frames at 128x128 (``--config.data.data_dir=
            DIR`` with the Sketchy TFRecords; no masks: figures only).
  quick     a CPU demo: P2D-like clips of 6 frames at 64x64 (200 training
            episodes simulated once and kept in memory), narrower networks,
            N = 4 track slots, a 4x4 discovery grid, batch 4, Adam 4e-4,
            1,500 steps (the temperature reaches 0.5 at the end).
Options, comma-separated after the preset, the ablations of Table III:
``image_stn`` (object STNs read the frame, not the feature map),
``no_entropy`` (no L_H), ``scalor_norm`` (SCALOR-style mask
normalisation), ``gaussian`` (a plain Gaussian likelihood); and for tests
``tiny`` (a minute model on 32x32 clips of 3 frames) and ``smoke``.
"""

from __future__ import annotations

import ml_collections

from experiments import common

PRESETS = ("p2d", "sketchy", "quick")
OPTIONS = ("tiny", "image_stn", "no_entropy", "scalor_norm", "gaussian")


def _p2d() -> ml_collections.ConfigDict:
  from data_pipelines import p2d  # pylint: disable=g-import-not-at-top
  return p2d.default_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config of a preset (see module doc)."""
  preset, options = common.parse_arg(arg, label="APEX", presets=PRESETS,
                                     options=OPTIONS)
  model = ml_collections.ConfigDict()
  model.name = "apex"
  model.image_size = 128  # set from data.image_size below
  model.num_slots = 8  # N track slots (P2D: the arm and up to 3 objects)
  model.grid_size = 8  # G: 8x8 proposals on the 32x32 feature map
  model.what_size = 32
  model.bg_size = 16
  model.hidden_size = 128
  model.encoder_channels = (32, 64, 128, 128)  # DLA levels, strides 2..16
  model.features = 64  # F, e_t at H/4 (Sec. III-C)
  model.cnn_channels = (64, 64, 64)
  model.crop_size = 8
  model.glimpse_size = 32
  model.decoder_channels = 64
  model.bg_encoder_channels = (16, 32, 64, 64)
  model.mask_bound = 5.0  # c of Eq. (7)
  model.min_scale = 0.05
  model.scale_anchor = -2.0  # discovered boxes ~0.16 of the half-image
  model.where_update = 0.2  # SCALOR
  model.sigma_fg = 0.1  # Sec. IV-A
  model.sigma_bg = 0.04  # Sec. IV-A
  model.presence_threshold = 0.7  # SCALOR's discovery threshold
  model.discovery_prior = 0.01
  model.discovery_prior_start = 0.1  # SCALOR's anneal of rho
  model.discovery_prior_anneal_steps = 500  # SCALOR
  model.entropy_weight = 1.0  # Eq. (22)
  model.tau_end = 0.5  # SCALOR
  model.tau_decay_steps = 20_000  # SCALOR
  model.mask_normalisation = "apex"
  model.likelihood = "sgmm"
  model.feature_space_stn = True
  model.inclusive_kl = True  # Sec. III-D
  model.scan_unroll = 0
  model.dtype = "float32"

  objective = ml_collections.ConfigDict()
  objective.name = "weighted_sum"
  objective.weights = ml_collections.ConfigDict()

  c = common.base_config(model=model, data=_p2d(), objective=objective)
  c.model.image_size = c.data.get_ref("image_size")
  c.objective.weights.entropy = c.model.get_ref("entropy_weight")
  c.optimizer.learning_rate = 1e-4  # Sec. IV
  c.optimizer.grad_clip_norm = 1.0  # SCALOR
  c.train.batch_size = 4  # Sec. IV
  c.train.num_steps = 40_000  # Sec. IV
  c.train.grad_accum_steps = 1
  c.train.eval_every = 5_000
  c.eval.batch_size = 4
  c.eval.num_examples = 200  # the P2D test split

  _apply_preset(c, preset)
  for o in options:
    if not common.apply_shared_option(c, o):
      _apply_option(c, o)
  c.lock()
  return c


def _apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  if preset == "sketchy":
    from data_pipelines import sketchy_video  # pylint: disable=g-import-not-at-top
    c.data = sketchy_video.default_config()
    c.data.num_frames = 10  # Sec. IV
    c.model.image_size = c.data.get_ref("image_size")
    c.train.eval_every = 0  # no masks to score
  elif preset == "quick":
    c.data.image_size = 64
    c.data.episode_length = 6
    c.data.num_frames = 6
    # 200 episodes: simulating one takes about 0.5 s here, and the first
    # epoch's simulations slowed the first steps (400 took 4 min for 100).
    c.data.num_train = 200
    c.data.num_validation = 40
    c.data.num_test = 40
    c.data.cache_episodes = True
    c.model.num_slots = 4
    c.model.grid_size = 4
    c.model.what_size = 16
    c.model.bg_size = 8
    c.model.hidden_size = 64
    c.model.encoder_channels = (16, 32, 64)
    c.model.features = 32
    c.model.cnn_channels = (32, 32)
    c.model.crop_size = 8
    c.model.glimpse_size = 16
    c.model.decoder_channels = 16
    c.model.bg_encoder_channels = (16, 32, 32)
    c.model.tau_decay_steps = 1_500
    common.apply_quick_schedule(c, grad_accum_steps=1)
    c.train.batch_size = 4  # the paper's batch
    c.train.num_steps = 1_500
    c.train.eval_every = 500
    c.eval.batch_size = 8
    c.eval.num_examples = 40


def _apply_option(c: ml_collections.ConfigDict, option: str) -> None:
  if option == "image_stn":
    c.model.feature_space_stn = False
  elif option == "no_entropy":
    c.model.entropy_weight = 0.0
  elif option == "scalor_norm":
    c.model.mask_normalisation = "scalor"
  elif option == "gaussian":
    c.model.likelihood = "gaussian"
  elif option == "tiny":
    c.data.image_size = 32
    c.data.episode_length = 3
    c.data.num_frames = 3
    c.data.settle_steps = 10
    c.data.num_train = 8
    c.data.num_validation = 4
    c.data.num_test = 8
    c.model.num_slots = 3
    c.model.grid_size = 2
    c.model.what_size = 8
    c.model.bg_size = 4
    c.model.hidden_size = 16
    c.model.encoder_channels = (8, 16)
    c.model.features = 16
    c.model.cnn_channels = (16,)
    c.model.crop_size = 4
    c.model.glimpse_size = 8
    c.model.decoder_channels = 16
    c.model.bg_encoder_channels = (8, 8)
