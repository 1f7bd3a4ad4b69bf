"""AST-Seg (Sauvalle & de La Fortelle, WACV 2023): attention and soft-argmax.

Paper 003 ("Unsupervised multi-object segmentation using attention and
soft-argmax"), as the official PyTorch code computes it (BrunoSauvalle/AST,
``MF_models_encoder.Encoder``, ``MF_models_renderer.Renderer``,
``MF_train.losses``; parity in ``tests/test_ast_seg_parity.py``).

Encoding (Alg. 1):

* A feature-map generator (the U-Net of Table 8, `ocjax.nn.ast_unet`, or
  Segformer MiT-B3, `ocjax.nn.segformer`) maps the image to ``K`` attention
  logit maps and a feature map ``Phi`` of ``z + 1 + sd`` channels
  (``sd`` = 1 isotropic or 2 anisotropic scale dimensions).
* Eq. 11: each attention map is a softmax over all pixels. Eqs. 12-13: pixel
  coordinates ``x(i) = 2 (i - 1)/(w* - 1) - 1`` (pixel centres at +-1).
  Eqs. 14-16: soft-argmax positions ``(x0_k, y0_k)`` and attention-pooled
  queries ``phi0_k``, as one ``[x, y, Phi]`` pooling of ``D = z + 3 + sd``
  values.
* A linear embedding to ``d_T``, a transformer encoder without positional
  encoding (PyTorch's post-norm layer: 6 layers, 8 heads, feed-forward 512,
  dropout 0.1 in training) and a linear projection back to ``D``. The
  ablation ``use_transformer=False`` (Table 4) uses the pooled values
  themselves.
* Clamping of ``(x_k, y_k)`` to [-1, 1]; inverse scale ``s_k = s_min +
  (s_max - s_min) sigmoid(.)``; activation ``alpha_k = exp(.)``; ``z_what``.
  The official latent layout is kept (README trap 1): ``[x, y, s (sd), .,
  alpha]`` with the activation logit always at index 4 and ``z_what =
  latents[3 + sd:]``; with isotropic scaling index 3 is unused and index 4
  is both the activation logit and ``z_what[0]``.

Rendering (Alg. 2):

* The glimpse generator (Table 7, `ocjax.nn.glimpse`) maps every ``z_what``
  to an RGB object image ``o_k`` and mask ``m_k`` (``G x G``), all ``B K``
  objects in one batched pass.
* An STN (`ocjax.nn.stn`, PyTorch's ``affine_grid``/``grid_sample``,
  bilinear, zero padding, ``align_corners=False``) places them:
  ``theta_k = [[s_x, 0, -s_x x_k], [0, s_y, -s_y y_k]]`` maps image to
  glimpse coordinates. The matrix has no rotation, so sampling is separable:
  two small matmuls per object (``stn="separable"``, default) or a gather of
  the four taps (``stn="gather"``), equal up to rounding.
* Eq. 17: ``w_k = alpha_k M_k / sum_k' alpha_k' M_k'`` over the background
  (``M_0 = 1``, learned ``alpha_0 = exp(logit)``, logit initialised to 11;
  optionally a learned per-pixel logit offset) and the objects; eq. 18:
  ``X^ = sum_k w_k L_k`` with ``L_0`` the background image.

Losses (per example ``[B]``; their batch means are the official scalars):

* ``reconstruction`` (eqs. 19-20): the mean over pixels of the squared
  per-pixel L1 error summed over channels.
* ``entropy`` (eqs. 21-22): ``min(1, step / N_pixel)^2 lambda_pixel`` times
  the mean over pixels of ``(sum_k w_k log(w_k + 1e-20))^2``. The weight
  follows the training step, so it is applied here (the objective is a plain
  ``weighted_sum`` with weight 1); the unweighted term is
  ``aux["pixel_entropy_loss"]``.

The training step (the model declares ``uses_step``): the trainer passes the
optimizer step before its update, as the official code uses it, the same for
every micro-batch; a batch entry ``step`` (scalar or ``[B]``) is read when no
``step`` argument is given; without either (evaluation) the schedules are at
their end.

Background and the curriculum (Sec. 4.2). The background ``L_0`` is, in this
order: a batch entry ``background`` (``[B, H, W, 3 or 4]`` in [0, 1]: the
official phase 2 reads the frozen model's output from disk); else the
model's background autoencoder (`ocjax.nn.background_ae`, AE-NE [38]),
``BG(BE(255 x)) / 255``. ``background_training``:
``"curriculum"`` (CT: frozen, i.e. no gradient into it, while ``step <
background_freeze_steps`` = 30k, then trained with the foreground: phases 2
and 3; the trainer compiles the two apart, `training_stages`, so phase 2's
step computes no gradient of the autoencoder), ``"frozen"`` (Table 4's "frozen pretrained background model") or
``"joint"`` (BT: trained from the start). Phase 1, the background
autoencoder's pretraining with its robust loss, is ``phase="background"``:
only the autoencoder runs and the loss is ``background`` (the segmentation
is its soft foreground mask). Its weights reach the foreground run through
``background_weights`` (an ``.npz`` written by
`ocjax.convert.ast_seg.export_background`), which initialises the
autoencoder.

Outputs: ``masks`` are the ``K + 1`` normalised weights ``w`` (index 0 the
background), ``components`` the layers ``L_k``, ``latents`` the encoder's
``D`` latents per object with a zero row 0 for the background; segmentations
``masks`` (reported) and ``attention`` (the ``K`` attention maps normalised
over the queries at each pixel, resized to the image). ``aux``: positions,
inverse scales, activations, ``foreground_mask``, ``segmentation`` (the
paper's argmax), ``glimpses``, ``attention_maps`` (eq. 11's ``A_k``, ``[B,
K, h, w]``), the unweighted entropy term, the step and the entropy weight.

Figures (`AstSeg.extra_figures`, written by the trainer with its standard
ones): ``attention_maps`` (each ``A_k`` with its soft-argmax ``(x0_k,
y0_k)``, eqs. 12-15, marked in the object's colour), ``glimpses`` (``o_k``
and ``m_k`` before the STN) and ``occlusion_order`` (the background, then
the objects added back to front, `occlusion_sequence`).

Axis legend: B batch, K object queries, H, W image, h, w feature map,
G glimpse size, D latent size, d transformer width, z z_what size.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.models import base
from ocjax.nn import ast_unet
from ocjax.nn import background_ae
from ocjax.nn import glimpse as glimpse_lib
from ocjax.nn import stn
from ocjax.nn import transformer as transformer_lib
from ocjax.viz import grids

Array = jax.Array

FEATURE_GENERATORS = ("unet", "segformer")
BACKGROUND_TRAINING = ("curriculum", "frozen", "joint")
PHASES = ("objects", "background")
STN_IMPLEMENTATIONS = ("separable", "gather")


def _position_grid(height: int, width: int) -> np.ndarray:
  """`position_map` on the host: float32 ``[h, w, 2]``."""
  xs = 2 * (np.arange(width) / max(width - 1, 1) - 0.5)
  ys = 2 * (np.arange(height) / max(height - 1, 1) - 0.5)
  x, y = np.meshgrid(xs, ys, indexing="xy")  # [h, w]
  # A float32 buffer in the official model (also in its float64 copy).
  return np.stack([x, y], axis=-1).astype(np.float32)


def position_map(height: int, width: int, dtype=jnp.float32) -> Array:
  """Eqs. 12-13: ``[h, w, 2]`` with (x, y) = ``2 (i / (n - 1) - 0.5)``,
  computed in float64 and rounded to float32 as the official buffer."""
  return jnp.asarray(_position_grid(height, width), dtype)


def clamp(x: Array, lower: float, upper: float) -> Array:
  """``torch.clamp``: the gradient passes where ``lower <= x <= upper``."""
  inside = (x >= lower) & (x <= upper)
  return jnp.where(inside, x, jnp.clip(x, lower, upper))


def entropy_warmup_ratio(step: Array, full_activation_step: int,
                         dtype=jnp.float32) -> Array:
  """Eq. 22's ``min(1, step / N_pixel)^2``."""
  step = jnp.asarray(step).astype(dtype)
  if full_activation_step <= 0:
    return jnp.ones_like(step)
  r = jnp.minimum(1.0, step / full_activation_step)
  return r * r


