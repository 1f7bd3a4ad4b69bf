"""GENESIS-V2 (Engelcke, Parker Jones, Posner; NeurIPS 2021).

Papers 001 (main text) and 002 (appendix) in ../shared/seeds. The inference
model: a UNet backbone gives features ``e``; an attention head gives
semi-convolutional pixel embeddings ``zeta``, which the IC-SBP (Alg. 1)
clusters into K attention masks ``m``; a feature head gives ``f``, pooled per
mask into one vector per slot; a posterior head gives ``q(z_k | x)``. The
generative model: every ``z_k`` is decoded by the same spatial-broadcast
decoder into RGB means ``mu_k`` and a mask logit, the logits are normalised
over slots into ``pi`` (softmax), and the image likelihood is the SGMM of
Eq. (1). The slot prior is autoregressive (Eq. 2) or independent N(0, I).

Axis legend: B batch, K slots, H height, W width, C channels,
D embedding (zeta), F pooled features, L latent.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.models import base
from ocjax.nn import autoregressive_prior
from ocjax.nn import broadcast_decoder
from ocjax.nn import icsbp
from ocjax.nn import init
from ocjax.nn import layers
from ocjax.nn import semiconv
from ocjax.nn import unet
from ocjax.objectives import kl as kl_lib
from ocjax.objectives import likelihood

Array = jax.Array

# Pooling: f_k = sum(m_k f) / (sum(m_k) + eps)  (App. B "small epsilon").
POOL_EPS = 1e-5
# Posterior scale: sigma = softplus(. + 0.5) + 1e-8.
POSTERIOR_SIGMA_SHIFT = 0.5
POSTERIOR_SIGMA_EPS = 1e-8


def _conv1x1(features: int, fan_in: int, dtype, name: str) -> nn.Conv:
  return nn.Conv(features, (1, 1), dtype=dtype,
                 kernel_init=init.torch_default(fan_in),
                 bias_init=init.torch_default(fan_in), name=name)


def _dense(features: int, fan_in: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype,
                  kernel_init=init.torch_default(fan_in),
                  bias_init=init.torch_default(fan_in), name=name)


class GenesisV2(base.ObjectCentricModel):
  """GENESIS-V2; ``__call__(batch) -> ModelOutput`` (see `ocjax.models.base`).

  Segmentations: ``attention`` (the IC-SBP masks m) and ``decoder`` (the
  decoded mixing weights pi, the reported one). Evaluation modes: ``fixed``
  K and ``flexible`` K (Sec. 4.1).

  Attributes:
    num_slots: K, the number of slots (masks) in training.
    image_size: H = W of the inputs (32, 64 or 128).
    feat_dim: D_e, width of the backbone output and of the latents (64).
    embed_dim: D_zeta, channels of the pixel embeddings (8).
    kernel: IC-SBP distance kernel, "gaussian", "laplacian" or
      "epanechnikov" (Eq. 3).
    semiconv: semi-convolutional embeddings (else a plain 1x1 convolution).
    autoregressive_prior: LSTM prior of Eq. (2), else N(0, I) for each slot.
    pixel_bound: squash the decoded RGB means with a sigmoid.
    pixel_std: sigma_x of Eq. (1).
    mask_consistency: add KL(m || nograd(pi)) as loss term ``kl_mask``
      (Eq. 7).
    decoder_channels: filters of the four deconvolution layers (64).
    min_mask_pixels: flexible-K stopping threshold (Sec. 4.1: 20 pixels).
    flexible_decode_all: with flexible K, decode the empty slots too (as the
      official code does: their pooled feature is 0) instead of leaving them
      out of the mixture.
    subpixel_deconv: compute the decoder's transposed convolutions as
      sub-pixel convolutions (same numbers, faster on CPU).
    remat: decode the slots one after the other and recompute the backbone's
      and the decoder's activations in the backward pass instead of storing
      them: far less memory (benchmarks/README.md), more compute.
    dtype: compute dtype of the convolutions and dense layers ("bfloat16"
      for speed on accelerators); parameters, the IC-SBP, pooling and the
      likelihood stay float32.
  """
  num_slots: int = 7
  image_size: int = 64
  feat_dim: int = 64
  embed_dim: int = 8
  kernel: str = "gaussian"
  semiconv: bool = True
  autoregressive_prior: bool = True
  pixel_bound: bool = True
  pixel_std: float = 0.7
  mask_consistency: bool = False
  decoder_channels: int = 64
  min_mask_pixels: float = 20.0
  flexible_decode_all: bool = False
  subpixel_deconv: bool = True
  remat: bool = False
  dtype: Any = jnp.float32

  rng_streams = ("icsbp", "sample")
  eval_modes = {"fixed": {}, "flexible": {"flexible": True}}
  segmentation_names = ("attention", "decoder")
  reported_segmentation = "decoder"

  def setup(self):
    if self.num_slots < 2:
      raise ValueError(f"num_slots must be >= 2, got {self.num_slots}.")
    if self.kernel not in icsbp.KERNELS:
      raise ValueError(f"Unknown kernel {self.kernel!r}; expected one of "
                       f"{icsbp.KERNELS}.")
    f, dt = self.feat_dim, self.dtype
    down, up = unet.unet_channels(unet.num_unet_blocks(self.image_size),
                                  min(f, 64))
    # Backbone (App. B); its last block has min(f, 64) channels = f.
    unet_cls = nn.remat(unet.UNet) if self.remat else unet.UNet
    self.encoder = unet_cls(down, up, dtype=dt)
    # Attention head: Conv-GN8-ReLU + semi-convolutional 1x1 layer.
    self.attention_block = layers.ConvGNReLU(f, dtype=dt)
    if self.semiconv:
      self.embedding = semiconv.SemiConv(self.embed_dim, dtype=dt)
    else:
      self.embedding = _conv1x1(self.embed_dim, f, dt, "embedding")
    self.icsbp = icsbp.ICSBP(self.num_slots, self.kernel,
                             dtype=self._acc_dtype)
    # Feature head: Conv-GN8-ReLU + 1x1 conv to D_f = 2 f.
    self.feature_block = layers.ConvGNReLU(f, dtype=dt)
    self.feature_proj = _conv1x1(2 * f, f, dt, "feature_proj")
    # Posterior head: LayerNorm, ReLU MLP with 2f units, 2 L statistics.
    self.posterior_norm = nn.LayerNorm(epsilon=layers.TORCH_NORM_EPS,
                                       use_fast_variance=False, dtype=dt)
    self.posterior_hidden = _dense(2 * f, 2 * f, dt, "posterior_hidden")
    self.posterior_out = _dense(2 * f, 2 * f, dt, "posterior_out")
    # Component decoder, shared by all slots.
    self.decoder = broadcast_decoder.BroadcastDecoder(
        broadcast_size=self.image_size // 16,
        channels=(self.decoder_channels,) * 4, out_channels=4,
        subpixel=self.subpixel_deconv, dtype=dt)
    if self.autoregressive_prior:
      self.prior = autoregressive_prior.AutoregressivePrior(
          latent_dim=f, hidden=4 * f, dtype=dt)

  @property
  def _acc_dtype(self):
    """Mixture, pooling and IC-SBP arithmetic: float32 (or float64 if asked)."""
    return jnp.promote_types(self.dtype, jnp.float32)

  # --------------------------------------------------------------- inference
  def embed(self, x: Array) -> dict[str, Array]:
    """Backbone, attention head and feature head: ``x [B, H, W, C]``."""
    enc_feat = nn.relu(self.encoder(x))  # e: [B, H, W, f]
    att = self.attention_block(enc_feat)  # [B, H, W, f]
    if self.semiconv:
      zeta, delta = self.embedding(att)  # [B, H, W, D], [B, H, W, 2]
    else:
      zeta = self.embedding(att)
      delta = jnp.zeros(zeta.shape[:-1] + (2,), zeta.dtype)
    feat = self.feature_proj(self.feature_block(enc_feat))  # [B, H, W, 2f]
    self.sow("intermediates", "enc_feat", enc_feat)
    self.sow("intermediates", "attention_features", att)
    self.sow("intermediates", "feat", feat)
    return dict(zeta=zeta, delta=delta, feat=feat)

  def posterior(self, pooled: Array) -> tuple[Array, Array]:
    """``q(z_k | x)`` statistics from pooled features ``[B, K, 2f]``."""
    h = self.posterior_out(
        nn.relu(self.posterior_hidden(self.posterior_norm(pooled))))
    self.sow("intermediates", "posterior_stats", h)
    mu, sigma_raw = jnp.split(h, 2, axis=-1)  # [B, K, L] each
    sigma = (jax.nn.softplus(sigma_raw + POSTERIOR_SIGMA_SHIFT)
             + POSTERIOR_SIGMA_EPS)
    return mu, sigma

  # -------------------------------------------------------------- generation
  def decode(self, z: Array, slot_valid: Array | None = None):
    """Decodes all slots as one batch.

    Args:
      z: latents ``[B, K, L]``.
      slot_valid: optional ``[B, K]`` bool; slots marked False are left out
        of the mixture (their pi is 0).

    Returns:
      ``(mu_x [B, K, H, W, C], log_pi [B, K, H, W, 1], recon [B, H, W, C])``.
    """
    b, k, l = z.shape
    if self.remat:
      # One slot at a time, activations recomputed in the backward pass: the
      # decoder's peak memory shrinks by a factor K.
      def body(mdl, carry, z_k):
        return carry, mdl.decoder(z_k)
      scan = nn.scan(nn.remat(body), variable_broadcast="params",
                     split_rngs={"params": False}, in_axes=1, out_axes=1)
      _, out = scan(self, None, z)  # [B, K, H, W, 4]
    else:
      out = self.decoder(z.reshape(b * k, l))  # [B K, H, W, 4]
      out = out.reshape((b, k) + out.shape[1:])
    out = out.astype(self._acc_dtype)
    mu_x, logits = out[..., :3], out[..., 3:]
    if self.pixel_bound:
      mu_x = jax.nn.sigmoid(mu_x)
    self.sow("intermediates", "mask_logits", logits)
    if slot_valid is not None:
      logits = jnp.where(slot_valid[:, :, None, None, None], logits, -jnp.inf)
    log_pi = jax.nn.log_softmax(logits, axis=1)  # softmax over slots
    recon = jnp.sum(jnp.exp(log_pi) * mu_x, axis=1)  # [B, H, W, C]
    return mu_x, log_pi, recon

  def prior_stats(self, z: Array) -> tuple[Array, Array]:
    """``p(z_k | z_<k)`` statistics ``[B, K, L]`` (Eq. 2)."""
    if self.autoregressive_prior:
      stats = self.prior(z)
      self.sow("intermediates", "prior_h", stats["h"])
      return stats["mu"], stats["sigma"]
    return jnp.zeros_like(z), jnp.ones_like(z)

  # ---------------------------------------------------------------- forward
  def __call__(self, batch: dict[str, Array], *, train: bool = True,
               flexible: bool = False,
               noise: dict[str, Array] | None = None) -> base.ModelOutput:
    """Encodes, decodes and scores a batch.

    Args:
      batch: dict with ``image`` ``[B, H, W, 3]`` in [0, 1].
      train: unused (the model has no dropout or batch statistics); part of
        the common model interface.
      flexible: run the IC-SBP with the flexible-K heuristic (inference).
      noise: optional replacements for the random draws, for tests and
        parity checks: ``seed_scores`` ``[B, H, W]`` (IC-SBP ``c``) and
        ``posterior_eps`` ``[B, K, L]``. Otherwise drawn from the ``icsbp``
        and ``sample`` rng streams.
    """
    del train
    x = batch["image"]
    b, h, w, _ = x.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
          f"GENESIS-V2 was built for {self.image_size}x{self.image_size} "
          f"images (config model.image_size) but got {h}x{w}.")
    noise = noise or {}
    k, f = self.num_slots, self.feat_dim

    e = self.embed(x)
    # IC-SBP (Alg. 1): attention masks m_1:K.
    c = noise.get("seed_scores")
    if c is None:
      c = jax.random.uniform(self.make_rng("icsbp"), (b, h, w))
    sbp = self.icsbp(e["zeta"], c, flexible=flexible,
                     min_mask_pixels=self.min_mask_pixels)
    log_m = sbp["log_masks"][..., None]  # [B, K, H, W, 1]
    m = jnp.exp(log_m)

    # Mask-weighted pooling of f (App. B).
    feat = e["feat"].astype(self._acc_dtype)
    pooled = (jnp.einsum("bkhw,bhwf->bkf", m[..., 0], feat)
              / (jnp.sum(m, axis=(2, 3, 4))[..., None] + POOL_EPS))
    self.sow("intermediates", "pooled", pooled)
    mu, sigma = self.posterior(pooled)  # [B, K, L]
    eps = noise.get("posterior_eps")
    if eps is None:
      eps = jax.random.normal(self.make_rng("sample"), (b, k, f))
    z = mu + eps * sigma  # reparameterised sample of q(z_k | x)

    slot_valid = None
    if flexible and not self.flexible_decode_all:
      slot_valid = jnp.arange(k)[None] < sbp["num_slots_used"][:, None]
    mu_x, log_pi, recon = self.decode(z, slot_valid)

    # Losses (per image): SGMM NLL (Eq. 1) and the MC KL of Eq. (5).
    nll = likelihood.sgmm_nll(x, log_pi, mu_x, self.pixel_std)
    p_mu, p_sigma = self.prior_stats(z)
    kl = kl_lib.monte_carlo_kl(z, mu, sigma, p_mu, p_sigma)  # [B, K]
    losses = dict(nll=nll, kl=jnp.sum(kl["kl"], axis=1))
    if self.mask_consistency:  # Eq. (7), gradient stopped at pi.
      losses["kl_mask"] = kl_lib.mask_kl(log_m, jax.lax.stop_gradient(log_pi))

    pi = jnp.exp(log_pi)
    aux = dict(
        log_m=log_m, log_s=sbp["log_scopes"][..., None], log_pi=log_pi,
        zeta=e["zeta"], delta=e["delta"], seeds=sbp["seeds"],
        seed_index=sbp["seed_index"], num_slots_used=sbp["num_slots_used"],
        mu=mu, sigma=sigma, prior_mu=p_mu, prior_sigma=p_sigma,
        kl_k=kl["kl"], kl_log_q=kl["log_q"], kl_log_p=kl["log_p"])
    return base.ModelOutput(
        recon=recon, masks=pi, components=mu_x, losses=losses, latents=z,
        segmentations=dict(attention=m, decoder=pi), aux=aux)

  def sample(self, num: int, *,
             noise: dict[str, Array] | None = None) -> base.SampleOutput:
    """Draws ``num`` scenes from the prior (rng stream ``sample``).

    ``noise["prior_eps"]`` ``[num, K, L]`` replaces the normal draws. The
    aux holds ``log_pi`` and, with the autoregressive prior, its statistics
    ``prior_mu``, ``prior_sigma`` and LSTM outputs ``prior_h``.
    """
    k, f = self.num_slots, self.feat_dim
    eps = (noise or {}).get("prior_eps")
    if eps is None:
      eps = jax.random.normal(self.make_rng("sample"), (num, k, f))
    if self.autoregressive_prior:
      stats = self.prior.sample(eps)
      z = stats["z"]
      extra = dict(prior_mu=stats["mu"], prior_sigma=stats["sigma"],
                   prior_h=stats["h"])
    else:
      z, extra = eps, {}
    mu_x, log_pi, recon = self.decode(z)
    return base.SampleOutput(image=recon, masks=jnp.exp(log_pi),
                             components=mu_x, latents=z,
                             aux=dict(log_pi=log_pi, **extra))


MODEL = GenesisV2
