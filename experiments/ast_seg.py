r"""AST-Seg (Sauvalle & de La Fortelle, WACV 2023): the paper's protocol.

Default (no preset, ``paper``): paper 003's CLEVR protocol (Table 6) on the
procedural CLEVR stand-in ``clevr_like`` (no download; CLEVR10 scenes of 3-10
objects at 128x128): K = 10, isotropic scaling, the simple background, phase
1 of 2,500 steps as on CLEVR, z_what 32, the U-Net
feature-map generator (Table 8; the offline default, the Segformer needs
the published MiT-B3 weights: option ``segformer``), transformer encoder
d_T = 256, 8 heads, feed-forward 512, 6 layers, dropout 0.1, inverse scales
in [1.3, 24], alpha_0 = e^11, lambda_pixel = 1e-2 with a quadratic warm-up
over N_pixel = 10k steps. Adam (lr 4e-5, betas 0.90 / 0.98, eps 1e-9),
quadratic learning-rate warm-up over 5k steps and /10 at 90% of training,
batch 64, 125k steps.

    python -m ocjax.main --config=experiments/ast_seg.py --workdir=runs/ast

Rendering CLEVR-like scenes on the fly is slow (about 10 images/s at 128x128
on one core): write them once and read them back,

    python -m data_pipelines.generate clevr_like --out=DATA \
        --set image_size=128 --workers=8
    python -m ocjax.main --config=experiments/ast_seg.py \
        --config.data.data_dir=DATA --workdir=runs/ast

Curriculum training (CT, Sec. 4.2), the three phases in one command that
resumes after a kill in any phase (`ocjax.train.curriculum`):

    python -m ocjax.main --config=experiments/ast_seg.py:shapestacks \
        --config.data.data_dir=DIR --workdir=runs/ast

Phase 1 (the background autoencoder alone, AE-NE's robust loss) trains in
``runs/ast/background`` and its autoencoder is exported to
``runs/ast/background/export.npz``; phases 2 (30k steps, background frozen)
and 3 (joint) are then one run in ``runs/ast`` started from that file, the
phase following the training step (the optimizer step, which the trainer
passes to models that declare ``uses_step``; see `ocjax.models.ast_seg`).
Phase 1's fields are ``--config.curriculum.background.changes.<field>``
(e.g. ``...changes.train.num_steps=2500``); a given
``--config.model.background_weights=bg.npz`` skips it. Phase 1 alone:
``:shapestacks,background``; its export: ``python -m ocjax.convert.ast_seg
export-background RUN_DIR bg.npz``. Differences from the official training
loop: it starts phase 3 with a fresh Adam state for every network, here the
background autoencoder's moments start from zero while the others continue.

Presets, ``--config=experiments/ast_seg.py:<preset>``:
  sprites        64x64 procedural sprites, K = 5 (their maximum number of
                 objects), phase 1 of 500k steps
  quick          a CPU demo on 32x32 procedural sprites (K = 5; small U-Net,
                 2-layer transformer of width 64, 16x16 glimpses, the
                 "simple background" autoencoder trained jointly with the
                 objects (BT), batch 8, 3,000 steps).
  clevr          K = 10, 128x128, isotropic, simple background, phase 1 of
                 2,500 steps (clevr_with_masks, --config.data.data_dir=DIR)
  clevrtex       K = 10, 128x128, anisotropic (--config.data.data_dir=DIR)
  shapestacks    K = 6, 64x64, isotropic (--config.data.data_dir=DIR)
  objects_room   K = 3, 64x64, anisotropic (--config.data.data_dir=DIR)
Options may follow the preset, comma-separated:
  background      phase 1 alone: background autoencoder pretraining (batch
                  128, Adam 2e-3, /10 at 80%, 500k steps; 2,500 on CLEVR)
  baseline        BT: background autoencoder from random weights, trained
                  jointly from the start
  frozen_background   Table 4: the background stays frozen throughout
  no_transformer, no_entropy, isotropic, anisotropic, k_plus_one,
  k_double        the other Table 4 ablations
  segformer       the Segformer MiT-B3 feature-map generator
                  (--config.model.segformer_weights=FILE; "" = random
                  initialisation, Table 4's ablation)
  tiny, smoke     a minute model on small data / a few steps (tests)
Any field can be overridden: ``--config.model.num_slots=7``.
"""

from __future__ import annotations

import ml_collections

from experiments import common

PRESETS = ("paper", "sprites", "quick", "clevr", "clevrtex", "shapestacks",
           "objects_room")
OPTIONS = ("background", "baseline", "frozen_background", "no_transformer",
           "no_entropy", "isotropic", "anisotropic", "k_plus_one",
           "k_double", "segformer", "tiny")

