"""Iterative amortised inference (Marino et al. 2018) as IODINE does it.

The machinery IODINE (Greff et al., ICML 2019), SEQ-IODINE and the video
model of paper 004 share (paper 004 Sec. 3.1, Eq. 2): a posterior
``lambda = (mu, log sigma)`` per slot is refined by

    z_r ~ q_lambda_r(z),  lambda_{r+1} = lambda_r + f_phi(a, h_{r-1})

where ``a`` are IODINE's refinement inputs (`refinement_inputs`), computed
from the image, the decoded slots and the gradients of the ELBO, and
``f_phi`` is a convolutional encoder, an MLP and a recurrent core
(`RefinementNetwork`). The decoder is the spatial-broadcast decoder
(`ConvBroadcastDecoder`) and the likelihood the per-pixel Gaussian mixture
of paper 004 Eq. (1) (`ocjax.objectives.likelihood.pixel_mixture_log_probs`).

Choices where the papers are silent (IODINE's official TF1 code,
deepmind-research ``iodine/``, Apache-2.0, and the PyTorch code paper 004
builds on, read for them; none copied):

* The gradient inputs are those of the per-image loss
  ``L = beta NLL + KL``; the ones w.r.t. the means and masks are analytic
  (`likelihood_gradients`), the one w.r.t. lambda is ``jax.grad`` through the
  decoder. All inputs computed from gradients or likelihoods are
  layer-normalised without learned parameters (over ``H, W, C`` for images,
  over the features for vectors) and pass through ``stop_gradient``, as
  IODINE stops them.
* The mask posterior input is the responsibility
  ``m_k N_k / sum_j m_j N_j`` (Bayes' rule with the decoded masks as the
  prior); the leave-one-out likelihood of slot k is the mixture's
  log-likelihood with slot k removed and the other masks renormalised.

Axis legend: B batch, K slots, N = B K, H height, W width, C channels,
L latent size, F features.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocjax.nn import broadcast_decoder
from ocjax.nn import layers
from ocjax.nn import lstm
from ocjax.objectives import likelihood

Array = jax.Array

# IODINE's image-shaped refinement inputs, in the order they are
# concatenated, with their channel counts (C = image channels).
IMAGE_INPUTS = ("image", "means", "mask", "mask_logits", "mask_posterior",
                "grad_means", "grad_mask", "log_likelihood",
                "leave_one_out", "coordinates")


def image_input_channels(c: int) -> int:
  """Channels of the concatenated image inputs for ``c``-channel images."""
  return 3 * c + 1 + 1 + 1 + 1 + 1 + 1 + 2


def normalise(x: Array, axes: Sequence[int], eps: float = 1e-5) -> Array:
  """Layer normalisation without learned scale or offset."""
  mean = jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.var(x, axis=axes, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def sample_posterior(lam: Array, eps: Array) -> Array:
  """``z = mu + exp(log sigma) * eps`` for ``lam = [mu, log sigma]``."""
  mu, log_sigma = jnp.split(lam, 2, axis=-1)
  return mu + jnp.exp(log_sigma) * eps


def likelihood_gradients(x: Array, means: Array, log_masks: Array,
                         joint: Array, log_p: Array, sigma: float
                         ) -> tuple[Array, Array]:
  """Gradients of the pixel NLL ``-log sum_k m_k N_k`` (paper 004 Eq. 1).

  ``d/d mu_k = gamma_k (mu_k - x) / sigma^2`` and
  ``d/d m_k = -N_k / p`` with the responsibilities
  ``gamma_k = m_k N_k / p``.

  Args:
    x: ``[B, H, W, C]``.
    means: ``[B, K, H, W, C]``.
    log_masks: ``[B, K, H, W]``.
    joint: ``log m_k + log N_k``, ``[B, K, H, W]``.
    log_p: ``[B, H, W]``.
    sigma: the likelihood's standard deviation.

  Returns:
    ``(grad_means [B, K, H, W, C], grad_masks [B, K, H, W, 1])``.
  """
  gamma = jnp.exp(joint - log_p[:, None])  # [B, K, H, W]
  grad_means = gamma[..., None] * (means - x[:, None]) / sigma**2
  grad_masks = -jnp.exp(joint - log_masks - log_p[:, None])[..., None]
  return grad_means, grad_masks


def leave_one_out_log_likelihood(mask_logits: Array, joint: Array,
                                 log_masks: Array) -> Array:
  """Each slot's counterfactual: the mixture's log-likelihood without it.

  ``log sum_{j != k} m^(-k)_j N_j`` with ``m^(-k) = softmax_{j != k}`` of the
  mask logits, i.e. ``logsumexp_{j != k}(l_j + log N_j) -
  logsumexp_{j != k}(l_j)``. ``mask_logits, joint, log_masks``:
  ``[B, K, H, W]``; returns ``[B, K, H, W]`` (zeros when K = 1).
  """
  k = mask_logits.shape[1]
  if k == 1:
    return jnp.zeros_like(joint)
  log_n = joint - log_masks  # [B, K, H, W]
  others = ~np.eye(k, dtype=bool)[None, :, :, None, None]  # [1, K, K, 1, 1]
  logits = jnp.broadcast_to(mask_logits[:, None], (
      mask_logits.shape[0], k) + mask_logits.shape[1:])  # [B, K(k), K(j), ..]
  scores = logits + log_n[:, None]
  num = jax.nn.logsumexp(jnp.where(others, scores, -jnp.inf), axis=2)
  den = jax.nn.logsumexp(jnp.where(others, logits, -jnp.inf), axis=2)
  return num - den


def refinement_inputs(x: Array, means: Array, mask_logits: Array,
                      sigma: float, gradient_scale: Array | float = 1.0
                      ) -> Array:
  """IODINE's image-shaped refinement inputs, ``[B, K, H, W, F]``.

  In the order of `IMAGE_INPUTS`: the image, the slot's means, mask and mask
  logit, the mask posterior, LN(dL/d means), LN(dL/d mask), LN(the pixel
  log-likelihood), LN(the leave-one-out log-likelihood) and the (row,
  column) coordinates in [-1, 1]. Everything is behind ``stop_gradient``.

  Args:
    x: ``[B, H, W, C]``.
    means: ``[B, K, H, W, C]``.
    mask_logits: ``[B, K, H, W, 1]``.
    sigma: the likelihood's standard deviation.
    gradient_scale: multiplies the gradient inputs (0: zeroed, as in paper
      004's prediction of frames it does not see, Sec. 3.2.3).
  """
  x, means, mask_logits = jax.lax.stop_gradient((x, means, mask_logits))
  b, k, h, w, c = means.shape
  log_p, joint = likelihood.pixel_mixture_log_probs(x, mask_logits, means,
                                                    sigma)
  log_masks = jax.nn.log_softmax(mask_logits[..., 0], axis=1)
  grad_means, grad_masks = likelihood_gradients(x, means, log_masks, joint,
                                                log_p, sigma)
  posterior = jax.nn.softmax(joint, axis=1)[..., None]
  loo = leave_one_out_log_likelihood(mask_logits[..., 0], joint, log_masks)
  per_slot = lambda a: jnp.broadcast_to(a[:, None], (b, k) + a.shape[1:])
  img_axes = (2, 3, 4)
  coords = jnp.broadcast_to(
      jnp.asarray(layers.coordinate_grid(h, w), x.dtype), (b, k, h, w, 2))
  parts = [
      per_slot(x), means, jnp.exp(log_masks)[..., None], mask_logits,
      posterior, gradient_scale * normalise(grad_means, img_axes),
      gradient_scale * normalise(grad_masks, img_axes),
      normalise(per_slot(log_p[..., None]), img_axes),
      normalise(loo[..., None], img_axes), coords]
  return jax.lax.stop_gradient(jnp.concatenate(parts, axis=-1))


def check_config(model) -> None:
  """Validates the fields the iterative-inference models share; errors name
  the ``config.model`` field."""
  if model.num_slots < 1 or model.num_refinements < 1:
    raise ValueError("model.num_slots and model.num_refinements must be "
                     f">= 1; got {model.num_slots}, {model.num_refinements}.")
  if len(model.refine_channels) != len(model.refine_strides):
    raise ValueError(
        "model.refine_channels and model.refine_strides must have equal "
        f"lengths; got {tuple(model.refine_channels)}, "
        f"{tuple(model.refine_strides)}.")
  size = model.image_size
  for s in model.refine_strides:
    size = -(-size // int(s))
  if model.refine_pool and size % model.refine_pool:
    raise ValueError(
        f"model.refine_pool={model.refine_pool} must divide the refinement "
        f"network's feature map ({size}x{size} for model.image_size="
        f"{model.image_size}, strides {tuple(model.refine_strides)}).")
  if model.sigma <= 0:
    raise ValueError(f"model.sigma must be > 0, got {model.sigma}.")


class ConvBroadcastDecoder(nn.Module):
  """IODINE's spatial-broadcast decoder: ``z [N, L] -> [N, H, W, C + 1]``.

  ``z`` tiled over the full ``size x size`` grid with (row, column)
  coordinates, stride-1 3x3 'SAME' convolutions with ELU, and a last 3x3
  convolution to the means (sigmoid, in [0, 1]) and a mask logit.
  """
  size: int
  channels: Sequence[int] = (64, 64, 64, 64)
  out_channels: int = 3
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> tuple[Array, Array]:
    x = broadcast_decoder.spatial_broadcast(z.astype(self.dtype), self.size)
    ks = (self.kernel_size, self.kernel_size)
    for i, c in enumerate(self.channels):
      x = nn.elu(nn.Conv(c, ks, padding="SAME", dtype=self.dtype,
                         name=f"conv_{i}")(x))
    x = nn.Conv(self.out_channels + 1, ks, padding="SAME", dtype=self.dtype,
                name="out")(x)
    return jax.nn.sigmoid(x[..., :-1]), x[..., -1:]  # means, mask logit


class LSTM2DCell(nn.Module):
  """The 2D-LSTM of paper 004 Eq. (4) (a uni-directional MD-LSTM, Graves et
  al. 2007): one step from a temporal and a refinement predecessor.

  ``g = W_x x + W_t h_temporal + W_r h_refinement`` (each with a bias) split
  into the gates ``i, f, o``, the extra gate ``l`` that mixes the two cell
  states, and the candidate; ``c = s(f) (s(l) c_temporal + (1 - s(l))
  c_refinement) + s(i) tanh(candidate)``, ``h = s(o) tanh(c)``.
  ``temporal`` and ``refinement`` are ``(c, h)`` pairs; returns ``(c, h)``.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, temporal, refinement, x: Array):
    (c_t, h_t), (c_r, h_r) = temporal, refinement
    dense = lambda name: nn.Dense(5 * self.features, dtype=self.dtype,
                                  name=name)
    g = dense("input")(x) + dense("temporal")(h_t) + dense("refinement")(h_r)
    i, f, o, l, cand = jnp.split(g, 5, axis=-1)
    mix = jax.nn.sigmoid(l)
    c = (jax.nn.sigmoid(f) * (mix * c_t + (1.0 - mix) * c_r)
         + jax.nn.sigmoid(i) * jnp.tanh(cand))
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)