def _load_background_weights(path: str):
  """An initializer factory reading the phase-1 autoencoder (`path`)."""
  cache: dict[str, Any] = {}

  def tree():
    if "tree" not in cache:
      if not os.path.exists(path):
        raise FileNotFoundError(
            f"config.model.background_weights names {path!r}, which does not "
            "exist: give the .npz written by `python -m ocjax.convert.ast_seg "
            "export-background` from the phase-1 run (or '' to start the "
            "background autoencoder from random weights).")
      with np.load(path, allow_pickle=False) as data:
        cache["tree"] = {k: data[k] for k in data.files}
    return cache["tree"]

  def initializer(name: str):
    def init_fn(key, shape, dtype=jnp.float32):
      del key
      values = tree()
      if name not in values:
        raise ValueError(f"{path!r} has no background weight {name!r} "
                         f"(it holds {sorted(values)[:6]}...).")
      value = values[name]
      if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"Background weight {name!r} in {path!r} has shape {value.shape}, "
            f"this model needs {tuple(shape)} (image size and "
            "background_complexity must match the phase-1 run).")
      return jnp.asarray(value, dtype)
    return init_fn

  return initializer


class _PretrainedBackground(nn.Module):
  """The background autoencoder, optionally initialised from a file."""
  height: int
  width: int
  complexity: bool = True
  weights: str = ""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_255: Array) -> tuple[Array, Array]:
    loader = (_load_background_weights(self.weights) if self.weights
              else None)
    sub = lambda prefix: (None if loader is None else
                          (lambda name: loader(f"{prefix}/{name}")))
    encoder = background_ae.BackgroundEncoder(
        self.complexity, self.dtype, sub("encoder"), name="encoder")
    generator = background_ae.BackgroundGenerator(
        self.height, self.width, self.complexity, self.dtype,
        sub("generator"), name="generator")
    z = encoder(images_255)
    return generator(z), z


