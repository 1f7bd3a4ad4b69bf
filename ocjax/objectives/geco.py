"""GECO (Rezende & Viola 2018): a reconstruction constraint over named terms.

Paper 001 Eqs. (5)-(6), with ``KL`` the weighted sum of every loss term but
the reconstruction:

    L_g    = E_q[-ln p(x|z)] + beta_g * KL(q(z|x) || p(z))              (5)
    E      = alpha_g * E + (1 - alpha_g) * E_q[-ln p(x|z)]
    beta_g = beta_g * exp(eta * (C - E))                                 (6)

with the constants of paper 002 App. E: goal ``C`` = 0.5655 nats per pixel and
channel (times C*H*W), ``alpha_g`` = 0.99, ``eta`` = 1e-5 while the
reconstruction is worse than the goal and 10x that once it is better (the
"speed-up" that brings beta back quickly), beta initialised to 1 and clamped
to [1e-10, 1e10]. The loss uses beta from *before* the step's update, and the
update sees no gradient. All arithmetic is float32, as in the reference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@flax.struct.dataclass
class GecoState:
  """GECO's moving parts; checkpointed with the train state."""
  beta: Array  # [] float32
  err_ema: Array  # [] float32, E of Eq. (6)
  initialised: Array  # [] bool: False until the first update


@dataclasses.dataclass(frozen=True)
class Geco:
  """Eq. (6) with its constants (``goal`` per image, not per pixel)."""
  goal: float
  step_size: float = 1e-5
  alpha: float = 0.99
  beta_init: float = 1.0
  beta_min: float = 1e-10
  beta_max: float = 1e10
  speedup: float | None = 10.0

  def init(self) -> GecoState:
    return GecoState(beta=jnp.float32(self.beta_init),
                     err_ema=jnp.float32(0.0),
                     initialised=jnp.bool_(False))

  def update(self, state: GecoState, err: Array) -> GecoState:
    """One step of Eq. (6) given the batch-mean reconstruction error."""
    f32 = np.float32
    err = jnp.asarray(err, jnp.float32)
    ema = jnp.where(
        state.initialised,
        f32(1.0 - self.alpha) * err + f32(self.alpha) * state.err_ema, err)
    constraint = f32(self.goal) - ema  # C - E: > 0 once better than the goal
    slow = jnp.exp(f32(self.step_size) * constraint)
    if self.speedup is None:
      factor = slow
    else:
      fast = jnp.exp(f32(self.speedup * self.step_size) * constraint)
      factor = jnp.where(constraint > 0, fast, slow)
    beta = jnp.clip(factor * state.beta, f32(self.beta_min),
                    f32(self.beta_max))
    return GecoState(beta=beta, err_ema=ema, initialised=jnp.bool_(True))


@dataclasses.dataclass(frozen=True)
class GecoObjective:
  """``(outputs, state) -> (loss, new_state, metrics)`` for the trainer.

  The reconstruction term is the batch mean of ``losses[reconstruction]``;
  every other loss term the model returns is constrained: the regulariser is
  ``sum_t weights.get(t, 1) * mean_b losses[t]`` (e.g. the latent KL, plus the
  mask KL of Eq. 7 where a model adds it). With ``enabled=False`` beta stays
  at ``beta_init`` (a plain beta-VAE).

  The constants may follow the images, from the shapes at call time:
  ``per_element`` multiplies ``geco.goal`` by the number of reconstructed
  values per example (C H W, times T for videos), and ``reference_pixels > 0``
  scales ``geco.step_size`` by ``reference_pixels / (H W)`` (the same update
  size at every resolution, as the reference code does with 64^2).
  """
  geco: Geco
  reconstruction: str = "nll"
  weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  enabled: bool = True
  per_element: bool = False
  reference_pixels: int = 0

  def init(self) -> GecoState:
    return self.geco.init()

  def constants(self, outputs: Any) -> Geco:
    """Eq. (6)'s constants for the reconstructions ``outputs.recon`` (only
    their shape is read, and only when the constants follow it)."""
    g = self.geco
    if not (self.per_element or self.reference_pixels):
      return g
    shape = outputs.recon.shape  # [B, (T,) H, W, C]
    goal, step_size = g.goal, g.step_size
    if self.per_element:
      goal = g.goal * math.prod(shape[1:])
    if self.reference_pixels:
      h, w = shape[-3:-1]
      step_size = g.step_size * self.reference_pixels / (h * w)
    return dataclasses.replace(g, goal=goal, step_size=step_size)

  def __call__(self, outputs: Any, state: GecoState):
    losses = outputs.losses
    err = jnp.mean(losses[self.reconstruction])
    terms = {k: jnp.mean(losses[k]) for k in sorted(losses)
             if k != self.reconstruction}
    reg = sum(v if self.weights.get(k, 1.0) == 1.0 else self.weights[k] * v
              for k, v in terms.items())
    beta = jax.lax.stop_gradient(state.beta)
    loss = err + beta * reg  # Eq. (5) / (7)
    if self.enabled:
      new_state = self.constants(outputs).update(
          state, jax.lax.stop_gradient(err))
    else:
      new_state = state
    metrics = dict(loss=loss, beta=state.beta, neg_elbo=err + reg,
                   geco_err_ema=new_state.err_ema, **{self.reconstruction: err},
                   **terms)
    return loss, new_state, metrics

  def update(self, state: GecoState, metrics: dict[str, Array],
             outputs: Any) -> GecoState:
    """The state update from (averaged) metrics; for gradient accumulation.

    ``outputs`` may hold shapes only (``jax.ShapeDtypeStruct``).
    """
    if not self.enabled:
      return state
    return self.constants(outputs).update(
        state, metrics[self.reconstruction])


def from_config(config: Any) -> GecoObjective:
  """GECO from an ``objective`` config section (goal per pixel and channel)."""
  beta_init = config.beta_init
  if beta_init is None:
    beta_init = 1.0
  geco = Geco(goal=config.goal, step_size=config.eta, alpha=config.alpha,
              beta_init=beta_init, beta_min=config.beta_min,
              beta_max=config.beta_max, speedup=config.speedup)
  weights = config.get("weights", None)
  return GecoObjective(
      geco=geco, reconstruction=config.get("reconstruction", "nll"),
      weights=dict(weights.to_dict() if weights is not None else {}),
      enabled=config.geco, per_element=True,
      reference_pixels=config.get("reference_pixels", 64 * 64))
