"""GECO (Rezende & Viola 2018) as used by GENESIS / GENESIS-V2.

Paper 001 Eqs. (5)-(6):

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
from typing import Any, Sequence

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

  The reconstruction term is the batch mean of ``losses[reconstruction]``; the
  constrained terms are the batch means of ``losses[k]`` for k in
  ``regularisers`` (the latent KL, plus the mask KL of Eq. 7 when enabled).
  With ``enabled=False`` beta stays at ``beta_init`` (a plain beta-VAE).
  """
  geco: Geco
  reconstruction: str = "nll"
  regularisers: Sequence[str] = ("kl",)
  enabled: bool = True

  def init(self) -> GecoState:
    return self.geco.init()

  def __call__(self, outputs: Any, state: GecoState):
    losses = outputs.losses
    err = jnp.mean(losses[self.reconstruction])
    terms = {k: jnp.mean(losses[k]) for k in self.regularisers}
    reg = sum(terms.values())
    beta = jax.lax.stop_gradient(state.beta)
    loss = err + beta * reg  # Eq. (5) / (7)
    if self.enabled:
      new_state = self.geco.update(state, jax.lax.stop_gradient(err))
    else:
      new_state = state
    metrics = dict(loss=loss, beta=state.beta, neg_elbo=err + reg,
                   geco_err_ema=new_state.err_ema, **{self.reconstruction: err},
                   **terms)
    return loss, new_state, metrics

  def update(self, state: GecoState, metrics: dict[str, Array]) -> GecoState:
    """The state update from (averaged) metrics; for gradient accumulation."""
    if not self.enabled:
      return state
    return self.geco.update(state, metrics[self.reconstruction])
