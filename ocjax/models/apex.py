"""APEX: Amortised Parallel infErence with miXture models (paper 000).

The first public implementation: the paper (Sec. III) is the specification,
SCALOR's public code the next reference where it is silent; every open choice
is listed in docs/apex.md and marked "choice" below.

Per frame ``x_t`` (one `nn.scan` over time, Fig. 2):

* Scene encoder (Sec. III-C): a DLA with aggregation up to stride 4 and a
  ConvLSTM over time give ``e_t [H/4, W/4, F]`` (`ocjax.nn.dla`).
* ``N`` track slots (static: presence, never a data-dependent shape), each
  holding one propagated object or nothing. Propagation (Eqs. 5, 15), all
  slots at once: a square STN crop of ``e_t`` around the previous box (side
  the box's larger side) -> CNN -> ``c^p``; ``q(z_where)`` from an RNN of
  ``[c^p, z_what_{t-1}, z_where_{t-1}]`` (a residual move of the previous
  box, as SCALOR); a glimpse of ``e_t`` at the new box -> CNN -> an RNN with
  ``z_what_{t-1}`` gives ``q(z_what)``; ``q(z_pres)`` from an RNN of ``[c^p,
  z_what_t, z_pres_{t-1}]``. Empty slots have ``z_pres = 0``.
* Discovery (Eqs. 6, 16-18) on a ``G x G`` grid of the feature map (``D =
  G^2`` proposals): ``q(z_where)`` by a 1x1 convolution of the pooled cell
  feature ``c^d`` (a box within one cell of its cell's centre), ``q(z_what)``
  by the propagation's glimpse CNN and RNN from a zero state with ``z_what_0
  = 0``, ``q(z_pres) = p_proposal p_context`` (Eq. 17): ``p_proposal`` a
  dense layer of ``[c^d, z_what, z_where]``, ``p_context`` Eq. (18) with the
  scope ``s_t = 1 - m^p_t`` (Eq. 8 over the propagated objects).
* Rendering (Eqs. 1, 7-12): every candidate (N propagated + D discovered) is
  decoded from ``z_what`` into an RGB glimpse and mask logits ``alpha = c
  tanh(CNN(z_what))`` (Eq. 7), written into the frame by the inverse STN;
  masks by `ocjax.nn.mask_normalisation` (principled, or SCALOR-style for
  the ablation); the background ``z_bg`` from a CNN of ``[x_t, m_bg]``,
  decoded by an upsampling CNN. Likelihood: the spatial Gaussian mixture of
  Eq. (1) with ``sigma_fg = 0.1`` and ``sigma_bg = 0.04`` (Sec. IV-A), or
  the ablation's plain Gaussian ``N(x; sum_k m_k mu_k, sigma_fg)``.
* Objective (Eqs. 19-22): NLL + KL + the mask entropy ``L_H`` (Eq. 21).
  Priors: propagated objects from a prior LSTM over each slot's past latents
  (Eq. 5), discovered ``z_what, z_where ~ N(0, I)`` and ``p(z_pres = 1 |
  z^p) = rho p_context`` (Eq. 6; choice), the background from a GRU over
  ``z_bg_{<t}`` (``N(0, I)`` at t = 0). ``z_what``/``z_where`` KLs are the
  inclusive ``KL(p || q)`` (Sec. III-D) weighted by ``z_pres``; ``z_pres`` a
  relaxed Bernoulli (Gumbel-Softmax, SCALOR's temperature schedule) with an
  analytic Bernoulli KL.
* Filtering and identities (Sec. III-C "Object Filtering"): a propagated
  object whose ``z_pres`` falls to the threshold or below leaves its slot; a
  discovered object above the threshold takes a slot that was empty at this
  frame (the best ``z_pres`` first, the lowest free slot first) and keeps it
  while it is propagated: the slot index is the object's track id.

Outputs are in track space: ``K = N + 1`` slots (the N track slots, then the
background); a discovered candidate that got no slot is counted with the
background in the reported masks (it was filtered), and the reconstruction is
the mixture's mean over all candidates.

Axis legend: B batch, T frames, N track slots, D discovery proposals, P = N
+ D candidates, H height, W width, C channels, F features, L latent, S RNN
hidden size, G grid side.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax import xla_flags
from ocjax.models import base
from ocjax.nn import dla
from ocjax.nn import mask_normalisation as masks_lib
from ocjax.nn import stn
from ocjax.objectives import kl as kl_lib

Array = jax.Array

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# -------------------------------------------------------------- latents
def gumbel_temperature(step: Array | int | None, end: float = 0.5,
                       decay_steps: int = 20_000) -> Array:
  """SCALOR's relaxation temperature: ``max(end^(step / decay_steps),
  end)`` (1 at step 0, ``end`` from ``decay_steps`` on; ``end`` at
  evaluation, ``step=None``)."""
  if step is None:
    return jnp.asarray(end, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.maximum(end ** (step / float(decay_steps)), end)


def discovery_prior_schedule(step: Array | int | None, end: float,
                             start: float, anneal_steps: int) -> Array:
  """rho of the discovery prior (Eq. 6), annealed as SCALOR does: linear
  from ``start`` at step 0 to ``end`` at ``anneal_steps``, then ``end``
  (``end`` at evaluation, ``step=None``, and when ``anneal_steps`` is 0)."""
  if step is None or anneal_steps <= 0:
    return jnp.asarray(end, jnp.float32)
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / float(anneal_steps), 1.0)
  return start + (end - start) * frac


def relaxed_bernoulli(key: Array, prob: Array, temperature: Array) -> Array:
  """A Gumbel-Softmax (binary Concrete) sample in (0, 1) of Bernoulli(prob):
  ``sigmoid((logit(p) + log u - log(1 - u)) / tau)``."""
  p = jnp.clip(prob, 1e-6, 1 - 1e-6)
  u = jax.random.uniform(key, prob.shape, prob.dtype, 1e-6, 1 - 1e-6)
  y = (jnp.log(p) - jnp.log1p(-p) + jnp.log(u) - jnp.log1p(-u))
  return jax.nn.sigmoid(y / temperature)


def bernoulli_kl(q: Array, p: Array, eps: float = 1e-6) -> Array:
  """``KL(Bernoulli(q) || Bernoulli(p))`` elementwise."""
  q = jnp.clip(q, eps, 1 - eps)
  p = jnp.clip(p, eps, 1 - eps)
  return q * (jnp.log(q) - jnp.log(p)) + (1 - q) * (
      jnp.log1p(-q) - jnp.log1p(-p))


def gaussian_kl(q_mu, q_log_sigma, p_mu, p_log_sigma, inclusive: bool):
  """``KL(q || p)``, or the inclusive ``KL(p || q)`` (Sec. III-D); summed
  over the last axis."""
  if inclusive:
    return kl_lib.gaussian_kl(p_mu, p_log_sigma, q_mu, q_log_sigma)
  return kl_lib.gaussian_kl(q_mu, q_log_sigma, p_mu, p_log_sigma)


def boxes_from_where(where: Array, min_scale: float) -> Array:
  """The box ``(s_x, s_y, t_x, t_y)`` of a slot's where-state ``(scale
  logits (2), centre (2))``: ``s = s_min + (1 - s_min) sigmoid(logit)``."""
  scale = min_scale + (1.0 - min_scale) * jax.nn.sigmoid(where[..., :2])
  return jnp.concatenate([scale, where[..., 2:]], axis=-1)


def grid_centres(grid: int) -> np.ndarray:
  """Cell centres of a ``G x G`` grid in normalised (x, y): ``[G^2, 2]``,
  row-major."""
  c = (2.0 * np.arange(grid) + 1.0) / grid - 1.0
  ys, xs = np.meshgrid(c, c, indexing="ij")
  return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def assign_slots(free: Array, pres: Array, threshold: float) -> Array:
  """Discovered objects -> free track slots (static shapes).

  Args:
    free: ``[B, N]`` bool, the slots empty at this frame.
    pres: ``[B, D]`` the discovered objects' ``z_pres``.
    threshold: the presence threshold.
  Returns:
    ``A [B, D, N]`` (0/1): the best discovered object above the threshold
    takes the lowest free slot, the next best the next, and so on.
  """
  d = pres.shape[-1]
  order = jnp.argsort(-pres, axis=-1)  # [B, D], best first
  rank = jnp.cumsum(free, axis=-1) - 1  # [B, N], the free slots' ranks
  cand = jnp.take_along_axis(order, jnp.clip(rank, 0, d - 1), axis=-1)
  ok = free & (rank < d) & (jnp.take_along_axis(pres, cand, -1) > threshold)
  return (jax.nn.one_hot(cand, d, dtype=pres.dtype)
          * ok[..., None].astype(pres.dtype)).swapaxes(-1, -2)


# -------------------------------------------------------------- networks
def _groups(c: int) -> int:
  return max(1, min(8, c // 4))


class VectorCNN(nn.Module):
  """A feature crop ``[..., g, g, F]`` -> a vector ``[..., out]``: stride-2
  3x3 convolutions (GroupNorm, CELU), flatten, dense CELU."""
  channels: Sequence[int]
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    lead = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    for i, c in enumerate(self.channels):
      x = nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME", use_bias=False,
                  dtype=self.dtype, name=f"conv_{i}")(x)
      x = nn.celu(nn.GroupNorm(num_groups=_groups(c), dtype=self.dtype,
                               name=f"norm_{i}")(x))
    x = nn.celu(nn.Dense(self.out, dtype=self.dtype, name="out")(
        x.reshape(x.shape[0], -1)))
    return x.reshape(lead + (self.out,))


def depth_to_space(x: Array) -> Array:
  """``[N, H, W, 4 C] -> [N, 2 H, 2 W, C]`` (PyTorch's PixelShuffle(2)
  channel order: ``(C, 2, 2)``)."""
  n, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(n, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(n, 2 * h, 2 * w, c)


class UpDecoder(nn.Module):
  """A latent ``[..., L]`` -> an image ``[..., size, size, out]``: dense to
  ``4 x 4 x C``, then doublings by sub-pixel convolution (GroupNorm, CELU)
  up to ``size``, then a 3x3 convolution (raw outputs)."""
  size: int
  channels: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    if self.size < 4 or self.size & (self.size - 1):
      raise ValueError(f"Decoder size must be a power of two >= 4, got "
                       f"{self.size} (config model.glimpse_size or "
                       f"model.image_size).")
    lead = z.shape[:-1]
    c = self.channels
    x = nn.celu(nn.Dense(4 * 4 * c, dtype=self.dtype, name="dense")(
        z.reshape(-1, z.shape[-1])))
    x = x.reshape(-1, 4, 4, c)
    for i in range(int(math.log2(self.size // 4))):
      # Sub-pixel upsampling (SCALOR's decoders use PixelShuffle): a 3x3
      # convolution to 4C channels, then depth-to-space.
      x = nn.Conv(4 * c, (3, 3), padding="SAME", use_bias=False,
                  dtype=self.dtype, name=f"up_{i}")(x)
      x = depth_to_space(x)
      x = nn.celu(nn.GroupNorm(num_groups=_groups(c), dtype=self.dtype,
                               name=f"norm_{i}")(x))
    x = nn.Conv(self.out, (3, 3), padding="SAME", dtype=self.dtype,
                name="out")(x)
    return x.reshape(lead + x.shape[1:])


class GaussianHead(nn.Module):
  """``h -> (mu, log sigma)``, each ``[..., size]`` (sigma = softplus)."""
  size: int
  std_bias: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array) -> tuple[Array, Array]:
    y = nn.Dense(2 * self.size, dtype=self.dtype, name="dense")(h)
    mu, raw = jnp.split(y.astype(jnp.float32), 2, axis=-1)
    return mu, jnp.log(jax.nn.softplus(raw + self.std_bias) + 1e-4)


class BackgroundEncoder(nn.Module):
  """``q(z_bg | m_bg, x_t)`` (Sec. III-C): ``[B, H, W, 4] -> (mu, log
  sigma)``."""
  channels: Sequence[int]
  latent_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    for i, c in enumerate(self.channels):
      x = nn.Conv(c, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                  dtype=self.dtype, name=f"conv_{i}")(x)
      x = nn.celu(nn.GroupNorm(num_groups=_groups(c), dtype=self.dtype,
                               name=f"norm_{i}")(x))
    x = jnp.mean(x, axis=(1, 2))
    return GaussianHead(self.latent_size, dtype=self.dtype, name="head")(x)


# -------------------------------------------------------------- one frame
class FrameStep(nn.Module):
  """One frame of APEX (module doc), scanned over time by `Apex`."""
  cfg: Any  # `Apex.settings()`
  train: bool

  def setup(self):
    m, dt = self.cfg, self.cfg.dtype
    s, lw = m.hidden_size, m.what_size
    self.crop_cnn = VectorCNN(tuple(m.cnn_channels), s, dt)  # c^p
    self.glimpse_cnn = VectorCNN(tuple(m.cnn_channels), s, dt)
    self.what_rnn = nn.GRUCell(s, dtype=dt)
    self.what_head = GaussianHead(lw, dtype=dt)
    self.where_rnn = nn.GRUCell(s, dtype=dt)
    self.where_head = GaussianHead(4, std_bias=-2.0, dtype=dt)
    self.pres_rnn = nn.GRUCell(s, dtype=dt)
    self.pres_head = nn.Dense(1, dtype=dt)
    self.prior_rnn = nn.OptimizedLSTMCell(s, dtype=dt)
    self.prior_what = GaussianHead(lw, dtype=dt)
    self.prior_where = GaussianHead(4, dtype=dt)
    self.prior_pres = nn.Dense(1, dtype=dt)
    self.disc_where = nn.Conv(8, (1, 1), dtype=dt)
    self.disc_proposal = nn.Dense(1, dtype=dt)
    self.object_decoder = UpDecoder(m.glimpse_size, m.decoder_channels, 4, dt)
    self.bg_encoder = BackgroundEncoder(tuple(m.bg_encoder_channels),
                                        m.bg_size, dt)
    self.bg_decoder = UpDecoder(m.image_size, m.decoder_channels, 3, dt)
    self.bg_prior_rnn = nn.GRUCell(s, dtype=dt)
    self.bg_prior = GaussianHead(m.bg_size, dtype=dt)

  # ------------------------------------------------------------ rendering
  def render(self, z_what: Array, boxes: Array):
    """Decodes candidates: ``z_what [B, P, L]``, ``boxes [B, P, 4]`` ->
    (means, alpha (padded -c), softplus(alpha), sigmoid(alpha)) in the
    frame, each ``[B, P, H, W, .]``."""
    m = self.cfg
    g = self.object_decoder(z_what)  # [B, P, G, G, 4]
    rgb = jax.nn.sigmoid(g[..., :3])
    alpha = m.mask_bound * jnp.tanh(g[..., 3:])  # Eq. (7)
    size = m.image_size
    paste = lambda x: stn.paste_boxes(x, boxes, size, size)
    means = paste(rgb)
    alpha_img = paste(alpha + m.mask_bound) - m.mask_bound  # padded with -c
    return means, alpha_img, paste(jax.nn.softplus(alpha)), paste(
        jax.nn.sigmoid(alpha))

  def normalise(self, alpha_img, softplus_img, sigmoid_img, z_pres):
    if self.cfg.mask_normalisation == "apex":
      return masks_lib.principled(alpha_img, softplus_img, z_pres,
                                  self.cfg.mask_bound)
    return masks_lib.scalor(sigmoid_img, z_pres)

  def crop_source(self, x: Array, e: Array) -> Array:
    """What the object STNs read: the feature map, or (ablation) the
    frame."""
    return e if self.cfg.feature_space_stn else x

  def sample(self, mu, log_sigma):
    if not self.train:
      return mu
    return mu + jnp.exp(log_sigma) * jax.random.normal(
        self.make_rng("sample"), mu.shape, mu.dtype)

  def presence(self, prob, tau):
    if not self.train:
      return prob
    return relaxed_bernoulli(self.make_rng("sample"), prob, tau)

  # ------------------------------------------------------------ the step
  def __call__(self, carry, inputs):
    m = self.cfg
    x, e, tau, rho = inputs  # [B, H, W, C], [B, h, w, F], scalars
    b = x.shape[0]
    n, lw, s = m.num_slots, m.what_size, m.hidden_size
    gs = m.grid_size
    src = self.crop_source(x, e)
    alive = carry["alive"]  # [B, N] 0/1
    first = carry["first"]  # scalar bool: t = 0

    # ---- prior of the propagated objects, Eq. (5): an LSTM over the past.
    box_prev = boxes_from_where(carry["where"], m.min_scale)
    prior_in = jnp.concatenate(
        [carry["what"], box_prev, carry["pres"][..., None]], -1)
    prior_state, ph = self.prior_rnn(carry["prior"], prior_in)
    p_what = self.prior_what(ph)
    p_where = self.prior_where(ph)
    p_pres = jax.nn.sigmoid(self.prior_pres(ph)[..., 0].astype(jnp.float32))

    # ---- propagation, Eq. (15).
    side = jnp.max(box_prev[..., :2], axis=-1, keepdims=True)
    square = jnp.concatenate([side, side, box_prev[..., 2:]], -1)
    c_p = self.crop_cnn(stn.crop_boxes(src, square, m.crop_size))  # [B,N,S]
    h_where, out = self.where_rnn(
        carry["h_where"], jnp.concatenate([c_p, carry["what"], box_prev], -1))
    q_where_p = self.where_head(out)
    delta = self.sample(*q_where_p)
    where_p = jnp.concatenate(
        [carry["where"][..., :2] + delta[..., :2],
         carry["where"][..., 2:] + m.where_update * jnp.tanh(delta[..., 2:])],
        -1)
    box_p = boxes_from_where(where_p, m.min_scale)
    glimpse_p = self.glimpse_cnn(stn.crop_boxes(src, box_p, m.crop_size))
    h_what, out = self.what_rnn(
        carry["h_what"], jnp.concatenate([glimpse_p, carry["what"]], -1))
    q_what_p = self.what_head(out)
    what_p = self.sample(*q_what_p)
    h_pres, out = self.pres_rnn(
        carry["h_pres"],
        jnp.concatenate([c_p, what_p, carry["pres"][..., None]], -1))
    q_pres_p = alive * jax.nn.sigmoid(
        self.pres_head(out)[..., 0].astype(jnp.float32))
    pres_p = alive * self.presence(q_pres_p, tau)

    means_p, alpha_p, soft_p, sig_p = self.render(what_p, box_p)
    # The scope s_t = 1 - m^p_t (Eq. 8 over the propagated objects).
    scope = 1.0 - jnp.tanh(jnp.sum(soft_p * pres_p[..., None, None, None],
                                   axis=1))

    # ---- discovery, Eq. (16).
    hf, wf = e.shape[1:3]
    cells = nn.avg_pool(e, (hf // gs, wf // gs), (hf // gs, wf // gs))
    c_d = cells.reshape(b, gs * gs, -1)  # [B, D, F]
    q_where_d = jnp.split(self.disc_where(cells).reshape(b, gs * gs, 8)
                          .astype(jnp.float32), 2, axis=-1)
    mu_w, raw_sigma = q_where_d
    q_where_d = (mu_w, jnp.log(jax.nn.softplus(raw_sigma) + 1e-4))
    raw = self.sample(*q_where_d)
    centre = jnp.asarray(grid_centres(gs)) + (2.0 / gs) * jnp.tanh(
        raw[..., 2:])
    # Scale logits about an anchor (SCALOR's size anchor, G-SWM's prior
    # mean): small boxes under the N(0, I) prior (docs/apex.md).
    where_d = jnp.concatenate([raw[..., :2] + m.scale_anchor, centre], -1)
    box_d = boxes_from_where(where_d, m.min_scale)
    glimpse_d = self.glimpse_cnn(stn.crop_boxes(src, box_d, m.crop_size))
    d = gs * gs
    h_what_d, out = self.what_rnn(
        jnp.zeros((b, d, s), glimpse_d.dtype),
        jnp.concatenate([glimpse_d, jnp.zeros((b, d, lw), glimpse_d.dtype)],
                        -1))
    q_what_d = self.what_head(out)
    what_d = self.sample(*q_what_d)
    means_d, alpha_d, soft_d, sig_d = self.render(what_d, box_d)
    p_proposal = jax.nn.sigmoid(self.disc_proposal(
        jnp.concatenate([c_d, what_d, box_d], -1))[..., 0].astype(
            jnp.float32))
    p_context = masks_lib.context(scope, soft_d)  # Eq. (18)
    q_pres_d = p_proposal * p_context  # Eq. (17)
    pres_d = self.presence(q_pres_d, tau)

    # ---- masks, background and the likelihood, Eqs. (1), (8)-(12).
    pres = jnp.concatenate([pres_p, pres_d], 1)  # [B, P]
    log_m, log_m_bg, m_fg = self.normalise(
        jnp.concatenate([alpha_p, alpha_d], 1),
        jnp.concatenate([soft_p, soft_d], 1),
        jnp.concatenate([sig_p, sig_d], 1), pres)
    q_bg = self.bg_encoder(jnp.concatenate(
        [x, jax.lax.stop_gradient(jnp.exp(log_m_bg))], -1))
    z_bg = self.sample(*q_bg)
    means_bg = jax.nn.sigmoid(self.bg_decoder(z_bg))  # [B, H, W, 3]
    h_bg, out = self.bg_prior_rnn(carry["h_bg"], carry["z_bg"])
    p_bg_mu, p_bg_ls = self.bg_prior(out)
    p_bg = (jnp.where(first, 0.0, carry["z_bg"] + p_bg_mu),
            jnp.where(first, 0.0, p_bg_ls))

    means = jnp.concatenate([means_p, means_d], 1)  # [B, P, H, W, 3]
    all_log_m = jnp.concatenate([log_m, log_m_bg[:, None]], 1)
    all_means = jnp.concatenate([means, means_bg[:, None]], 1)
    recon = jnp.sum(jnp.exp(all_log_m) * all_means, axis=1)
    if m.likelihood == "sgmm":  # Eq. (1)
      sigma = jnp.asarray([m.sigma_fg] * (n + d) + [m.sigma_bg], jnp.float32)
      sigma = sigma[:, None, None, None]
      log_n = jnp.sum(-0.5 * ((x[:, None] - all_means) / sigma) ** 2
                      - jnp.log(sigma) - _LOG_SQRT_2PI, axis=-1)
      log_px = jax.nn.logsumexp(all_log_m[..., 0] + log_n, axis=1)
    else:  # the ablation's plain Gaussian on the composed image
      log_px = jnp.sum(-0.5 * ((x - recon) / m.sigma_fg) ** 2
                       - math.log(m.sigma_fg) - _LOG_SQRT_2PI, axis=-1)
    nll = -jnp.sum(log_px, axis=(1, 2))  # [B]

    # ---- KL, Eq. (20): propagated (alive slots), discovered, background.
    incl = m.inclusive_kl
    kl_what_p = gaussian_kl(*q_what_p, *p_what, incl)  # [B, N]
    kl_where_p = gaussian_kl(*q_where_p, *p_where, incl)
    kl_pres_p = bernoulli_kl(q_pres_p, p_pres)
    kl_p = alive * (pres_p * (kl_what_p + kl_where_p) + kl_pres_p)
    zero = jnp.zeros_like(q_what_d[0])
    kl_what_d = gaussian_kl(*q_what_d, zero, zero, incl)
    kl_where_d = gaussian_kl(*q_where_d, jnp.zeros_like(raw),
                             jnp.zeros_like(raw), incl)
    p_pres_d = rho * p_context  # Eq. (6), choice
    kl_pres_d = bernoulli_kl(q_pres_d, p_pres_d)
    kl_d = pres_d * (kl_what_d + kl_where_d) + kl_pres_d
    kl_bg = gaussian_kl(*q_bg, *p_bg, False)
    kl = jnp.sum(kl_p, 1) + jnp.sum(kl_d, 1) + kl_bg
    entropy = masks_lib.entropy(log_m, m_fg)  # Eq. (21)

    # ---- filtering and identities.
    thr = m.presence_threshold
    stays = alive * (pres_p > thr)  # [B, N]
    a = assign_slots(alive < 0.5, pres_d, thr)  # [B, D, N]
    joins = jnp.sum(a, axis=1)  # [B, N]
    take = lambda new, old: (jnp.einsum("bdn,bd...->bn...", a, new)
                             + stays.reshape(stays.shape + (1,) * (
                                 old.ndim - 2)) * old)
    new_carry = dict(
        where=take(where_d, where_p), what=take(what_d, what_p),
        pres=take(pres_d, pres_p), alive=stays + joins,
        h_where=stays[..., None] * h_where,
        h_what=take(h_what_d, h_what),
        h_pres=stays[..., None] * h_pres,
        prior=jax.tree.map(lambda v: stays[..., None] * v, prior_state),
        z_bg=z_bg, h_bg=h_bg, first=jnp.zeros_like(first))

    # ---- track-space outputs: N slots + background (module doc).
    m_p, m_d = jnp.exp(log_m[:, :n]), jnp.exp(log_m[:, n:])
    shown = alive[..., None, None, None]
    track_masks = m_p + jnp.einsum("bdn,bdhwc->bnhwc", a, m_d)
    unassigned = 1.0 - jnp.sum(a, axis=2)  # [B, D]
    bg_mask = jnp.exp(log_m_bg) + jnp.einsum("bd,bdhwc->bhwc", unassigned,
                                             m_d)
    track_means = shown * means_p + jnp.einsum("bdn,bdhwc->bnhwc", a,
                                               means_d)
    track_pres = alive * pres_p + jnp.einsum("bdn,bd->bn", a, pres_d)
    track_box = (alive[..., None] * box_p
                 + jnp.einsum("bdn,bdk->bnk", a, box_d))
    track_what = (alive[..., None] * what_p
                  + jnp.einsum("bdn,bdk->bnk", a, what_d))
    out = dict(
        recon=recon,
        masks=jnp.concatenate([track_masks, bg_mask[:, None]], 1),
        components=jnp.concatenate([track_means, means_bg[:, None]], 1),
        pres=track_pres, boxes=track_box, what=track_what, z_bg=z_bg,
        nll=nll, kl=kl, entropy=entropy,
        num_objects=jnp.sum(track_pres > thr, axis=1).astype(jnp.float32))
    return new_carry, out


class Apex(base.ObjectCentricModel):
  """APEX; ``__call__({"video": [B, T, H, W, 3]})`` (module doc).

  Attributes:
    image_size: H = W (a power of two, >= 16).
    num_slots: N, the track slots (foreground objects tracked at once).
    grid_size: G, the discovery grid (``D = G^2`` proposals; divides H/4).
    what_size: dim(z_what). bg_size: dim(z_bg).
    hidden_size: S, every RNN's size and the object CNNs' output.
    encoder_channels: the DLA levels' widths (strides 2, 4, 8, ...).
    features: F, the feature map's channels.
    cnn_channels: the crop CNNs' widths (stride 2 each).
    crop_size: the side of the STN crops of the feature map (or frame).
    glimpse_size: the decoded object glimpses' side.
    decoder_channels: the glimpse and background decoders' width.
    bg_encoder_channels: the background encoder's widths.
    mask_bound: c of Eq. (7).
    min_scale: the smallest box (fraction of the half-image).
    scale_anchor: the discovered boxes' scale logit at the prior's mean
      (-2: ``0.05 + 0.95 sigmoid(-2) = 0.16`` of the half-image).
    where_update: how far a propagated box moves per frame (SCALOR 0.2).
    sigma_fg, sigma_bg: Eq. (1)'s fixed standard deviations (0.1, 0.04).
    presence_threshold: the filtering threshold on z_pres.
    discovery_prior: rho, the discovery z_pres prior (times p_context).
    discovery_prior_start, discovery_prior_anneal_steps: rho is annealed
      linearly from the start value to ``discovery_prior`` over these steps
      (SCALOR: 0.1 over 500 steps; 0 steps: fixed).
    entropy_weight: weight of L_H (Eq. 22: 1).
    tau_end, tau_decay_steps: the Gumbel-Softmax temperature schedule.
    mask_normalisation: ``"apex"`` (Eqs. 8-12) or ``"scalor"`` (ablation).
    likelihood: ``"sgmm"`` (Eq. 1) or ``"gaussian"`` (ablation).
    feature_space_stn: the object STNs read the feature map (False: the
      frame, the "image space STN" ablation).
    inclusive_kl: ``KL(p || q)`` for z_what and z_where (Sec. III-D).
    scan_unroll: frames unrolled per iteration of the time loops (the
      ConvLSTM's and the frames'); 0: all
      (XLA's CPU backend runs rolled loops slower; long clips compile faster
      with a small value).
    dtype: compute dtype.
  """
  image_size: int = 128
  num_slots: int = 8
  grid_size: int = 8
  what_size: int = 32
  bg_size: int = 16
  hidden_size: int = 128
  encoder_channels: Sequence[int] = (32, 64, 128, 128)
  features: int = 64
  cnn_channels: Sequence[int] = (64, 64, 64)
  crop_size: int = 8
  glimpse_size: int = 32
  decoder_channels: int = 64
  bg_encoder_channels: Sequence[int] = (16, 32, 64, 64)
  mask_bound: float = 5.0
  min_scale: float = 0.05
  scale_anchor: float = -2.0
  where_update: float = 0.2
  sigma_fg: float = 0.1
  sigma_bg: float = 0.04
  presence_threshold: float = 0.7
  discovery_prior: float = 0.01
  discovery_prior_start: float = 0.1
  discovery_prior_anneal_steps: int = 500
  entropy_weight: float = 1.0
  tau_end: float = 0.5
  tau_decay_steps: int = 20_000
  mask_normalisation: str = "apex"
  likelihood: str = "sgmm"
  feature_space_stn: bool = True
  inclusive_kl: bool = True
  scan_unroll: int = 0
  dtype: Any = jnp.float32

  rng_streams = ("sample",)  # posterior samples and relaxed z_pres
  eval_modes = {"fixed": {}}
  segmentation_names = ("masks",)
  reported_segmentation = "masks"
  input_key = "video"
  uses_step = True  # the Gumbel-Softmax temperature
  # YNNPACK keeps the matmuls only: its reduce fusions slowed the quick
  # preset's training step on the 2-core CPU (0.536 against 0.438 s at batch
  # 4, 10 alternating rounds of benchmarks/xla_options_ab.py; GENESIS-V2,
  # the video model and AST-Seg are faster with them, so ocjax keeps them).
  xla_cpu_options = {xla_flags.YNN_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

  def dummy_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
    s = int(self.image_size)
    return {"video": np.zeros((batch_size, 2, s, s, 3), np.float32)}

  def settings(self):
    """The fields as a plain (hashable) tuple for `FrameStep`."""
    names = [f.name for f in dataclasses.fields(self)
             if f.name not in ("parent", "name")]
    cls = collections.namedtuple("ApexSettings", names)
    return cls(**{k: getattr(self, k) for k in names})

  def check(self) -> None:
    """Raises ValueError naming the config field that is invalid."""
    if self.mask_normalisation not in ("apex", "scalor"):
      raise ValueError(f"model.mask_normalisation must be 'apex' or "
                       f"'scalor', got {self.mask_normalisation!r}.")
    if self.likelihood not in ("sgmm", "gaussian"):
      raise ValueError(f"model.likelihood must be 'sgmm' or 'gaussian', got "
                       f"{self.likelihood!r}.")
    fh = self.image_size // 4
    if self.image_size % 4 or fh % self.grid_size:
      raise ValueError(f"model.grid_size={self.grid_size} must divide the "
                       f"feature map's side image_size/4 = "
                       f"{self.image_size / 4}.")
    if not 0 < self.min_scale < 1:
      raise ValueError(f"model.min_scale must be in (0, 1), got "
                       f"{self.min_scale}.")

  @nn.compact
  def __call__(self, batch: dict[str, Array], *, train: bool = True,
               step: Array | int | None = None) -> base.ModelOutput:
    """Decomposes and tracks ``video [B, T, H, W, 3]`` in [0, 1].

    Args:
      batch: dict with ``video``.
      train: sample the posteriors and relax z_pres (False: posterior means
        and z_pres probabilities, a deterministic decomposition).
      step: the training step (the Gumbel-Softmax temperature; None: its
        end value).
    """
    self.check()
    video = batch[self.input_key].astype(self.dtype)
    b, t, h, w, _ = video.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(f"APEX was built for {self.image_size}x"
                       f"{self.image_size} frames (config model.image_size) "
                       f"but got {h}x{w}.")
    e = dla.SceneEncoder(tuple(self.encoder_channels), self.features,
                         self.dtype, self.scan_unroll,
                         name="encoder")(video)  # [B,T,h,w,F]
    tau = gumbel_temperature(step, self.tau_end, self.tau_decay_steps)
    rho = discovery_prior_schedule(step, self.discovery_prior,
                                   self.discovery_prior_start,
                                   self.discovery_prior_anneal_steps)
    n, s = self.num_slots, self.hidden_size
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    carry = dict(where=zeros(b, n, 4), what=zeros(b, n, self.what_size),
                 pres=zeros(b, n), alive=zeros(b, n), h_where=zeros(b, n, s),
                 h_what=zeros(b, n, s), h_pres=zeros(b, n, s),
                 prior=(zeros(b, n, s), zeros(b, n, s)),
                 z_bg=zeros(b, self.bg_size), h_bg=zeros(b, s),
                 first=jnp.asarray(True))
    scan = nn.scan(FrameStep, variable_broadcast="params",
                   split_rngs={"params": False, "sample": True},
                   in_axes=0, out_axes=0, unroll=self.scan_unroll or t)
    step_fn = scan(cfg=self.settings(), train=train, name="frame")
    xs = (jnp.moveaxis(video, 1, 0), jnp.moveaxis(e, 1, 0),
          jnp.broadcast_to(tau, (t,)), jnp.broadcast_to(rho, (t,)))
    _, outs = step_fn(carry, xs)
    tm = lambda v: jnp.moveaxis(v, 0, 1)  # [T, B, ...] -> [B, T, ...]
    masks = tm(outs["masks"])  # [B, T, N + 1, H, W, 1]
    bg_latent = jnp.zeros((b, t, 1, 5 + self.what_size), jnp.float32)
    bg_latent = bg_latent.at[..., 5:5 + min(self.bg_size, self.what_size)
                             ].set(tm(outs["z_bg"])[:, :, None,
                                                    :self.what_size])
    latents = jnp.concatenate([
        jnp.concatenate([tm(outs["pres"])[..., None], tm(outs["boxes"]),
                         tm(outs["what"])], -1), bg_latent], 2)
    losses = {
        "nll": jnp.sum(outs["nll"], 0),  # Eq. (19), summed over frames
        "kl": jnp.sum(outs["kl"], 0),  # Eq. (20)
        "entropy": jnp.sum(outs["entropy"], 0),  # Eq. (21)
    }
    return base.ModelOutput(
        recon=tm(outs["recon"]), masks=masks,
        components=tm(outs["components"]), losses=losses,
        latents=latents,  # [B, T, N + 1, 5 + L]: z_pres, box, z_what
        segmentations={"masks": masks},
        aux={"num_slots_used": jnp.mean(tm(outs["num_objects"]), axis=1),
             "z_pres": tm(outs["pres"]), "boxes": tm(outs["boxes"]),
             # The track slots' presence and z_what (the arrangement task).
             "presence": tm(outs["pres"]), "appearance": tm(outs["what"]),
             "temperature": tau})


MODEL = Apex