class AstSeg(base.ObjectCentricModel):
  """AST-Seg; ``__call__(batch, *, train, step) -> ModelOutput``.

  Attributes (paper's names in brackets; Table 6 defaults):
    num_slots: K, object queries (the dataset's maximum number of objects).
    image_size: H = W.
    z_what_dim: [d_zwhat] 32.
    isotropic_scaling: one inverse scale (True) or (s_x, s_y).
    feature_generator: "unet" (Table 8, the offline default) or "segformer"
      (MiT-B3 backbone + MLP decoder; `segformer_weights` names the published
      weights file, "" = random initialisation, the Table 4 ablation).
    unet_widths: the U-Net's widths f_0..f_L; () = the official ones.
    segformer_weights: path of the MiT-B3 weights (see `ocjax.nn.segformer`).
    segformer_variant: "mit-b3" (the paper) or another MiT size.
    use_transformer: False = Table 4's "model without transformer encoder".
    transformer_dim, transformer_heads, transformer_feedforward,
      transformer_layers, transformer_dropout: [d_T] 256, 8, 512, 6, 0.1.
    min_inverse_scale, max_inverse_scale: [s_min, s_max] 1.3, 24.
    glimpse_size: G; 0 = the official rule (32 up to 64x64 images, 64 up to
      128x128, else 128).
    initial_background_activation_logit: log alpha_0 at initialisation, 11.
    variable_background_activation: a learned per-pixel logit offset.
    pixel_entropy_loss_weight: [lambda_pixel] 1e-2 (0 = Table 4's "without
      pixel entropy loss").
    pixel_entropy_warmup_steps: [N_pixel] 10k, full weight from there.
    pixel_entropy_epsilon: the 1e-20 of eq. 21.
    background_model: compute L_0 with the model's background autoencoder;
      False: the batch must carry ``background``.
    background_training: "curriculum", "frozen" or "joint" (module doc).
    background_freeze_steps: phase 2's length, 30k.
    background_complexity: AE-NE's "complex background" channel schedule
      (False for CLEVR).
    background_weights: ``.npz`` of the phase-1 autoencoder ("" = random).
    phase: "objects" (phases 2-3 / BT) or "background" (phase 1).
    stn: "separable" or "gather" (`ocjax.nn.stn`).
    dtype: compute dtype ("float64" for the parity tests).
  """
  num_slots: int = 6
  image_size: int = 64
  z_what_dim: int = 32
  isotropic_scaling: bool = True
  feature_generator: str = "unet"
  unet_widths: Sequence[int] = ()
  segformer_weights: str = ""
  segformer_variant: str = "mit-b3"
  use_transformer: bool = True
  transformer_dim: int = 256
  transformer_heads: int = 8
  transformer_feedforward: int = 512
  transformer_layers: int = 6
  transformer_dropout: float = 0.1
  min_inverse_scale: float = 1.3
  max_inverse_scale: float = 24.0
  glimpse_size: int = 0
  initial_background_activation_logit: float = 11.0
  variable_background_activation: bool = False
  pixel_entropy_loss_weight: float = 1e-2
  pixel_entropy_warmup_steps: int = 10_000
  pixel_entropy_epsilon: float = 1e-20
  background_model: bool = True
  background_training: str = "curriculum"
  background_freeze_steps: int = 30_000
  background_complexity: bool = True
  background_weights: str = ""
  phase: str = "objects"
  stn: str = "separable"
  dtype: Any = jnp.float32

  rng_streams = ("dropout",)
  eval_modes = {"fixed": {}}
  segmentation_names = ("masks", "attention")
  reported_segmentation = "masks"
  mutable_collections = ("batch_stats",)
  uses_step = True
  input_key = "image"

  def training_stages(self) -> tuple[int, ...]:
    """CT's phase 3 starts at ``background_freeze_steps`` (protocol,
    `ocjax.models.base`): phase 2 then compiles without the background
    autoencoder's gradients (1.4x faster per step on CPU, README)."""
    if (self.phase == "objects" and self.background_model
        and self.background_training == "curriculum"):
      return (self.background_freeze_steps,)
    return ()

  def frozen_parameters(self, stage: int | None = None) -> tuple[str, ...]:
    """The background autoencoder in CT's phase 2 (stage 0) and in the
    frozen ablation (protocol): no gradient reaches it there, and the
    trainer skips its Adam update."""
    if self.phase != "objects" or not self.background_model:
      return ()
    if (self.background_training == "frozen"
        or (self.background_training == "curriculum" and stage == 0)):
      return ("background_ae",)
    return ()

  def cached_inputs(self, stage: int | None = None) -> tuple[str, ...]:
    """``background`` wherever the autoencoder is frozen (protocol): the
    trainer computes it once per example, as the official phase 2 reads it
    from disk (`ocjax.train.input_cache`)."""
    return ("background",) if self.frozen_parameters(stage) else ()

  def compute_cached_inputs(self, batch: dict[str, Array], *,
                            stage: int | None = None) -> dict[str, Array]:
    """``{"background": L_0 [B, H, W, 3]}`` of the frozen autoencoder,
    the values `_background` computes."""
    if not self.cached_inputs(stage):
      raise ValueError(f"AST-Seg caches no inputs at stage {stage}.")
    x = jnp.asarray(batch[self.input_key], self.dtype)
    return {"background": self._autoencoder_background(x)}

  # ------------------------------------------------------------ settings
  @property
  def scaling_dim(self) -> int:
    return 1 if self.isotropic_scaling else 2

  @property
  def latent_dim(self) -> int:
    """D = z + 3 + sd: x, y, scale(s), activation, z_what (official)."""
    return self.z_what_dim + 3 + self.scaling_dim

  @property
  def feature_map_channels(self) -> int:
    """K attention logits + z + 1 + sd feature channels."""
    return self.num_slots + self.z_what_dim + 1 + self.scaling_dim

  @property
  def resolved_glimpse_size(self) -> int:
    return self.glimpse_size or glimpse_lib.default_glimpse_size(
        self.image_size, self.image_size)

  def _check_config(self) -> None:
    def choice(field, value, allowed):
      if value not in allowed:
        raise ValueError(f"model.{field}={value!r}; expected one of "
                         f"{allowed}.")
    choice("feature_generator", self.feature_generator, FEATURE_GENERATORS)
    choice("background_training", self.background_training,
           BACKGROUND_TRAINING)
    choice("phase", self.phase, PHASES)
    choice("stn", self.stn, STN_IMPLEMENTATIONS)
    if self.num_slots < 1:
      raise ValueError(f"model.num_slots must be >= 1; got {self.num_slots}.")
    if self.z_what_dim < 2 and self.isotropic_scaling:
      raise ValueError("model.z_what_dim must be >= 2 (the official layout "
                       "reads the activation at index 4).")
    if self.use_transformer and self.transformer_dim % self.transformer_heads:
      raise ValueError(
          f"model.transformer_dim={self.transformer_dim} must divide by "
          f"model.transformer_heads={self.transformer_heads}.")
    if not 0 < self.min_inverse_scale < self.max_inverse_scale:
      raise ValueError("model.min_inverse_scale must be positive and below "
                       "model.max_inverse_scale.")
    glimpse_lib.glimpse_channels(self.resolved_glimpse_size)
    if self.phase == "background" and not self.background_model:
      raise ValueError("model.phase='background' trains the background "
                       "autoencoder: model.background_model must be True.")

  def dummy_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
    s = int(self.image_size)
    batch = {"image": np.zeros((batch_size, s, s, 3), np.float32)}
    if not self.background_model:
      batch["background"] = np.zeros((batch_size, s, s, 3), np.float32)
    return batch

  # ------------------------------------------------------------ modules
  def setup(self):
    self._check_config()
    dt = self.dtype
    s = self.image_size
    if self.background_model:
      self.background_ae = _PretrainedBackground(
          s, s, self.background_complexity, self.background_weights, dt)
    if self.phase == "background":
      return
    if self.feature_generator == "unet":
      self.feature_and_attention_map_generator = ast_unet.Unet(
          self.feature_map_channels, tuple(self.unet_widths), dt)
    else:
      from ocjax.nn import segformer  # pylint: disable=g-import-not-at-top
      self.feature_and_attention_map_generator = segformer.Segformer(
          self.feature_map_channels, weights=self.segformer_weights,
          variant=self.segformer_variant, dtype=dt)
    d_latent = self.latent_dim
    if self.use_transformer:
      self.feature_vector_embedding = transformer_lib.dense(
          self.transformer_dim, d_latent, dt, "feature_vector_embedding")
      self.transformer = transformer_lib.TransformerEncoder(
          num_layers=self.transformer_layers,
          num_heads=self.transformer_heads,
          dim_feedforward=self.transformer_feedforward,
          dropout=self.transformer_dropout, dtype=dt)
      self.latents_projection = transformer_lib.dense(
          d_latent, self.transformer_dim, dt, "latents_projection")
    self.glimpse_generator = glimpse_lib.GlimpseGenerator(
        self.resolved_glimpse_size, dt)
    self.background_activation_logit = self.param(
        "background_activation_logit",
        nn.initializers.constant(self.initial_background_activation_logit),
        (1, 1))
    if self.variable_background_activation:
      self.local_background_activation_logit = self.param(
          "local_background_activation_logit", nn.initializers.zeros, (s, s))

  # ------------------------------------------------------------ helpers
  def _probe(self, name: str, value: Array, probes: bool) -> Array:
    """Records an intermediate; with ``probes`` its gradient too (flax
    ``perturb``: d loss / d value is the gradient of ``perturbations``)."""
    if probes:
      value = self.perturb(name, value)
    self.sow("intermediates", name, value)
    return value

  def _schedule_step(self, batch, step) -> Array:
    """The training step of this call (module doc), before the update."""
    if step is None and "step" in batch:
      step = jnp.ravel(jnp.asarray(batch["step"]))[0]
    if step is None:  # Not training: the schedules' end.
      step = max(self.pixel_entropy_warmup_steps,
                 self.background_freeze_steps)
    return jnp.asarray(step, jnp.int32)

  # ------------------------------------------------------------ encoding
  def encode(self, x: Array, *, train: bool, probes: bool = False):
    """Alg. 1: ``x [B, H, W, 3]`` -> raw latents ``[B, K, D]``, the
    attention maps ``A_k`` ``[B, K, h, w]`` (eq. 11) and their logs."""
    k = self.num_slots
    fmap = self.feature_and_attention_map_generator(x, train=train)
    fmap = self._probe("feature_map", fmap, probes)  # [B, h, w, C]
    b, fh, fw, _ = fmap.shape
    logits = jnp.moveaxis(fmap[..., :k], -1, 1).reshape(b, k, fh * fw)
    attention = jax.nn.softmax(logits, axis=-1)  # eq. 11, over pixels
    attention_maps = attention.reshape(b, k, fh, fw)
    self.sow("intermediates", "attention_maps", attention_maps)
    pos = jnp.broadcast_to(position_map(fh, fw, fmap.dtype), (b, fh, fw, 2))
    targets = jnp.concatenate([pos, fmap[..., k:]], axis=-1)
    targets = targets.reshape(b, fh * fw, self.latent_dim)
    pooled = jnp.einsum("bkp,bpd->bkd", attention, targets)  # eqs. 14-16
    self.sow("intermediates", "pooled_queries", pooled)
    if self.use_transformer:
      t = self.feature_vector_embedding(pooled)
      self.sow("intermediates", "transformer_input", t)
      t = self.transformer(t, deterministic=not train)
      self.sow("intermediates", "transformer_out", t)
      latents = self.latents_projection(t)
    else:
      latents = pooled
    latents = self._probe("latents", latents, probes)
    # log A_k, for the attention segmentation (no 0/0 where every map
    # underflows).
    log_attention = jax.nn.log_softmax(logits, axis=-1)
    return latents, attention_maps, log_attention.reshape(b, k, fh, fw)

  def split_latents(self, latents: Array) -> dict[str, Array]:
    """Clamping and split (Alg. 1), official index layout (module doc)."""
    sd = self.scaling_dim
    positions = clamp(latents[..., 0:2], -1.0, 1.0)
    scale = self.min_inverse_scale + (
        self.max_inverse_scale - self.min_inverse_scale) * jax.nn.sigmoid(
            latents[..., 2:2 + sd])
    activation_logit = latents[..., 4]
    return dict(positions=positions, inverse_scale=scale,
                activation_logit=activation_logit,
                activation=jnp.exp(activation_logit),
                z_what=latents[..., 3 + sd:])

  # ------------------------------------------------------------ rendering
  def theta(self, positions: Array, scale: Array) -> Array:
    """``[..., 2, 3]``: ``[[s_x, 0, -s_x x], [0, s_y, -s_y y]]``."""
    sx = scale[..., 0]
    sy = sx if self.isotropic_scaling else scale[..., 1]
    zero = jnp.zeros_like(sx)
    t = -positions * jnp.stack([sx, sy], axis=-1)
    return jnp.stack([jnp.stack([sx, zero, t[..., 0]], -1),
                      jnp.stack([zero, sy, t[..., 1]], -1)], axis=-2)

  def render(self, latents: Array, background: Array, *,
             probes: bool = False) -> dict[str, Array]:
    """Alg. 2 and eqs. 17-18 for raw latents ``[B, K, D]`` and a background
    image ``[B, H, W, 3]``."""
    b, k, _ = latents.shape
    h = w = self.image_size
    parts = self.split_latents(latents)
    for name in ("positions", "inverse_scale", "activation_logit",
                 "activation", "z_what"):
      self.sow("intermediates", name, parts[name])
    g = self.glimpse_generator(parts["z_what"].reshape(b * k, -1))
    gs = g.shape[1]
    g = self._probe("glimpses", g.reshape(b, k, gs, gs, 4), probes)
    theta = self.theta(parts["positions"], parts["inverse_scale"])
    self.sow("intermediates", "theta", theta)
    flat_g = g.reshape(b * k, gs, gs, 4)
    flat_t = theta.reshape(b * k, 2, 3)
    if self.stn == "separable":
      warped = stn.sample_axis_aligned(flat_g, flat_t, h, w)
    else:
      warped = stn.grid_sample(flat_g, stn.affine_grid(flat_t, h, w))
    warped = self._probe("warped_rgba", warped.reshape(b, k, h, w, 4), probes)
    layers_rgb = warped[..., :3]
    masks = warped[..., 3:]  # [B, K, H, W, 1]

    logit = self.background_activation_logit.astype(self.dtype).reshape(())
    if self.variable_background_activation:
      logit = logit + self.local_background_activation_logit.astype(
          self.dtype)[..., None]  # [H, W, 1]
    alpha0 = jnp.exp(logit)
    self.sow("intermediates", "background_activation", alpha0)
    bg_weight = jnp.broadcast_to(alpha0, (b, 1, h, w, 1))
    obj_weight = parts["activation"][:, :, None, None, None] * masks
    weights = jnp.concatenate([bg_weight, obj_weight], axis=1)  # [B,K+1,..]
    # eq. 17, as the code: times the reciprocal of the sum.
    normalized = weights * jnp.reciprocal(jnp.sum(weights, axis=1,
                                                  keepdims=True))
    self.sow("intermediates", "normalized_weights", normalized)
    image_layers = jnp.concatenate([background[:, None], layers_rgb], axis=1)
    recon = jnp.sum(image_layers * normalized, axis=1)  # eq. 18
    self.sow("intermediates", "reconstruction", recon)
    return dict(parts, glimpses=g, theta=theta, warped=warped,
                weights=normalized, layers=image_layers, recon=recon,
                foreground_mask=1 - normalized[:, 0])

  # ------------------------------------------------------------ background
  def _background(self, batch, x: Array, step: Array,
                  stage: int | None = None) -> Array:
    """L_0 ``[B, H, W, 3]`` in [0, 1] (module doc); ``stage`` as in
    `__call__`."""
    if "background" in batch:
      bg = jnp.asarray(batch["background"], self.dtype)
      if bg.shape[:3] != x.shape[:3] or bg.shape[-1] not in (3, 4):
        raise ValueError(
            f"batch['background'] must be [B, H, W, 3 or 4] like the image "
            f"{x.shape}; got {bg.shape}.")
      return bg[..., :3]
    if not self.background_model:
      raise ValueError(
          "This AST-Seg model has no background autoencoder "
          "(model.background_model=False): the batch needs a 'background' "
          "entry [B, H, W, 3] (the frozen phase-1 model's output).")
    bg = self._autoencoder_background(x)
    if self.background_training == "frozen":
      return jax.lax.stop_gradient(bg)
    if self.background_training == "curriculum" and stage is not None:
      # Static: phase 2 compiles without the autoencoder's backward pass.
      return jax.lax.stop_gradient(bg) if stage == 0 else bg
    if self.background_training == "curriculum":
      frozen = step < self.background_freeze_steps
      return jnp.where(frozen, jax.lax.stop_gradient(bg), bg)
    return bg

  def _autoencoder_background(self, x: Array) -> Array:
    """``BG(BE(255 x)) / 255``: the autoencoder's background channels."""
    out, _ = self.background_ae(x * 255)
    return out[..., :3] / 255

  def _background_phase(self, x: Array) -> base.ModelOutput:
    """Phase 1: the background autoencoder alone, with its robust loss."""
    out, z = self.background_ae(x * 255)
    loss, soft = background_ae.robust_loss(x * 255, out)
    bg = out[..., :3] / 255
    fg = soft[:, None, ..., None]
    masks = jnp.concatenate([1 - fg, fg], axis=1)  # [B, 2, H, W, 1]
    components = jnp.stack([bg, x], axis=1)
    b = x.shape[0]
    latents = jnp.stack([z, jnp.zeros_like(z)], axis=1)
    return base.ModelOutput(
        recon=bg, masks=masks, components=components,
        losses={"background": loss}, latents=latents,
        segmentations={"masks": masks, "attention": masks},
        aux={"error_prediction": out[..., 3] / 255,
             "segmentation": (soft > 0.5).astype(jnp.int32).reshape(
                 b, *soft.shape[1:])})

  # ------------------------------------------------------------ forward
  def __call__(self, batch: dict[str, Array], *, train: bool = True,
               step: Array | int | None = None, stage: int | None = None,
               probes: bool = False) -> base.ModelOutput:
    """Encodes, renders and scores a batch.

    Args:
      batch: ``image`` ``[B, H, W, 3]`` in [0, 1]; optionally ``background``
        (``[B, H, W, 3 or 4]``, [0, 1]) and ``step`` (module doc).
      train: BatchNorm batch statistics (and running-statistics updates when
        ``batch_stats`` is mutable), transformer dropout, the step counter.
      step: the training step for the entropy warm-up and the curriculum.
      stage: the curriculum's stage, static (`training_stages`; the
        trainer's): 0 phase 2, background frozen; 1 phase 3, trained.
        None: read from ``step``.
      probes: record d loss / d intermediates (``perturbations``; tests).
    """
    image = batch[self.input_key]
    b, h, w, _ = image.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
          f"AST-Seg was built for {self.image_size}x{self.image_size} images "
          f"(config model.image_size) but got {h}x{w}.")
    x = jnp.asarray(image, self.dtype)
    step = self._schedule_step(batch, step)
    if self.phase == "background":
      return self._background_phase(x)

    background = self._background(batch, x, step, stage)
    latents, attention_maps, log_attention = self.encode(
        x, train=train, probes=probes)
    r = self.render(latents, background, probes=probes)
    k = self.num_slots
    wts = r["weights"]  # [B, K+1, H, W, 1]

    # Eqs. 19-20: squared per-pixel L1 error, averaged over pixels.
    l1 = jnp.sum(jnp.abs(r["recon"] - x), axis=-1)  # [B, H, W]
    reconstruction = jnp.mean(jnp.square(l1), axis=(1, 2))
    # Eq. 21 (the sum is <= 0; squared).
    pixel_entropy = jnp.sum(
        wts * jnp.log(wts + self.pixel_entropy_epsilon), axis=1)[..., 0]
    entropy_unweighted = jnp.mean(jnp.square(pixel_entropy), axis=(1, 2))
    ratio = entropy_warmup_ratio(step, self.pixel_entropy_warmup_steps,
                                 self.dtype)
    entropy_weight = self.pixel_entropy_loss_weight * ratio  # eq. 22
    self.sow("intermediates", "pixel_l1_error", l1)
    self.sow("intermediates", "pixel_entropy", pixel_entropy)

    # The attention maps as a segmentation: normalised over the K queries.
    att = jax.nn.softmax(log_attention, axis=1)[..., None]
    if att.shape[2:4] != (h, w):
      att = jax.image.resize(att, (b, k) + (h, w, 1), "bilinear")
      att = att / jnp.sum(att, axis=1, keepdims=True)
    latents_out = jnp.concatenate(
        [jnp.zeros((b, 1, latents.shape[-1]), latents.dtype), latents],
        axis=1)
    return base.ModelOutput(
        recon=r["recon"], masks=wts, components=r["layers"],
        losses={"reconstruction": reconstruction,
                "entropy": entropy_weight * entropy_unweighted},
        latents=latents_out,
        segmentations={"masks": wts, "attention": att},
        aux={"positions": r["positions"], "inverse_scale": r["inverse_scale"],
             "activation": r["activation"],
             "foreground_mask": r["foreground_mask"],
             "segmentation": jnp.argmax(wts[..., 0], axis=1),
             "glimpses": r["glimpses"],
             "attention_maps": attention_maps,
             "pixel_entropy_loss": entropy_unweighted,
             "entropy_weight": jnp.broadcast_to(entropy_weight, (b,)),
             "step": jnp.broadcast_to(step, (b,))})

  # ------------------------------------------------------------ figures
  def extra_figures(self, batch: dict[str, np.ndarray],
                    out: base.ModelOutput) -> dict[str, np.ndarray]:
    """The paper's figures (module doc), from ``out.aux``; none in phase 1
    (the background autoencoder alone)."""
    aux = out.aux
    if "attention_maps" not in aux:
      return {}
    images = np.asarray(batch[self.input_key])
    return {
        "attention_maps": attention_figure(images, aux["attention_maps"]),
        "glimpses": glimpse_figure(images, aux["glimpses"]),
        "occlusion_order": occlusion_figure(
            images, out.masks, out.components, aux["activation"]),
    }