class RefinementNetwork(nn.Module):
  """``f_phi`` of paper 004 Eqs. (2) and (4): ``(a_img, a_vec, state
  [, temporal]) -> (dlambda, state)``.

  The image inputs ``[N, H, W, F]`` go through 3x3 convolutions with ELU
  (``strides``), average pooling (``pool`` x ``pool`` windows, flattened;
  0: the global mean) and a dense ELU layer; the result, concatenated with
  the vector inputs ``[N, V]`` (lambda and its normalised gradient), feeds
  the recurrent core: an LSTM (``state = (c, h)``, IODINE) or, given the
  ``temporal`` state ``(c, h)`` of the previous frame, the 2D-LSTM of
  Eq. (4) (the video model); a dense head gives ``dlambda [N, 2L]``. A
  module uses one core or the other, always.
  """
  latent_size: int
  channels: Sequence[int] = (64, 64, 64, 64)
  strides: Sequence[int] = (1, 1, 1, 1)
  pool: int = 4
  mlp_size: int = 128
  hidden_size: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_inputs: Array, vector_inputs: Array, state,
               temporal=None):
    x = image_inputs.astype(self.dtype)
    for i, (c, s) in enumerate(zip(self.channels, self.strides)):
      x = nn.elu(nn.Conv(c, (3, 3), strides=(s, s), padding="SAME",
                         dtype=self.dtype, name=f"conv_{i}")(x))
    if self.pool:
      x = nn.avg_pool(x, (self.pool, self.pool), (self.pool, self.pool))
      x = x.reshape(x.shape[0], -1)
    else:
      x = jnp.mean(x, axis=(1, 2))
    x = nn.elu(nn.Dense(self.mlp_size, dtype=self.dtype, name="mlp")(x))
    x = jnp.concatenate([x, vector_inputs.astype(self.dtype)], axis=-1)
    if temporal is None:
      state, h = lstm.LSTMCell(self.hidden_size, dtype=self.dtype,
                               name="core")(state, x)
    else:
      state = LSTM2DCell(self.hidden_size, dtype=self.dtype,
                         name="core_2d")(temporal, state, x)
      h = state[1]
    delta = nn.Dense(2 * self.latent_size, dtype=self.dtype,
                     name="head")(h)
    return delta, state

  def initial_state(self, n: int) -> tuple[Array, Array]:
    zeros = jnp.zeros((n, self.hidden_size), self.dtype)
    return zeros, zeros
