"""GENESIS (Engelcke, Kosiorek, Parker Jones, Posner; ICLR 2020), v1.

The two-stage baseline of papers 001/002 (001 Sec. 2-4: "GENESIS uses two
separate sets of latent variables to encode object masks and object
appearances"; its autoregressive prior is the one GENESIS-V2 reuses, 002
App. B "Autoregressive Prior"), in the official implementation
(``models/genesis_config.py``). Every operation follows the reference
fixture's description (``../shared/fixtures/genesis_reference/README.md``,
cited as "README §x"):

* mask VAE encoder (README §3.1): gated convolutions with BatchNorm turn the
  image into a feature vector ``h``;
* recurrent mask posterior (§3.2): ``q(z^m_1 | x)`` from ``h``, then an LSTM
  reading ``[h, z^m_{k-1}]`` gives ``q(z^m_k | x, z^m_{<k})``;
* mask decoder (§3.3): all K mask latents are decoded in one batch by gated
  transposed convolutions (BatchNorm statistics pooled over all slots and
  images) into logits, which stick breaking turns into masks ``m_k`` (§3.5);
* component VAE (§3.6): as MONet's, with ELU and a sigmoid on the output,
  encoding ``[log m_k, x]`` into ``q(z^c_k | x, m_k)``;
* likelihood (§3.7): the spatial Gaussian mixture of 001 Eq. (1) with the
  masks ``m_k`` as mixing weights;
* priors: the autoregressive LSTM prior ``p(z^m_k | z^m_{<k})`` (001 Eq. 2,
  §3.8) and ``p(z^c_k | z^m_k)`` by an MLP (§3.9); both KLs are single-sample
  Monte-Carlo estimates, combined with the NLL by GECO (001 Eqs. 5-6).

Training mode normalises with the batch statistics and updates the running
statistics in the ``batch_stats`` collection when it is mutable (torch
momentum 0.1, unbiased running variance, §3.4); evaluation mode uses them.

Axis legend: B batch, K slots, H height, W width, C channels,
M mask-latent size, L component-latent size.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.models import base
from ocjax.nn import autoregressive_prior
from ocjax.nn import component_vae
from ocjax.nn import gated_conv
from ocjax.nn import init
from ocjax.nn import lstm
from ocjax.nn import stick_breaking
from ocjax.objectives import kl as kl_lib
from ocjax.objectives import likelihood

Array = jax.Array

PRIOR_HIDDEN = 256  # prior LSTM and component-prior MLP widths


def _dense(features: int, fan_in: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype,
                  kernel_init=init.torch_default(fan_in),
                  bias_init=init.torch_default(fan_in), name=name)


def prior_sigma(raw: Array) -> Array:
  """``sigmoid(raw + 4) + 1e-4``: learned prior scales in [1e-4, 1 + 1e-4]."""
  return (jax.nn.sigmoid(raw + autoregressive_prior.SIGMA_BIAS)
          + autoregressive_prior.SIGMA_EPS)


class ComponentPrior(nn.Module):
  """``p(z^c_k | z^m_k)``: MLP M -> 256 -> 256 -> 2L with ELUs (§3.9).

  Returns the raw output ``[..., 2L]``; ``mu = tanh`` of the first half,
  ``sigma = prior_sigma`` of the second.
  """
  latent_dim: int
  hidden: int = PRIOR_HIDDEN
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, zm: Array) -> Array:
    x = nn.elu(_dense(self.hidden, zm.shape[-1], self.dtype, "dense_0")(zm))
    x = nn.elu(_dense(self.hidden, self.hidden, self.dtype, "dense_1")(x))
    return _dense(2 * self.latent_dim, self.hidden, self.dtype, "dense_2")(x)


class Genesis(base.ObjectCentricModel):
  """GENESIS; ``__call__(batch) -> ModelOutput`` (see `ocjax.models.base`).

  Segmentation: ``masks`` (the stick-breaking masks of the mask VAE). Loss
  terms: ``nll`` (``-log p(x | z^c, m)``), ``kl`` (component latents,
  ``sum_k KL(q(z^c_k) || p(z^c_k | z^m_k))``) and ``kl_mask`` (mask latents,
  ``sum_k KL(q(z^m_k) || p(z^m_k | z^m_<k))``). ``latents`` are ``[z^m,
  z^c]`` concatenated, ``[B, K, M + L]``.

  Attributes:
    num_slots: K.
    image_size: H = W of the inputs (32, 64, 128 or 256).
    mask_latent_dim: M (``attention_latents``, 64).
    latent_dim: L of the component latents (``comp_ldim``, 16).
    encoder_channels: component encoder width (``comp_enc_channels``, 32).
    decoder_channels: broadcast decoder width (``comp_dec_channels``, 32).
    decoder_layers: broadcast decoder 3x3 layers (``comp_dec_layers``, 4).
    encoder_norm, decoder_norm: norms of the mask VAE's gated layers, "bn"
      (official default), "in" or "none" (``enc_norm``/``dec_norm``).
    autoregressive_prior: LSTM prior over the mask latents (001 Eq. 2), else
      N(0, I) for each.
    component_prior: ``p(z^c_k | z^m_k)`` by an MLP, else N(0, I).
    pixel_bound: sigmoid on the component means.
    pixel_std1: sigma_x of slot 0; pixel_std2: of the other slots (0.7).
    sample_tanh_mean: squash the prior means with tanh when sampling. The
      official sampler does not (README §3.12), unlike the KL's prior.
    dtype: compute dtype of the networks; masks, mixture and losses are
      computed in at least float32.
  """
  num_slots: int = 7
  image_size: int = 64
  mask_latent_dim: int = 64
  latent_dim: int = 16
  encoder_channels: int = 32
  decoder_channels: int = 32
  decoder_layers: int = 4
  encoder_norm: str = "bn"
  decoder_norm: str = "bn"
  autoregressive_prior: bool = True
  component_prior: bool = True
  pixel_bound: bool = True
  pixel_std1: float = 0.7
  pixel_std2: float = 0.7
  sample_tanh_mean: bool = False
  dtype: Any = jnp.float32

  rng_streams = ("sample",)
  eval_modes = {"fixed": {}}
  segmentation_names = ("masks",)
  reported_segmentation = "masks"
  mutable_collections = ("batch_stats",)

  def setup(self):
    if self.num_slots < 2:
      raise ValueError(f"num_slots must be >= 2, got {self.num_slots}.")
    m, dt = self.mask_latent_dim, self.dtype
    feat = gated_conv.ENCODER_FEATURES
    # Mask VAE (README §3.1-3.3).
    self.mask_encoder = gated_conv.GatedEncoder(
        self.image_size, norm=self.encoder_norm, dtype=dt)
    self.posterior_mean = _dense(m, feat, dt, "posterior_mean")
    self.posterior_var = _dense(m, feat, dt, "posterior_var")
    self.posterior_lstm = lstm.LSTMCell(2 * m, dtype=dt)
    self.posterior_linear = _dense(2 * m, 2 * m, dt, "posterior_linear")
    self.mask_decoder = gated_conv.GatedDecoder(
        self.image_size, out_channels=1, norm=self.decoder_norm, dtype=dt)
    # Component VAE (§3.6).
    self.component_vae = component_vae.ComponentVAE(
        image_size=self.image_size, out_channels=3,
        latent_dim=self.latent_dim, encoder_channels=self.encoder_channels,
        decoder_channels=self.decoder_channels,
        decoder_layers=self.decoder_layers, activation="elu",
        sigmoid=self.pixel_bound, dtype=dt)
    # Priors (§3.8-3.9).
    if self.autoregressive_prior:
      self.prior = autoregressive_prior.AutoregressivePrior(
          latent_dim=m, hidden=PRIOR_HIDDEN, dtype=dt)
    if self.component_prior:
      self.component_prior_net = ComponentPrior(self.latent_dim, dtype=dt)

  @property
  def _acc_dtype(self):
    return jnp.promote_types(self.dtype, jnp.float32)

  # --------------------------------------------------------------- mask VAE
  def mask_posterior(self, h: Array, eps: Array) -> dict[str, Array]:
    """Recurrent ``q(z^m_k | x, z^m_<k)`` and its samples (README §3.2).

    Args:
      h: encoder features ``[B, 256]``.
      eps: standard-normal draws ``[B, K, M]``.

    Returns:
      ``mu``, ``var``, ``sigma = sqrt(var)``, ``z`` ``[B, K, M]`` and the
      LSTM and linear outputs of steps 1..K-1 ``[B, K-1, 2M]``.
    """
    acc = self._acc_dtype
    to_var = lambda raw: jnp.square(component_vae.to_sigma(raw.astype(acc)))
    mu0 = self.posterior_mean(h).astype(acc)
    var0 = to_var(self.posterior_var(h))
    sigma0 = jnp.sqrt(var0)
    z0 = mu0 + eps[:, 0] * sigma0

    def step(mdl, carry, eps_k):
      state, z_prev = carry
      state, out = mdl.posterior_lstm(
          state, jnp.concatenate([h, z_prev.astype(h.dtype)], axis=-1))
      lin = mdl.posterior_linear(out)
      mu, raw = jnp.split(lin.astype(acc), 2, axis=-1)  # mu: no tanh
      var = to_var(raw)
      sigma = jnp.sqrt(var)
      z = mu + eps_k * sigma
      return (state, z), (out, lin, mu, var, sigma, z)

    scan = nn.scan(step, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    zeros = jnp.zeros((h.shape[0], 2 * self.mask_latent_dim), h.dtype)
    _, (out, lin, mu, var, sigma, z) = scan(self, ((zeros, zeros), z0),
                                            eps[:, 1:])
    first = lambda a0, a: jnp.concatenate([a0[:, None], a], axis=1)
    return dict(mu=first(mu0, mu), var=first(var0, var),
                sigma=first(sigma0, sigma), z=first(z0, z), lstm_out=out,
                linear_out=lin)

  def decode_masks(self, zm: Array, train: bool) -> dict[str, Array]:
    """Mask logits of all slots in one batch and the stick-breaking masks.

    ``zm [B, K, M]`` -> ``logits``, ``log_m`` ``[B, K, H, W, 1]`` and
    ``log_s`` ``[B, K + 1, H, W, 1]`` (README §3.3, §3.5).
    """
    b, k, m = zm.shape
    logits = self.mask_decoder(zm.reshape(b * k, m).astype(self.dtype), train)
    logits = logits.reshape((b, k) + logits.shape[1:]).astype(self._acc_dtype)
    log_m, log_s = stick_breaking.log_stick_breaking(logits)
    return dict(logits=logits, log_m=log_m, log_s=log_s)

  # ----------------------------------------------------------------- priors
  def mask_prior_stats(self, zm: Array) -> dict[str, Array]:
    """``p(z^m_k | z^m_<k)`` ``[B, K, M]`` (slot 0: N(0, I)); §3.8."""
    if self.autoregressive_prior:
      return self.prior(zm)
    return dict(mu=jnp.zeros_like(zm), sigma=jnp.ones_like(zm))

  def component_prior_stats(self, zm: Array) -> dict[str, Array]:
    """``p(z^c_k | z^m_k)`` ``[B, K, L]`` (§3.9)."""
    if self.component_prior:
      raw = self.component_prior_net(zm.astype(self.dtype)).astype(
          self._acc_dtype)
      mu, sigma_raw = jnp.split(raw, 2, axis=-1)
      return dict(mu=jnp.tanh(mu), sigma=prior_sigma(sigma_raw), raw=raw)
    shape = zm.shape[:-1] + (self.latent_dim,)
    return dict(mu=jnp.zeros(shape, zm.dtype), sigma=jnp.ones(shape, zm.dtype))

  # -------------------------------------------------------------- components
  def decode_components(self, zc: Array) -> Array:
    """``zc [B, K, L]`` -> component means ``[B, K, H, W, 3]``."""
    b, k, l = zc.shape
    x_k = self.component_vae.decode(zc.reshape(b * k, l).astype(self.dtype))
    return x_k.reshape((b, k) + x_k.shape[1:]).astype(self._acc_dtype)

  # ---------------------------------------------------------------- forward
  def __call__(self, batch: dict[str, Array], *, train: bool = True,
               noise: dict[str, Array] | None = None) -> base.ModelOutput:
    """Encodes, decodes and scores a batch.

    Args:
      batch: dict with ``image`` ``[B, H, W, 3]`` in [0, 1].
      train: BatchNorms normalise with the batch's statistics (and update
        the running ones if ``batch_stats`` is mutable); False: with the
        running statistics. The posteriors are sampled in both modes.
      noise: optional replacements for the random draws, for tests and
        parity checks: ``mask_eps`` ``[B, K, M]`` and ``component_eps``
        ``[B, K, L]``. Otherwise drawn from the ``sample`` rng stream.
    """
    x = batch["image"]
    b, h, w, c = x.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
          f"GENESIS was built for {self.image_size}x{self.image_size} images "
          f"(config model.image_size) but got {h}x{w}.")
    k, m, l, acc = (self.num_slots, self.mask_latent_dim, self.latent_dim,
                    self._acc_dtype)
    noise = noise or {}
    x = x.astype(acc)

    # Mask latents (README §3.1-3.2).
    feat = self.mask_encoder(x.astype(self.dtype), train)  # [B, 256]
    self.sow("intermediates", "mask_features", feat)
    eps_m = noise.get("mask_eps")
    if eps_m is None:
      eps_m = jax.random.normal(self.make_rng("sample"), (b, k, m), acc)
    post = self.mask_posterior(feat, eps_m.astype(acc))
    zm = post["z"]
    # Masks (§3.3, §3.5); every slot's logit enters the batch statistics.
    masks = self.decode_masks(zm, train)
    log_m = masks["log_m"]
    self.sow("intermediates", "mask_logits", masks["logits"])

    # Component VAE on [log m_k, x] for all slots at once (§3.6).
    inputs = jnp.concatenate(
        [log_m, jnp.broadcast_to(x[:, None], (b, k, h, w, c))], axis=-1)
    mu_c, sigma_c, raw = self.component_vae.encode(
        inputs.reshape(b * k, h, w, c + 1).astype(self.dtype))
    self.sow("intermediates", "comp_enc_out", raw.reshape(b, k, 2 * l))
    mu_c = mu_c.reshape(b, k, l).astype(acc)
    sigma_c = sigma_c.reshape(b, k, l).astype(acc)
    eps_c = noise.get("component_eps")
    if eps_c is None:
      eps_c = jax.random.normal(self.make_rng("sample"), (b, k, l), acc)
    zc = mu_c + eps_c.astype(acc) * sigma_c
    x_k = self.decode_components(zc)

    # Losses (per image): NLL (§3.7, 001 Eq. 1), mask-latent KL (§3.8: sums
    # of log densities first, then their difference), component KL (§3.9:
    # elementwise difference first).
    std = component_vae.pixel_stds(k, self.pixel_std1, self.pixel_std2, acc)
    nll = likelihood.sgmm_nll(x, log_m, x_k, std)
    p_m = self.mask_prior_stats(zm)
    kl_m = kl_lib.monte_carlo_kl(zm, post["mu"], post["sigma"], p_m["mu"],
                                 p_m["sigma"])
    p_c = self.component_prior_stats(zm)
    kl_c = kl_lib.monte_carlo_kl(zc, mu_c, sigma_c, p_c["mu"],
                                 p_c["sigma"], difference_first=True)
    losses = dict(nll=nll, kl=jnp.sum(kl_c["kl"], axis=1),
                  kl_mask=jnp.sum(kl_m["kl"], axis=1))

    mask = jnp.exp(log_m)
    recon = jnp.sum(mask * x_k, axis=1)
    aux = dict(
        log_m=log_m, log_s=masks["log_s"], mask_mu=post["mu"],
        mask_var=post["var"], mask_sigma=post["sigma"],
        mask_lstm_out=post["lstm_out"], mask_linear_out=post["linear_out"],
        prior_mu=p_m["mu"], prior_sigma=p_m["sigma"],
        kl_mask_k=kl_m["kl"], kl_mask_log_q=kl_m["log_q"],
        kl_mask_log_p=kl_m["log_p"], comp_mu=mu_c, comp_sigma=sigma_c,
        comp_z=zc, comp_prior_mu=p_c["mu"], comp_prior_sigma=p_c["sigma"],
        kl_k=kl_c["kl"], kl_log_q=kl_c["log_q"], kl_log_p=kl_c["log_p"])
    if "h" in p_m:
      aux["prior_h"] = p_m["h"]
    if "raw" in p_c:
      aux["comp_prior_raw"] = p_c["raw"]
    return base.ModelOutput(
        recon=recon, masks=mask, components=x_k, losses=losses,
        latents=jnp.concatenate([zm, zc], axis=-1),
        segmentations=dict(masks=mask), aux=aux)

  def sample(self, num: int, *,
             noise: dict[str, Array] | None = None) -> base.SampleOutput:
    """Draws ``num`` scenes from the prior (README §3.12; stream ``sample``).

    Ancestral sampling of the mask latents with the LSTM prior (stepped once
    per slot), masks decoded with the running statistics, component latents
    from ``p(z^c_k | z^m_k)``. ``noise["mask_prior_eps"]`` ``[num, K, M]``
    and ``noise["component_prior_eps"]`` ``[num, K, L]`` replace the normal
    draws. The aux holds the log masks and scopes, the mask logits, the
    latents and the prior statistics.
    """
    k, m, l, acc = (self.num_slots, self.mask_latent_dim, self.latent_dim,
                    self._acc_dtype)
    noise = noise or {}
    eps_m = noise.get("mask_prior_eps")
    if eps_m is None:
      eps_m = jax.random.normal(self.make_rng("sample"), (num, k, m), acc)
    eps_c = noise.get("component_prior_eps")
    if eps_c is None:
      eps_c = jax.random.normal(self.make_rng("sample"), (num, k, l), acc)
    eps_m, eps_c = eps_m.astype(acc), eps_c.astype(acc)
    aux = {}
    if self.autoregressive_prior:
      stats = self.prior.sample(eps_m, tanh_mean=self.sample_tanh_mean)
      zm = stats["z"]
      aux.update(prior_mu=stats["mu"], prior_sigma=stats["sigma"],
                 prior_h=stats["h"])
    else:
      zm = eps_m
    masks = self.decode_masks(zm, train=False)
    p_c = self.component_prior_stats(zm)
    zc = eps_c * p_c["sigma"] + p_c["mu"]
    x_k = self.decode_components(zc)
    mask = jnp.exp(masks["log_m"])
    image = jnp.sum(mask * x_k, axis=1)
    aux.update(log_m=masks["log_m"], log_s=masks["log_s"],
               mask_logits=masks["logits"], zm=zm, zc=zc,
               comp_prior_mu=p_c["mu"], comp_prior_sigma=p_c["sigma"])
    if "raw" in p_c:
      aux["comp_prior_raw"] = p_c["raw"]
    return base.SampleOutput(
        image=image, masks=mask, components=x_k,
        latents=jnp.concatenate([zm, zc], axis=-1), aux=aux)


MODEL = Genesis