# -------------------------------------------------------------- host figures
FIGURE_ROWS = 8  # examples per figure, as the reconstruction grid


def object_colour(k: int) -> np.ndarray:
  """Object ``k``'s (0-based) colour, uint8 ``[3]``: its colour in the
  reconstruction grid's ``masks`` column, where the background is label 1."""
  return grids.labels_to_rgb(np.int64(k + 2))


def soft_argmax(attention_maps: np.ndarray) -> np.ndarray:
  """Eqs. 12-15 on the host: ``A [..., h, w]`` -> ``(x0, y0) [..., 2]``."""
  a = np.asarray(attention_maps, np.float64)
  grid = _position_grid(*a.shape[-2:]).astype(np.float64)  # [h, w, 2]
  return np.einsum("...hw,hwd->...d", a, grid)


def grid_to_pixels(xy: np.ndarray, grid_size: tuple[int, int],
                   image_size: tuple[int, int]) -> np.ndarray:
  """Eqs. 12-13 inverted: ``(x, y) [..., 2]`` on an ``h x w`` grid (+-1 at
  the first/last pixel centres) -> (column, row) ``[..., 2]`` in an ``H x W``
  image covering the grid (grid pixel ``i`` spans ``[i H/h, (i + 1) H/h)``).
  """
  xy = np.asarray(xy, np.float64)
  n = np.array([grid_size[1], grid_size[0]], np.float64)  # (w, h)
  out = np.array([image_size[1], image_size[0]], np.float64)  # (W, H)
  # Grid pixels, to 1e-4: float32's rounding of a position on a pixel's
  # centre must not move an enlarged pixel's marker across a half.
  u = np.round((xy + 1) / 2 * np.maximum(n - 1, 1), 4)
  return (u + 0.5) * out / n - 0.5