# (K, image size, isotropic scaling, complex background, phase-1 steps).
_DATASETS = {
    "clevr": (10, 128, True, False, 2_500),
    "clevrtex": (10, 128, False, True, 500_000),
    "shapestacks": (6, 64, True, True, 500_000),
    "objects_room": (3, 64, False, True, 500_000),
}


def _sprites_config() -> ml_collections.ConfigDict:
  from data_pipelines import sprites  # pylint: disable=g-import-not-at-top
  return sprites.default_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the locked config of a preset (see module doc)."""
  preset, options = common.parse_arg(arg, label="AST-Seg", presets=PRESETS,
                                     options=OPTIONS)

  # Model (paper 003, Table 6; official MF_config.py).
  model = ml_collections.ConfigDict()
  model.name = "ast_seg"
  model.num_slots = 5  # K: the sprites' maximum number of objects
  model.image_size = 64  # set from data.image_size below
  model.z_what_dim = 32
  model.isotropic_scaling = True
  model.feature_generator = "unet"
  model.unet_widths = ()  # () = Table 8's (80, 128, 192, 256, 256, 256)
  model.segformer_weights = ""  # the user's MiT-B3 file (no download)
  model.segformer_variant = "mit-b3"
  model.use_transformer = True
  model.transformer_dim = 256  # d_T
  model.transformer_heads = 8
  model.transformer_feedforward = 512
  model.transformer_layers = 6
  model.transformer_dropout = 0.1
  model.min_inverse_scale = 1.3  # s_min
  model.max_inverse_scale = 24.0  # s_max
  model.glimpse_size = 0  # 0 = 32 up to 64x64 images, 64 up to 128x128
  model.initial_background_activation_logit = 11.0  # alpha_0 = e^11
  model.variable_background_activation = False
  model.pixel_entropy_loss_weight = 1e-2  # lambda_pixel
  model.pixel_entropy_warmup_steps = 10_000  # N_pixel
  model.pixel_entropy_epsilon = 1e-20
  model.background_model = True
  model.background_training = "curriculum"
  model.background_freeze_steps = 30_000  # phase 2
  model.background_complexity = True
  model.background_weights = ""  # phase 1's export (see module doc)
  model.phase = "objects"
  model.stn = "separable"
  model.dtype = "float32"

  # The entropy weight follows the step: the model weights its own term.
  objective = ml_collections.ConfigDict()
  objective.name = "weighted_sum"

  c = common.base_config(model=model, data=_sprites_config(),
                         objective=objective)
  c.model.image_size = c.data.get_ref("image_size")
  # Optimizer and training (Sec. 5, Table 6; MF_train.Training_state).
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 4e-5
  c.optimizer.b1 = 0.90
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-9
  c.optimizer.schedule = "warmup_decay"
  c.optimizer.warmup_steps = 5_000
  c.optimizer.warmup_power = 2.0
  c.optimizer.late_decay_fraction = 0.9
  c.optimizer.late_decay_factor = 0.1
  c.train.batch_size = 64
  c.train.num_steps = 125_000

  _apply_preset(c, preset)
  for o in options:
    if not common.apply_shared_option(c, o):
      _apply_option(c, o, preset)
  if c.model.phase == "objects" and c.model.background_model:
    add_curriculum(c, preset, smoke="smoke" in options)
  c.lock()
  return c


def _apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  if preset == "quick":
    # A CPU demo: 32x32 sprites (up to 5 objects), a small U-Net (4 levels:
    # 32 -> 2), a 2-layer transformer of width 64, 16x16 glimpses, the
    # simple-background autoencoder trained jointly (BT: a single run), a
    # higher learning rate with a short warm-up.
    c.data.image_size = 32
    c.model.num_slots = 5
    c.model.z_what_dim = 16
    c.model.unet_widths = (16, 32, 48, 64, 64)
    c.model.transformer_dim = 64
    c.model.transformer_heads = 4
    c.model.transformer_feedforward = 128
    c.model.transformer_layers = 2
    c.model.glimpse_size = 16
    c.model.background_complexity = False
    c.model.background_training = "joint"
    c.model.pixel_entropy_warmup_steps = 500
    common.apply_quick_schedule(c, grad_accum_steps=1)
    c.optimizer.warmup_steps = 200
    c.sample.num = 16
  elif preset == "paper":  # CLEVR's protocol on the procedural stand-in
    from data_pipelines import clevr_like  # pylint: disable=g-import-not-at-top
    k, size, isotropic, complex_bg, _ = _DATASETS["clevr"]
    c.data = clevr_like.default_config()
    c.data.image_size = size
    c.model.image_size = c.data.get_ref("image_size")
    c.model.num_slots = k
    c.model.isotropic_scaling = isotropic
    c.model.background_complexity = complex_bg
  elif preset in _DATASETS:
    _real_dataset(c, preset)


def _real_dataset(c: ml_collections.ConfigDict, preset: str) -> None:
  """The paper's benchmarks (Sec. 5.1), read from ``data.data_dir``."""
  import importlib  # pylint: disable=g-import-not-at-top
  k, size, isotropic, complex_bg, _ = _DATASETS[preset]
  module = {"clevr": "multi_object", "objects_room": "multi_object",
            "clevrtex": "clevrtex", "shapestacks": "shapestacks"}[preset]
  data = importlib.import_module(f"data_pipelines.{module}").default_config()
  data.name = "clevr_with_masks" if preset == "clevr" else preset
  data.image_size = size
  c.data = data
  c.model.image_size = c.data.get_ref("image_size")
  c.model.num_slots = k
  c.model.isotropic_scaling = isotropic
  c.model.background_complexity = complex_bg


