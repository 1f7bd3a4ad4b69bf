"""MONet-G: MONet (Burgess et al. 2019) trained with GECO, as in GENESIS.

The baseline of papers 001/002 (001 Sec. 4: "We refer to MONET trained with
GECO as MONET-G"; 002 App. B, App. E), in the re-implementation that ships
with the official GENESIS code (``models/monet_config.py``). Every operation
follows the reference fixture's description
(``../shared/fixtures/monet_g_reference/README.md``, cited as "README §x"):

* attention network (README §3.1): a UNet with InstanceNorm reads the image
  and the current log scope and gives a logit ``a_s`` per pixel;
* stick breaking in log space (§3.2): ``log m_s = log s_s + log sigmoid(a_s)``,
  ``log s_{s+1} = log s_s + log sigmoid(-a_s)`` for K - 1 steps; the last
  mask is the remaining scope;
* component VAE (§3.3-3.4): each slot is encoded from ``[log m_k, x]`` into
  ``q(z_k | x, m_k)``; the broadcast decoder gives RGB means ``x_k`` and a
  mask logit; the decoded masks are the softmax of the logits over slots;
* the image likelihood is the spatial Gaussian mixture of paper 001 Eq. (1)
  with the *attention* masks as mixing weights (§3.5);
* losses: the NLL, the mask KL ``KL(m || m_tilde)`` between attention and
  decoded masks (§3.6, not detached) and the Monte-Carlo KL of the component
  latents against N(0, I) (§3.7), combined by GECO (001 Eqs. 5-6).

Axis legend: B batch, K slots, H height, W width, C channels, L latent.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.models import base
from ocjax.nn import component_vae
from ocjax.nn import init
from ocjax.nn import stick_breaking
from ocjax.nn import unet
from ocjax.objectives import kl as kl_lib
from ocjax.objectives import likelihood

Array = jax.Array

MASK_PRIORS = ("softmax", "scope")


def mask_kl_per_pixel(log_m: Array, log_pi: Array) -> Array:
  """``KL(m || pi)`` of every pixel, ``[B, K, H, W, 1] -> [B, H, W]``.

  `kl_lib.mask_kl` (floor 1e-5, renormalisation) with the pixels as its batch
  axis (README §3.6; torch's probability clamp is inactive above the floor).
  """
  b, k, h, w, _ = log_m.shape
  to_rows = lambda a: jnp.moveaxis(a[..., 0], 1, -1).reshape(
      b * h * w, k, 1, 1, 1)
  return kl_lib.mask_kl(to_rows(log_m), to_rows(log_pi)).reshape(b, h, w)


class AttentionNetwork(nn.Module):
  """``alpha_psi``: UNet (InstanceNorm) + 1x1 conv to one logit (§3.1).

  The input is ``[x, log s]`` (image channels first).
  """
  image_size: int
  filter_start: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, log_scope: Array) -> Array:
    down, up = unet.unet_channels(unet.num_unet_blocks(self.image_size),
                                  self.filter_start)
    inputs = jnp.concatenate([x, log_scope], axis=-1).astype(self.dtype)
    feat = unet.UNet(down, up, dtype=self.dtype, norm_groups=None,
                     name="unet")(inputs)
    c = feat.shape[-1]
    return nn.Conv(1, (1, 1), dtype=self.dtype,
                   kernel_init=init.torch_default(c),
                   bias_init=init.torch_default(c), name="logit")(feat)


class MONet(base.ObjectCentricModel):
  """MONet-G; ``__call__(batch) -> ModelOutput`` (see `ocjax.models.base`).

  Segmentations: ``attention`` (the stick-breaking masks m, reported; the
  reconstruction and likelihood use them) and ``decoder`` (the decoded masks
  ``m_tilde``). Loss terms: ``nll`` (``-log p(x | z, m)``), ``kl`` (component
  latents) and ``kl_mask`` (``KL(m || m_tilde)``).

  Attributes:
    num_slots: K (K - 1 attention steps and the remaining scope).
    image_size: H = W of the inputs (32, 64 or 128).
    filter_start: base width of the attention UNet (32).
    latent_dim: L of the component latents (``comp_ldim``, 16).
    encoder_channels: component encoder width (``comp_enc_channels``, 32).
    decoder_channels: broadcast decoder width (``comp_dec_channels``, 32).
    decoder_layers: broadcast decoder 3x3 layers (``comp_dec_layers``, 4).
    mask_prior: how the decoded mask logits become masks: "softmax" over
      slots (the official default) or stick breaking ("scope").
    pixel_bound: squash the decoded RGB means with a sigmoid.
    pixel_std1: sigma_x of slot 0; pixel_std2: of the other slots (0.7).
    scan_unroll: attention steps unrolled per iteration of the step scan;
      0: all K - 1 (XLA's CPU backend runs the rolled loop around the UNet
      about 4x slower).
    dtype: compute dtype of the networks; the mixture, masks and losses are
      computed in at least float32.
  """
  num_slots: int = 7
  image_size: int = 64
  filter_start: int = 32
  latent_dim: int = 16
  encoder_channels: int = 32
  decoder_channels: int = 32
  decoder_layers: int = 4
  mask_prior: str = "softmax"
  pixel_bound: bool = True
  pixel_std1: float = 0.7
  pixel_std2: float = 0.7
  scan_unroll: int = 0
  dtype: Any = jnp.float32

  rng_streams = ("sample",)
  eval_modes = {"fixed": {}}
  segmentation_names = ("attention", "decoder")
  reported_segmentation = "attention"

  def setup(self):
    if self.num_slots < 2:
      raise ValueError(f"num_slots must be >= 2, got {self.num_slots}.")
    if self.mask_prior not in MASK_PRIORS:
      raise ValueError(f"Unknown mask_prior {self.mask_prior!r}; expected one "
                       f"of {MASK_PRIORS}.")
    self.attention = AttentionNetwork(self.image_size, self.filter_start,
                                      dtype=self.dtype)
    self.component_vae = component_vae.ComponentVAE(
        image_size=self.image_size, out_channels=4,
        latent_dim=self.latent_dim, encoder_channels=self.encoder_channels,
        decoder_channels=self.decoder_channels,
        decoder_layers=self.decoder_layers, activation="relu", sigmoid=False,
        dtype=self.dtype)

  @property
  def _acc_dtype(self):
    return jnp.promote_types(self.dtype, jnp.float32)

  # --------------------------------------------------------------- attention
  def attend(self, x: Array) -> dict[str, Array]:
    """Attention masks by K - 1 recurrent UNet steps (README §3.1-3.2).

    Returns ``log_m`` and ``log_s`` ``[B, K, H, W, 1]`` (scopes s_0..s_{K-1})
    and the logits ``a`` ``[B, K-1, H, W, 1]``.
    """
    b, h, w, _ = x.shape
    acc = self._acc_dtype

    def step(mdl, log_s, _):
      a = mdl.attention(x, log_s).astype(acc)  # [B, H, W, 1]
      log_m = log_s + jax.nn.log_sigmoid(a)
      return log_s + jax.nn.log_sigmoid(-a), (a, log_m, log_s)

    scan = nn.scan(step, variable_broadcast="params",
                   split_rngs={"params": False}, length=self.num_slots - 1,
                   unroll=self.scan_unroll or self.num_slots - 1)
    log_s0 = jnp.zeros((b, h, w, 1), acc)
    log_s_last, (a, log_m, log_s) = scan(self, log_s0, None)
    to_bk = lambda t: jnp.moveaxis(t, 0, 1)  # [K-1, B, ...] -> [B, K-1, ...]
    log_m = jnp.concatenate([to_bk(log_m), log_s_last[:, None]], axis=1)
    log_s = jnp.concatenate([to_bk(log_s), log_s_last[:, None]], axis=1)
    return dict(log_m=log_m, log_s=log_s, logits=to_bk(a))

  # -------------------------------------------------------------- generation
  def decode(self, z: Array) -> tuple[Array, Array]:
    """``z [B, K, L]`` -> ``(x_k [B, K, H, W, 3], logits [B, K, H, W, 1])``."""
    b, k, l = z.shape
    out = self.component_vae.decode(z.reshape(b * k, l))
    self.sow("intermediates", "comp_dec_out", out)
    out = out.reshape((b, k) + out.shape[1:]).astype(self._acc_dtype)
    x_k, logits = out[..., :3], out[..., 3:]
    if self.pixel_bound:
      x_k = jax.nn.sigmoid(x_k)
    return x_k, logits

  def decoded_log_masks(self, logits: Array) -> Array:
    """Log decoded masks ``log m_tilde`` ``[B, K, H, W, 1]`` (README §3.4)."""
    if self.mask_prior == "softmax":
      return jax.nn.log_softmax(logits, axis=1)
    return stick_breaking.log_stick_breaking(logits)[0]

  # ---------------------------------------------------------------- forward
  def __call__(self, batch: dict[str, Array], *, train: bool = True,
               noise: dict[str, Array] | None = None) -> base.ModelOutput:
    """Attends, encodes, decodes and scores a batch.

    Args:
      batch: dict with ``image`` ``[B, H, W, 3]`` in [0, 1].
      train: unused (MONet has no dropout or batch statistics; its
        InstanceNorms keep no running statistics).
      noise: optional replacement of the random draw, for tests and parity
        checks: ``component_eps`` ``[B, K, L]``. Otherwise drawn from the
        ``sample`` rng stream.
    """
    del train
    x = batch["image"]
    b, h, w, c = x.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
          f"MONet was built for {self.image_size}x{self.image_size} images "
          f"(config model.image_size) but got {h}x{w}.")
    k, l, acc = self.num_slots, self.latent_dim, self._acc_dtype
    noise = noise or {}
    x = x.astype(acc)

    att = self.attend(x)
    log_m = att["log_m"]  # [B, K, H, W, 1]

    # Component VAE on [log m_k, x] for all slots at once (§3.3).
    inputs = jnp.concatenate(
        [log_m, jnp.broadcast_to(x[:, None], (b, k, h, w, c))], axis=-1)
    mu, sigma, raw = self.component_vae.encode(
        inputs.reshape(b * k, h, w, c + 1).astype(self.dtype))
    self.sow("intermediates", "comp_enc_out", raw.reshape(b, k, 2 * l))
    mu = mu.reshape(b, k, l).astype(acc)
    sigma = sigma.reshape(b, k, l).astype(acc)
    eps = noise.get("component_eps")
    if eps is None:
      eps = jax.random.normal(self.make_rng("sample"), (b, k, l), acc)
    z = mu + eps * sigma  # reparameterised sample of q(z_k | x, m_k)

    x_k, logits = self.decode(z)  # §3.4
    self.sow("intermediates", "mask_logits", logits)
    log_pi = self.decoded_log_masks(logits)

    # Losses (per image), README §3.5-3.7.
    m = jnp.exp(log_m)
    std = component_vae.pixel_stds(k, self.pixel_std1, self.pixel_std2, acc)
    nll = likelihood.sgmm_nll(x, log_m, x_k, std)  # Eq. (1), attention masks
    kl_m_ppc = mask_kl_per_pixel(log_m, log_pi)  # [B, H, W]
    kl = kl_lib.monte_carlo_kl(z, mu, sigma, jnp.zeros_like(z),
                               jnp.ones_like(z), difference_first=True)
    losses = dict(nll=nll, kl=jnp.sum(kl["kl"], axis=1),
                  kl_mask=jnp.sum(kl_m_ppc, axis=(1, 2)))

    recon = jnp.sum(m * x_k, axis=1)  # [B, H, W, C]
    pi = jnp.exp(log_pi)
    aux = dict(log_m=log_m, log_s=att["log_s"], att_logits=att["logits"],
               log_pi=log_pi, mu=mu, sigma=sigma, kl_k=kl["kl"],
               kl_log_q=kl["log_q"], kl_log_p=kl["log_p"],
               kl_mask_ppc=kl_m_ppc)
    return base.ModelOutput(
        recon=recon, masks=m, components=x_k, losses=losses, latents=z,
        segmentations=dict(attention=m, decoder=pi), aux=aux)

  def sample(self, num: int, *,
             noise: dict[str, Array] | None = None) -> base.SampleOutput:
    """Draws ``num`` scenes from the prior (README §3.9; stream ``sample``).

    ``z_k ~ N(0, I)`` independently, decoded; the masks are the decoded
    masks. ``noise["prior_eps"]`` ``[num, K, L]`` replaces the normal draws.
    The aux holds ``log_masks`` (``log`` of the masks, as the reference
    stores them) and the ``mask_logits``.
    """
    k, l, acc = self.num_slots, self.latent_dim, self._acc_dtype
    eps = (noise or {}).get("prior_eps")
    if eps is None:
      eps = jax.random.normal(self.make_rng("sample"), (num, k, l), acc)
    z = eps.astype(acc)
    x_k, logits = self.decode(z)
    if self.mask_prior == "softmax":
      masks = jax.nn.softmax(logits, axis=1)
    else:
      masks = jnp.exp(stick_breaking.log_stick_breaking(logits)[0])
    image = jnp.sum(masks * x_k, axis=1)
    return base.SampleOutput(
        image=image, masks=masks, components=x_k, latents=z,
        aux=dict(log_masks=jnp.log(masks), mask_logits=logits))


MODEL = MONet