def _marker_radius(size: int) -> int:
  return max(1, round(size / 32))


def attention_figure(images: np.ndarray, attention_maps: np.ndarray,
                     max_rows: int = FIGURE_ROWS) -> np.ndarray:
  """Rows: the input with every soft-argmax ``(x0_k, y0_k)`` | ``A_1`` ..
  ``A_K`` (eq. 11), each scaled to its maximum, with its soft-argmax (eqs.
  12-15) marked by a cross in the object's colour.

  Args:
    images: ``[B, H, W, 3]`` in [0, 1].
    attention_maps: ``[B, K, h, w]``, each summing to 1 over its pixels
      (``h = H`` for the U-Net, ``H / 4`` for the Segformer: shown enlarged).

  Returns:
    uint8 ``[rows, cols, 3]``.
  """
  images = np.asarray(images)
  maps = np.asarray(attention_maps, np.float32)
  _, k, h, w = maps.shape
  size = images.shape[1:3]  # (H, W)
  f = size[0] // h
  if f * h != size[0] or f * w != size[1]:
    f = 1  # not an integer enlargement: the maps at their own size
  radius = _marker_radius(size[0])
  xy = soft_argmax(maps)  # [B, K, 2]
  at_image = grid_to_pixels(xy, (h, w), size)  # [B, K, 2]
  at_map = grid_to_pixels(xy, (h, w), (f * h, f * w))
  rows = []
  for b in range(min(len(images), max_rows)):
    overview = grids.to_uint8(images[b])
    row = []
    for j in range(k):
      colour = object_colour(j)
      overview = grids.draw_marker(overview, *at_image[b, j], colour, radius)
      heat = maps[b, j] / max(float(maps[b, j].max()), 1e-30)
      tile = grids.upscale(grids.to_uint8(heat), f)
      row.append(grids.draw_marker(tile, *at_map[b, j], colour, radius))
    rows.append([overview] + row)
  return grids.tile_rows(rows)


