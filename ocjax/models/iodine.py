"""IODINE (Greff et al., ICML 2019): iterative amortised inference of slots.

The static model of paper 004 (Sec. 3.1), its baseline:

* Generative model (paper 004 Eq. 1): K slots with latents ``z_k ~ N(0, I)``
  each decoded independently by a spatial-broadcast decoder into means
  ``mu_k`` and a mask logit; masks ``m = softmax_k``; the pixel likelihood is
  the mixture ``sum_k m_ik N(x_i; mu_ik, sigma^2 I)`` with a fixed sigma.
* Inference (Eq. 2): the posterior ``lambda_k = (mu, log sigma)`` starts at a
  learned ``lambda_0`` shared by all slots (initialised from U(-0.5, 0.5),
  paper 004 App. C; the slots differ by their samples) and is refined R
  times: refinement r = 0..R-1 decodes a sample ``z_r ~ q_lambda_r``, scores
  it, and IODINE's inputs (`ocjax.nn.iterative_inference`) with the
  refinement network's LSTM give ``lambda_{r+1} = lambda_r + f_phi(a,
  h_{r-1})``; the last posterior ``lambda_R`` is decoded once more, without
  refinement, into the model's output (paper 004 Fig. 2a: R light cells and
  the dark cell of the final reconstruction).
* Objective (paper 004 Eq. 3, one frame): the ELBO of every posterior
  weighted by ``r / R``, r = 0..R (IODINE's official weighting,
  ``linspace(0, 1, R + 1)``: the initial guess counts 0, the output 1):
  ``sum_r (r / R) [beta NLL_r + psi KL(q_lambda_r || N(0, I))]``. The model
  returns the weighted terms ``nll`` and ``kl``; the objective multiplies
  them by ``beta`` and ``psi`` (``nll_weight``, ``kl_weight``, which also
  weigh the loss whose gradient is a refinement input).

The refinement loop is one `jax.lax.scan` over the R refinements (unrolled
on request); the final decode follows it. Slots are a batch axis of the
decoder and refinement network (vectorised over ``B K``); the gradient
w.r.t. lambda is ``jax.grad`` through the decoder inside the loop, stopped
before it enters the refinement network.

Axis legend: B batch, K slots, R refinement steps, H height, W width,
C channels, L latent size.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ocjax.models import base
from ocjax.nn import init
from ocjax.nn import iterative_inference as ii
from ocjax.objectives import kl as kl_lib
from ocjax.objectives import likelihood

Array = jax.Array


def refinement_weights(num_refinements: int) -> Array:
  """``r / R`` for r = 0..R: the weights of the R + 1 posteriors' ELBOs."""
  r = num_refinements
  return jnp.arange(r + 1, dtype=jnp.float32) / r