def background_phase(preset: str) -> dict[str, object]:
  """The fields phase 1 changes: the background autoencoder alone with its
  robust loss (background/config.py, background/train.py): Adam 2e-3
  (AdamW, weight decay 0), betas (0.9, 0.999), batch 128, learning rate /10
  at 4/5 of training."""
  steps = _DATASETS.get("clevr" if preset == "paper" else preset,
                        (0, 0, 0, 0, 500_000))[4]
  batch = 128
  if preset == "quick":
    batch, steps = 8, 3_000
  return {"model.phase": "background", "optimizer.learning_rate": 2e-3,
          "optimizer.b1": 0.9, "optimizer.b2": 0.999, "optimizer.eps": 1e-8,
          "optimizer.warmup_steps": 0, "optimizer.late_decay_fraction": 0.8,
          "optimizer.late_decay_factor": 0.1, "train.batch_size": batch,
          "train.num_steps": steps}


def add_curriculum(c: ml_collections.ConfigDict, preset: str,
                   smoke: bool = False) -> None:
  """Phase 1 before the run (`ocjax.train.curriculum`): its export sets
  ``model.background_weights``; phases 2-3 are the run (by step). With
  ``smoke`` phase 1 keeps the run's few steps of a small batch."""
  fields = background_phase(preset)
  if smoke:
    fields["train.batch_size"] = c.train.batch_size
    fields["train.num_steps"] = c.train.num_steps
  changes = ml_collections.ConfigDict()
  for field, value in fields.items():
    section, name = field.split(".")
    if section not in changes:
      changes[section] = ml_collections.ConfigDict()
    changes[section][name] = value
  changes.train.eval_every = 0  # no objects yet: nothing to segment
  c.curriculum = ml_collections.ConfigDict()
  c.curriculum.phases = "background"
  c.curriculum.background = ml_collections.ConfigDict()
  c.curriculum.background.changes = changes
  c.curriculum.background.export = "ocjax.convert.ast_seg:export_background"
  c.curriculum.background.export_to = "model.background_weights"
  # BT (baseline, the quick preset) trains the autoencoder from scratch.
  c.curriculum.background.when = "model.background_training=curriculum,frozen"


def _apply_option(c: ml_collections.ConfigDict, option: str,
                  preset: str) -> None:
  if option == "background":
    common.set_fields(c, background_phase(preset))
  elif option == "baseline":
    c.model.background_training = "joint"
  elif option == "frozen_background":
    c.model.background_training = "frozen"
  elif option == "no_transformer":
    c.model.use_transformer = False
  elif option == "no_entropy":
    c.model.pixel_entropy_loss_weight = 0.0
  elif option in ("isotropic", "anisotropic"):
    c.model.isotropic_scaling = option == "isotropic"
  elif option == "k_plus_one":
    c.model.num_slots = c.model.num_slots + 1
  elif option == "k_double":
    c.model.num_slots = 2 * c.model.num_slots
  elif option == "segformer":
    c.model.feature_generator = "segformer"
  elif option == "tiny":  # a minute model on small data, for tests
    c.data.image_size = 32
    for field, value in (("num_train", 64), ("num_test", 8)):
      if field in c.data:  # the procedural data only
        c.data[field] = value
    c.model.num_slots = 3
    c.model.z_what_dim = 8
    c.model.unet_widths = (8, 8, 8)
    c.model.transformer_dim = 16
    c.model.transformer_heads = 2
    c.model.transformer_feedforward = 32
    c.model.transformer_layers = 1
    c.model.glimpse_size = 8
    c.model.background_complexity = False
    c.model.background_training = "joint"
    c.optimizer.warmup_steps = 1