def glimpse_figure(images: np.ndarray, glimpses: np.ndarray,
                   max_rows: int = FIGURE_ROWS) -> np.ndarray:
  """Rows: the input | ``o_k`` and ``m_k`` for each object: the glimpse
  generator's image and mask (Table 7, Alg. 2) before the STN, the mask in
  the object's colour; enlarged by ``H // G`` when that divides the image.

  Args:
    images: ``[B, H, W, 3]`` in [0, 1].
    glimpses: ``[B, K, G, G, 4]`` in [0, 1] (RGB ``o_k``, mask ``m_k``).
  """
  images = np.asarray(images)
  glimpses = np.asarray(glimpses, np.float32)
  g = glimpses.shape[2]
  f = images.shape[1] // g if images.shape[1] % g == 0 else 1
  rows = []
  for b in range(min(len(images), max_rows)):
    row = [grids.to_uint8(images[b])]
    for j in range(glimpses.shape[1]):
      o, m = glimpses[b, j, ..., :3], glimpses[b, j, ..., 3:]
      row.append(grids.upscale(grids.to_uint8(o), f))
      row.append(grids.upscale(
          grids.to_uint8(m * (object_colour(j) / 255.0)), f))
    rows.append(row)
  return grids.tile_rows(rows)


def occlusion_sequence(weights: np.ndarray, layers: np.ndarray,
                       activation: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
  """One example's reconstruction built back to front (eqs. 17-18).

  By eq. 17, where objects overlap the larger ``alpha_k M_k`` wins, so the
  occlusion order is the activations' order: back to front is ``alpha_k``
  ascending. Image ``j`` composes the background and the ``j`` backmost
  objects with eq. 17 restricted to them; the common normaliser cancels, so
  it is ``sum_S w_k L_k / sum_S w_k`` over the set ``S`` shown.

  Args:
    weights: eq. 17's ``w`` ``[K + 1, H, W, 1]``, index 0 the background.
    layers: ``L_0 .. L_K`` ``[K + 1, H, W, 3]``.
    activation: ``alpha_1 .. alpha_K`` ``[K]``.

  Returns:
    ``order`` ``[K]`` (object indices, 0-based, back to front) and float32
    images ``[K + 1, H, W, 3]``: ``L_0``, then one more object each; the
    last is eq. 18's ``X^``.
  """
  w = np.asarray(weights, np.float64)
  layers = np.asarray(layers, np.float64)
  order = np.argsort(np.asarray(activation), kind="stable")  # back to front
  num = w[0] * layers[0]  # [H, W, 3]
  den = w[0].copy()  # [H, W, 1]
  out = [num / np.maximum(den, 1e-300)]
  for j in order:
    num = num + w[j + 1] * layers[j + 1]
    den = den + w[j + 1]
    out.append(num / np.maximum(den, 1e-300))
  return order, np.stack(out).astype(np.float32)


def occlusion_figure(images: np.ndarray, weights: np.ndarray,
                     layers: np.ndarray, activation: np.ndarray,
                     max_rows: int = FIGURE_ROWS) -> np.ndarray:
  """Rows: the input | the background ``L_0`` | the objects added one at a
  time back to front (`occlusion_sequence`); the last tile is ``X^``.

  Args:
    images: ``[B, H, W, 3]``; weights ``[B, K + 1, H, W, 1]`` (``masks``);
      layers ``[B, K + 1, H, W, 3]`` (``components``); activation ``[B, K]``.
  """
  rows = []
  for b in range(min(len(images), max_rows)):
    _, seq = occlusion_sequence(weights[b], layers[b], activation[b])
    rows.append([grids.to_uint8(images[b])]
                + [grids.to_uint8(x) for x in seq])
  return grids.tile_rows(rows)


MODEL = AstSeg
