"""Spatio-temporal iterative inference (Zablotskaia et al. 2020, paper 004).

The video model often called PROVIDE: IODINE's iterative amortised inference
(`ocjax.models.iodine`, `ocjax.nn.iterative_inference`) over a 2D grid of
(time, refinement) cells (Fig. 2a):

* Frame t (0-based) gets ``R_t = max(R - t, 1)`` refinements (Sec. 3.2.1;
  ``R`` at every frame with ``grid=False``, the "Base" of Table 3). Each
  light cell (t, r) decodes ``z_{t,r} ~ q_lambda_{t,r}``, scores it and
  updates ``lambda_{t,r+1} = lambda_{t,r} + f_phi(a, h_{t,r-1},
  h_{t-1,R_t})`` (Eq. 4) with the 2D-LSTM
  (`ocjax.nn.iterative_inference.LSTM2DCell`); the dark cell decodes
  ``lambda_{t,R_t}`` into frame t's output. The refinement state starts
  each frame at zero and the posterior at the learned ``lambda_0``
  (initialised from U(-0.5, 0.5), App. C); the 2D-LSTM state of the last
  refinement of frame t - 1 is the temporal state of frame t.
* Conditional prior (Eq. 5): ``[mu, log sigma] = xi(h_{t-1,R})``, a dense
  ReLU layer and two dense heads (the prior predicts log sigma, footnote 4;
  at t = 0 from a zero state). Conditional generation (Eq. 6): ``g(z, h)``,
  a two-layer ELU MLP of ``[z, h_{t-1,R}]`` into the spatial-broadcast
  decoder. ``conditional=False`` uses ``N(0, I)`` and ``g(z)`` (Table 3
  without "CP+G").
* Objective (Eqs. 3, 7): per frame, every posterior's ``beta NLL + psi KL +
  gamma H(m)`` weighted by ``r / R_t`` (r = 0 for lambda_0 .. R_t for the
  output), summed over frames. The pixel likelihood is the mixture of
  Eq. (1) with variance 0.3 (App. C). ``H(m) = -sum_i sum_k m log m``:
  minimising it is maximising Eq. (7)'s ``gamma sum m log m`` (the text says
  the masks' entropy is "maximised"; the equation, and the authors' code,
  lower it). The gradient fed to the refinement network is that of
  ``beta NLL + psi KL``.

All light cells of a clip are one `jax.lax.scan` over the flattened grid (a
static schedule from T, R and ``grid``: ``sum_t R_t`` light cells, no
padding to R refinements per frame); the T dark cells follow the loop as one
batched decode of each frame's last posterior (no `jax.lax.cond` inside the
loop: XLA's CPU backend ran that version much slower; not benchmarked side
by side). Slots are a batch axis of
every network.

Axis legend: B batch, T frames, K slots, N = B K, H height, W width,
C channels, L latent size, S hidden size.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.models import base
from ocjax.nn import init
from ocjax.nn import iterative_inference as ii
from ocjax.objectives import kl as kl_lib
from ocjax.objectives import likelihood

Array = jax.Array


def refinements_per_frame(num_frames: int, num_refinements: int,
                          grid: bool = True) -> np.ndarray:
  """``R_t = max(R - t, 1)`` for t = 0..T-1 (Fig. 2a); ``R`` without grid."""
  t = np.arange(num_frames)
  if not grid:
    return np.full(num_frames, num_refinements, np.int32)
  return np.maximum(num_refinements - t, 1).astype(np.int32)


def cell_schedule(num_frames: int, num_refinements: int, grid: bool = True
                  ) -> dict[str, np.ndarray]:
  """The flattened grid: one row per light cell (t, r), in order.

  ``frame``, ``step`` (r), ``first`` (r = 0), ``last`` (r = R_t - 1, the
  cell followed by the frame's dark cell) and ``weight`` (``r / R_t``).
  """
  per_frame = refinements_per_frame(num_frames, num_refinements, grid)
  frame = np.repeat(np.arange(num_frames), per_frame)
  step = np.concatenate([np.arange(n) for n in per_frame])
  steps_of_frame = per_frame[frame]
  return dict(frame=frame.astype(np.int32), step=step.astype(np.int32),
              first=step == 0, last=step == steps_of_frame - 1,
              weight=(step / steps_of_frame).astype(np.float32))


def mask_entropy(mask_logits: Array) -> Array:
  """``H(m) = -sum_i sum_k m_ik log m_ik`` per image (Eq. 7): ``[B, K, H,
  W, 1] -> [B]``."""
  log_m = jax.nn.log_softmax(mask_logits, axis=1)
  return -jnp.sum(jnp.exp(log_m) * log_m, axis=(1, 2, 3, 4))


class ConditionalPrior(nn.Module):
  """``xi_theta`` of Eq. (5): ``h [N, S] -> (mu, log sigma) [N, L]``."""
  latent_size: int
  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array) -> tuple[Array, Array]:
    x = nn.relu(nn.Dense(self.hidden_size, dtype=self.dtype,
                         name="hidden")(h))
    return (nn.Dense(self.latent_size, dtype=self.dtype, name="mu")(x),
            nn.Dense(self.latent_size, dtype=self.dtype, name="log_sigma")(x))


class Generator(nn.Module):
  """``g_theta`` of Eq. (6): ``(z [N, L], h [N, S]) -> (means, mask
  logits)``: an ELU MLP of ``[z, h]`` (``conditional``) into IODINE's
  broadcast decoder."""
  latent_size: int
  size: int
  channels: Sequence[int]
  conditional: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array, h: Array) -> tuple[Array, Array]:
    if self.conditional:
      z = jnp.concatenate([z, h.astype(z.dtype)], axis=-1)
      for i in range(2):
        z = nn.elu(nn.Dense(self.latent_size, dtype=self.dtype,
                            name=f"mlp_{i}")(z))
    return ii.ConvBroadcastDecoder(size=self.size,
                                   channels=tuple(self.channels),
                                   dtype=self.dtype, name="decoder")(z)


class Provide(base.ObjectCentricModel):
  """The spatio-temporal model; ``__call__({"video": [B, T, H, W, C]})``.

  Attributes:
    num_slots: K.
    image_size: H = W of the frames.
    latent_size: L (64).
    num_refinements: R, the refinements of the first frame.
    grid: ``R_t = max(R - t, 1)`` (Fig. 2a); False: R at every frame.
    conditional: conditional prior and generation (Eqs. 5-6).
    sigma: the likelihood's standard deviation (variance 0.3).
    nll_weight: beta (100). kl_weight: psi (10). entropy_weight: gamma (0.1
      for binary data, 0 for colour; App. C).
    decoder_channels, refine_channels, refine_strides, refine_pool,
      refine_mlp_size: as `ocjax.models.iodine.Iodine`.
    hidden_size: S, the 2D-LSTM's size (128).
    scan_unroll: cells unrolled per iteration of the grid's loop; 0: all
      (XLA's CPU backend runs rolled loops several times slower; long clips
      compile faster with a small value).
    dtype: compute dtype.
  """
  num_slots: int = 5
  image_size: int = 64
  latent_size: int = 64
  num_refinements: int = 6
  grid: bool = True
  conditional: bool = True
  sigma: float = 0.3**0.5
  nll_weight: float = 100.0
  kl_weight: float = 10.0
  entropy_weight: float = 0.1
  decoder_channels: Sequence[int] = (64, 64, 64, 64)
  refine_channels: Sequence[int] = (64, 64, 64, 64)
  refine_strides: Sequence[int] = (1, 1, 1, 1)
  refine_pool: int = 4
  refine_mlp_size: int = 128
  hidden_size: int = 128
  scan_unroll: int = 0
  dtype: Any = jnp.float32

  rng_streams = ("sample",)  # the posterior samples of every cell
  eval_modes = {"fixed": {}}
  segmentation_names = ("masks",)
  reported_segmentation = "masks"
  input_key = "video"
  predicts_frames = True  # observed_frames= (Sec. 3.2.3)

  def dummy_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
    """Two zero frames (the parameters do not depend on T)."""
    s = int(self.image_size)
    return {"video": np.zeros((batch_size, 2, s, s, 3), np.float32)}

  def setup(self):
    ii.check_config(self)
    l = self.latent_size
    self.lambda_0 = self.param("lambda_0", init.uniform(0.5), (2 * l,))
    self.generator = Generator(
        latent_size=l, size=self.image_size,
        channels=tuple(self.decoder_channels), conditional=self.conditional,
        dtype=self.dtype)
    self.prior = ConditionalPrior(latent_size=l, hidden_size=self.hidden_size,
                                  dtype=self.dtype)
    self.refine = ii.RefinementNetwork(
        latent_size=l, channels=tuple(self.refine_channels),
        strides=tuple(self.refine_strides), pool=self.refine_pool,
        mlp_size=self.refine_mlp_size, hidden_size=self.hidden_size,
        dtype=self.dtype)

  # ------------------------------------------------------------- a cell
  def _elbo(self, params, x: Array, lam: Array, eps: Array, h_prev: Array):
    """Scores ``z ~ q_lam`` on frame ``x [B, H, W, C]``.

    ``lam [B, K, 2L]``, ``eps [B, K, L]``, ``h_prev [N, S]`` (the temporal
    hidden state). Returns ``(beta NLL + psi KL summed over the batch,
    terms)``; the terms are ``[B]`` except the decoded ``means``,
    ``mask_logits``.
    """
    b, k, _ = lam.shape
    l = self.latent_size
    z = ii.sample_posterior(lam, eps).reshape(b * k, l)
    gen = self.generator.clone(parent=None)
    means, mask_logits = gen.apply({"params": params["generator"]}, z, h_prev)
    means = means.reshape((b, k) + means.shape[1:])
    mask_logits = mask_logits.reshape((b, k) + mask_logits.shape[1:])
    log_p, _ = likelihood.pixel_mixture_log_probs(x, mask_logits, means,
                                                  self.sigma)
    nll = -jnp.sum(log_p, axis=(1, 2))  # Eq. (1), [B]
    mu, log_sigma = jnp.split(lam, 2, axis=-1)
    if self.conditional:  # Eq. (5): p(z_t | h_{t-1})
      prior = self.prior.clone(parent=None)
      p_mu, p_log_sigma = prior.apply({"params": params["prior"]}, h_prev)
      p_mu = p_mu.reshape(b, k, l)
      p_log_sigma = p_log_sigma.reshape(b, k, l)
    else:
      p_mu, p_log_sigma = 0.0, 0.0
    kl = jnp.sum(kl_lib.gaussian_kl(mu, log_sigma, p_mu, p_log_sigma), 1)
    loss = jnp.sum(self.nll_weight * nll + self.kl_weight * kl)
    return loss, dict(nll=nll, kl=kl, entropy=mask_entropy(mask_logits),
                      means=means, mask_logits=mask_logits)

  # ------------------------------------------------------------- forward
  def __call__(self, batch: dict[str, Array], *, train: bool = True,
               observed_frames: int | None = None) -> base.ModelOutput:
    """Decomposes a batch of clips ``video [B, T, H, W, C]`` in [0, 1].

    Args:
      batch: dict with ``video``.
      train: unused; part of the protocol.
      observed_frames: frames the model sees (None: all); the later ones are
        predicted (Sec. 3.2.3): each cell scores its own reconstruction in
        place of the frame and its gradient inputs are zero. The losses of
        predicted frames still compare with the true frames (the prediction
        error), but only the observed frames' terms enter ``losses``.
    """
    del train
    video = batch[self.input_key].astype(self.dtype)
    b, t_len, h, w, c = video.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
          f"The video model was built for {self.image_size}x{self.image_size}"
          f" frames (config model.image_size) but got {h}x{w}.")
    k, l, s = self.num_slots, self.latent_size, self.hidden_size
    n = b * k
    sched = cell_schedule(t_len, self.num_refinements, self.grid)
    num_cells = len(sched["frame"])
    observed = t_len if observed_frames is None else int(observed_frames)
    if not 1 <= observed <= t_len:
      raise ValueError(f"observed_frames must be in [1, T={t_len}], got "
                       f"{observed_frames}.")
    predicted = sched["frame"] >= observed  # [cells]
    # One draw per light cell and one per frame's dark cell.
    noise = jax.random.normal(self.make_rng("sample"),
                              (num_cells + t_len, b, k, l), self.dtype)
    noise, dark_noise = noise[:num_cells], noise[num_cells:]

    if self.is_initializing():  # create the parameters the loop closes over
      zeros_h = jnp.zeros((1, s), self.dtype)
      self.generator(jnp.zeros((1, l), self.dtype), zeros_h)
      self.prior(zeros_h)
      state = self.refine.initial_state(1)
      self.refine(jnp.zeros((1, h, w, ii.image_input_channels(c)),
                            self.dtype), jnp.zeros((1, 4 * l), self.dtype),
                  state, temporal=state)
    params = {"generator": self.generator.variables["params"],
              "prior": self.prior.variables["params"],
              "refine": self.refine.variables["params"]}
    lambda_0 = jnp.broadcast_to(self.lambda_0.astype(self.dtype),
                                (b, k, 2 * l))
    elbo_and_grad = jax.value_and_grad(
        lambda lam, x, eps, h_prev: self._elbo(params, x, lam, eps, h_prev),
        has_aux=True)
    refine = self.refine.clone(parent=None)
    zeros_state = self.refine.initial_state(n)

    def cell(carry, xs):  # one light cell (t, r) of Fig. 2a
      lam, ref_state, temporal = carry
      frame, first, last, predict, eps = xs
      lam = jnp.where(first, lambda_0, lam)
      ref_state = jax.tree.map(lambda a, z: jnp.where(first, z, a),
                               ref_state, zeros_state)
      x = jax.lax.dynamic_index_in_dim(video, frame, axis=1, keepdims=False)
      h_prev = temporal[1]  # h_{t-1, R}
      (_, terms), grad_lam = elbo_and_grad(lam, x, eps, h_prev)
      keep = 1.0 - predict.astype(lam.dtype)  # gradients zeroed if predicted
      # A predicted frame: the cell's reconstruction stands in for x_t.
      x_seen = jnp.where(predict, jax.lax.stop_gradient(jnp.sum(
          jax.nn.softmax(terms["mask_logits"], axis=1) * terms["means"],
          axis=1)), x)
      image_inputs = ii.refinement_inputs(x_seen, terms["means"],
                                          terms["mask_logits"], self.sigma,
                                          gradient_scale=keep)
      vector_inputs = jnp.concatenate(
          [lam, keep * jax.lax.stop_gradient(ii.normalise(grad_lam, (-1,)))],
          -1)
      delta, ref_state = refine.apply(
          {"params": params["refine"]},
          image_inputs.reshape((n,) + image_inputs.shape[2:]),
          vector_inputs.reshape(n, -1), ref_state, temporal=temporal)
      lam = lam + delta.reshape(lam.shape)  # Eq. (4)
      # The last refinement's state is the next frame's temporal state.
      temporal = jax.tree.map(lambda new, old: jnp.where(last, new, old),
                              ref_state, temporal)
      light = {key: terms[key] for key in ("nll", "kl", "entropy")}
      return (lam, ref_state, temporal), (light, lam, h_prev)

    xs = (jnp.asarray(sched["frame"]), jnp.asarray(sched["first"]),
          jnp.asarray(sched["last"]), jnp.asarray(predicted), noise)
    carry = (lambda_0, zeros_state, zeros_state)
    _, (light, lams, h_prevs) = jax.lax.scan(
        cell, carry, xs, unroll=self.scan_unroll or num_cells)
    # The dark cells of all frames at once, after the loop: each decodes its
    # frame's last posterior lambda_{t,R_t} into the frame's output.
    ends = np.flatnonzero(sched["last"])  # the cells ending frames 0..T-1
    lam_out = lams[ends]  # [T, B, K, 2L]
    dark_cell = lambda lam, x, eps, h: self._elbo(params, x, lam, eps, h)[1]
    dark = jax.vmap(dark_cell)(lam_out, jnp.moveaxis(video, 1, 0),
                               dark_noise, h_prevs[ends])  # [T, B, ...]
    # Eq. (3) with r / R_t: the light cells' weights, 1 for each output;
    # predicted frames are not part of the objective.
    light_w = jnp.asarray(sched["weight"] * ~predicted)  # [cells]
    dark_w = jnp.asarray(np.arange(t_len) < observed, jnp.float32)  # [T]
    losses = {key: light_w @ light[key] + dark_w @ dark[key]
              for key in ("nll", "kl", "entropy")}  # [B]
    means = jnp.moveaxis(dark["means"], 0, 1)  # [B, T, K, H, W, C]
    masks = jax.nn.softmax(jnp.moveaxis(dark["mask_logits"], 0, 1), axis=2)
    recon = jnp.sum(masks * means, axis=2)  # [B, T, H, W, C]
    return base.ModelOutput(
        recon=recon, masks=masks, components=means, losses=losses,
        latents=jnp.moveaxis(jnp.split(lam_out, 2, -1)[0], 0, 1),  # [B,T,K,L]
        segmentations={"masks": masks},
        aux={"nll_frames": dark["nll"].T,  # [B, T], the outputs'
             "nll_cells": light["nll"].T})  # [B, cells], unweighted


MODEL = Provide