class Iodine(base.ObjectCentricModel):
  """IODINE; ``__call__(batch) -> ModelOutput``.

  Attributes:
    num_slots: K.
    image_size: H = W of the inputs.
    latent_size: L (64).
    num_refinements: R, the refinements (R + 1 decodes).
    sigma: the likelihood's standard deviation (paper 004: variance 0.3).
    nll_weight: beta, the likelihood's weight.
    kl_weight: psi, the KL's weight.
    decoder_channels: the broadcast decoder's 3x3 ELU convolutions.
    refine_channels, refine_strides: the refinement network's 3x3 ELU
      convolutions.
    refine_pool: its average-pooling window (0: the global mean).
    refine_mlp_size: its dense layer after the pooling.
    hidden_size: its LSTM's size.
    scan_unroll: refinement steps unrolled per iteration of the loop; 0: all
      R (XLA's CPU backend runs rolled loops slower: README, "Speed").
    dtype: compute dtype.
  """
  num_slots: int = 5
  image_size: int = 64
  latent_size: int = 64
  num_refinements: int = 6
  sigma: float = 0.3**0.5
  nll_weight: float = 10.0
  kl_weight: float = 1.0
  decoder_channels: Sequence[int] = (64, 64, 64, 64)
  refine_channels: Sequence[int] = (64, 64, 64, 64)
  refine_strides: Sequence[int] = (1, 1, 1, 1)
  refine_pool: int = 4
  refine_mlp_size: int = 128
  hidden_size: int = 128
  scan_unroll: int = 0
  dtype: Any = jnp.float32

  rng_streams = ("sample",)  # the posterior samples of every step
  eval_modes = {"fixed": {}}
  segmentation_names = ("masks",)
  reported_segmentation = "masks"
  input_key = "image"

  def setup(self):
    ii.check_config(self)
    l = self.latent_size
    # lambda_0 = [mu, log sigma], U(-0.5, 0.5) (paper 004 App. C).
    self.lambda_0 = self.param("lambda_0", init.uniform(0.5), (2 * l,))
    self.decoder = ii.ConvBroadcastDecoder(
        size=self.image_size, channels=tuple(self.decoder_channels),
        dtype=self.dtype)
    self.refine = ii.RefinementNetwork(
        latent_size=l, channels=tuple(self.refine_channels),
        strides=tuple(self.refine_strides), pool=self.refine_pool,
        mlp_size=self.refine_mlp_size, hidden_size=self.hidden_size,
        dtype=self.dtype)

  # ------------------------------------------------------------- one step
  def _elbo(self, decoder_params, x: Array, lam: Array, eps: Array):
    """Decodes ``z ~ q_lam`` and scores it: ``lam, eps [B, K, 2L | L]``.

    Returns ``(loss summed over the batch, aux)`` with the per-image terms
    ``nll``, ``kl`` ``[B]`` and the decoded ``means [B, K, H, W, C]``,
    ``mask_logits [B, K, H, W, 1]``.
    """
    b, k, _ = lam.shape
    z = ii.sample_posterior(lam, eps)  # [B, K, L]
    decoder = self.decoder.clone(parent=None)
    means, mask_logits = decoder.apply({"params": decoder_params},
                                       z.reshape(b * k, -1))
    means = means.reshape((b, k) + means.shape[1:])
    mask_logits = mask_logits.reshape((b, k) + mask_logits.shape[1:])
    log_p, _ = likelihood.pixel_mixture_log_probs(x, mask_logits, means,
                                                  self.sigma)  # [B, H, W]
    nll = -jnp.sum(log_p, axis=(1, 2))  # Eq. (1), [B]
    mu, log_sigma = jnp.split(lam, 2, axis=-1)
    kl = jnp.sum(kl_lib.gaussian_kl(mu, log_sigma), axis=1)  # [B]
    loss = jnp.sum(self.nll_weight * nll + self.kl_weight * kl)
    return loss, dict(nll=nll, kl=kl, means=means, mask_logits=mask_logits)

  def _refine(self, refine_params, x: Array, lam: Array, grad_lam: Array,
              means: Array, mask_logits: Array, state, clamp: float = 0.0):
    """``lambda_{r+1} = lambda_r + f_phi(a, h_{r-1})`` (paper 004 Eq. 2).

    ``clamp > 0`` clips the gradient w.r.t. lambda and the update to
    ``[-clamp, clamp]`` (SEQ-IODINE on long clips, paper 004 App. A.3).
    """
    b, k, _ = lam.shape
    if clamp:
      grad_lam = jnp.clip(grad_lam, -clamp, clamp)
    image_inputs = ii.refinement_inputs(x, means, mask_logits, self.sigma)
    vector_inputs = jnp.concatenate(
        [lam, jax.lax.stop_gradient(ii.normalise(grad_lam, (-1,)))], -1)
    refine = self.refine.clone(parent=None)
    delta, state = refine.apply(
        {"params": refine_params},
        image_inputs.reshape((b * k,) + image_inputs.shape[2:]),
        vector_inputs.reshape(b * k, -1), state)
    if clamp:
      delta = jnp.clip(delta, -clamp, clamp)
    return lam + delta.reshape(lam.shape), state

  def _network_params(self, h: int, w: int, c: int):
    """The decoder's and refinement network's parameters (created on
    initialisation), for the loop's pure calls."""
    l = self.latent_size
    if self.is_initializing():
      self.decoder(jnp.zeros((1, l), self.dtype))
      self.refine(jnp.zeros((1, h, w, ii.image_input_channels(c)),
                            self.dtype),
                  jnp.zeros((1, 4 * l), self.dtype),
                  self.refine.initial_state(1))
    return (self.decoder.variables["params"],
            self.refine.variables["params"])

  # ------------------------------------------------------------- forward
  def __call__(self, batch: dict[str, Array], *, train: bool = True,
               noise: Array | dict[str, Array] | None = None
               ) -> base.ModelOutput:
    """Infers the slots of a batch by R refinement steps.

    Args:
      batch: dict with ``image`` ``[B, H, W, C]`` in [0, 1].
      train: unused; part of the protocol.
      noise: the standard-normal posterior draws ``[R + 1, B, K, L]`` (or
        ``{"posterior_noise": ...}``), for tests; otherwise drawn from the
        ``sample`` stream.
    """
    del train
    x = batch[self.input_key].astype(self.dtype)
    b, h, w, _ = x.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
          f"IODINE was built for {self.image_size}x{self.image_size} images "
          f"(config model.image_size) but got {h}x{w}.")
    k, l, steps = self.num_slots, self.latent_size, self.num_refinements
    if isinstance(noise, dict):
      noise = noise.get("posterior_noise")
    if noise is None:
      noise = jax.random.normal(self.make_rng("sample"),
                                (steps + 1, b, k, l), self.dtype)
    if noise.shape != (steps + 1, b, k, l):
      raise ValueError(f"noise must be [R + 1, B, K, L] = "
                       f"{(steps + 1, b, k, l)}, got {noise.shape}.")

    lam = jnp.broadcast_to(self.lambda_0.astype(self.dtype), (b, k, 2 * l))
    state = self.refine.initial_state(b * k)
    decoder_params, refine_params = self._network_params(h, w, x.shape[-1])
    elbo_and_grad = jax.value_and_grad(
        lambda lam_, eps_: self._elbo(decoder_params, x, lam_, eps_),
        has_aux=True)

    def refinement_step(carry, eps):  # one light cell of Fig. 2a
      lam, state = carry
      (_, terms), grad_lam = elbo_and_grad(lam, eps)
      new_lam, state = self._refine(refine_params, x, lam, grad_lam,
                                    terms["means"], terms["mask_logits"],
                                    state)
      recon = jnp.sum(jax.nn.softmax(terms["mask_logits"], axis=1)
                      * terms["means"], axis=1)
      return (new_lam, state), (terms["nll"], terms["kl"], recon)

    (lam, _), (nlls, kls, recons) = jax.lax.scan(
        refinement_step, (lam, state), noise[:-1],
        unroll=self.scan_unroll or steps)
    # The final posterior: decoded and scored, not refined.
    _, terms = self._elbo(decoder_params, x, lam, noise[-1])
    means, mask_logits = terms["means"], terms["mask_logits"]
    masks = jax.nn.softmax(mask_logits, axis=1)  # [B, K, H, W, 1]
    recon = jnp.sum(masks * means, axis=1)
    nll_steps = jnp.concatenate([nlls, terms["nll"][None]], 0).T  # [B, R + 1]
    kl_steps = jnp.concatenate([kls, terms["kl"][None]], 0).T  # [B, R + 1]
    weights = refinement_weights(steps).astype(nll_steps.dtype)
    return base.ModelOutput(
        recon=recon, masks=masks, components=means,
        losses={"nll": nll_steps @ weights, "kl": kl_steps @ weights},
        latents=jnp.split(lam, 2, axis=-1)[0],
        segmentations={"masks": masks},
        aux={"nll_steps": nll_steps, "kl_steps": kl_steps,
             "lambda": lam, "recon_steps": jnp.moveaxis(jnp.concatenate(
                 [recons, recon[None]], 0), 0, 1)})  # [B, R + 1, H, W, C]


MODEL = Iodine
