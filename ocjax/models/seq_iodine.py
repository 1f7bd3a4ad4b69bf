"""SEQ-IODINE: IODINE refined along a video, one new frame per refinement.

Paper 004's second baseline (Sec. 4.1, App. A.3): IODINE
(`ocjax.models.iodine`) with as many refinement steps as the clip has
frames; "during each refinement step, instead of computing the error
between the reconstructed image and the ground truth image, we use the next
video frame". Here:

* Refinement t (t = 0..T-1) decodes ``z_t ~ q_lambda_t``, scores it on frame
  t, and the LSTM refinement network updates ``lambda_{t+1}`` from IODINE's
  inputs on frame t (the same networks and inputs as IODINE; the LSTM state
  runs through the whole clip, so does lambda: nothing is reset per frame).
* Frame t's decomposition is the decode of ``lambda_{t+1}``, the posterior
  after seeing frame t (it is the decode refinement t + 1 scores on frame
  t + 1; the last frame's is one more decode after the loop).
* Objective: ``sum_t beta NLL(frame t | lambda_{t+1}) + psi KL(q_lambda_{t+1}
  || N(0, I))``.
* ``clamp`` clips the gradient w.r.t. lambda and the update to
  ``[-clamp, clamp]`` (the paper clamps at 10 on long binary clips,
  App. A.3); 0: off.

The paper runs an IODINE trained on images this way; its parameters have
the same tree as this model's (``lambda_0``, ``decoder``, ``refine``), and a
SEQ-IODINE trained on clips, as here, is the sequential IODINE of Greff et
al. (2019, Sec. 4.4). The loop is one `jax.lax.scan` over frames.

Axis legend: B batch, T frames, K slots, H height, W width, C channels,
L latent size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ocjax.models import base
from ocjax.models import iodine
from ocjax.objectives import kl as kl_lib
from ocjax.objectives import likelihood


class SeqIodine(iodine.Iodine):
  """SEQ-IODINE; ``__call__({"video": [B, T, H, W, C]}) -> ModelOutput``.

  Attributes: those of `ocjax.models.iodine.Iodine` (``num_refinements`` is
  unused: a clip of T frames gets T refinements), and ``clamp``.
  """
  clamp: float = 0.0

  input_key = "video"

  def dummy_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
    s = int(self.image_size)
    return {"video": np.zeros((batch_size, 2, s, s, 3), np.float32)}

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = True
               ) -> base.ModelOutput:
    """Decomposes clips ``video [B, T, H, W, C]`` in [0, 1]."""
    del train
    video = batch[self.input_key].astype(self.dtype)
    b, t_len, h, w, c = video.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
          f"SEQ-IODINE was built for {self.image_size}x{self.image_size} "
          f"frames (config model.image_size) but got {h}x{w}.")
    k, l = self.num_slots, self.latent_size
    noise = jax.random.normal(self.make_rng("sample"), (t_len + 1, b, k, l),
                              self.dtype)
    lam = jnp.broadcast_to(self.lambda_0.astype(self.dtype), (b, k, 2 * l))
    state = self.refine.initial_state(b * k)
    decoder_params, refine_params = self._network_params(h, w, c)
    elbo_and_grad = jax.value_and_grad(
        lambda lam_, x, eps: self._elbo(decoder_params, x, lam_, eps),
        has_aux=True)
    frames = jnp.moveaxis(video, 1, 0)  # [T, B, H, W, C]
    previous = jnp.concatenate([frames[:1], frames[:-1]], 0)  # frame t - 1

    def refinement(carry, xs):  # refinement t on frame t
      lam, state = carry
      x, x_prev, eps = xs
      (_, terms), grad_lam = elbo_and_grad(lam, x, eps)
      # The same decode is frame t - 1's output (lambda_t saw frame t - 1).
      out_prev = self._score(x_prev, lam, terms)
      lam, state = self._refine(refine_params, x, lam, grad_lam,
                                terms["means"], terms["mask_logits"], state,
                                clamp=self.clamp)
      return (lam, state), out_prev

    (lam, _), outs = jax.lax.scan(
        refinement, (lam, state), (frames, previous, noise[:-1]),
        unroll=self.scan_unroll or t_len)
    _, terms = self._elbo(decoder_params, frames[-1], lam, noise[-1])
    last = self._score(frames[-1], lam, terms)
    # Frames 0..T-2 from refinements 1..T-1; frame T-1 from the last decode.
    out = jax.tree.map(lambda a, z: jnp.concatenate([a[1:], z[None]], 0),
                       outs, {key: last[key] for key in outs})
    means = jnp.moveaxis(out["means"], 0, 1)  # [B, T, K, H, W, C]
    masks = jax.nn.softmax(jnp.moveaxis(out["mask_logits"], 0, 1), axis=2)
    recon = jnp.sum(masks * means, axis=2)
    return base.ModelOutput(
        recon=recon, masks=masks, components=means,
        losses={"nll": jnp.sum(out["nll"], 0), "kl": jnp.sum(out["kl"], 0)},
        latents=jnp.moveaxis(out["mu"], 0, 1),  # [B, T, K, L]
        segmentations={"masks": masks},
        aux={"nll_frames": out["nll"].T})  # [B, T]

  def _score(self, x, lam, terms) -> dict[str, jax.Array]:
    """The decode in ``terms`` (of ``lam``) scored on frame ``x``."""
    log_p, _ = likelihood.pixel_mixture_log_probs(
        x, terms["mask_logits"], terms["means"], self.sigma)
    mu, log_sigma = jnp.split(lam, 2, axis=-1)
    kl = jnp.sum(kl_lib.gaussian_kl(mu, log_sigma), axis=1)
    return dict(nll=-jnp.sum(log_p, axis=(1, 2)), kl=kl, mu=mu,
                      means=terms["means"],
                      mask_logits=terms["mask_logits"])


MODEL = SeqIodine
