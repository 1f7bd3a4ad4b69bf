"""The optimizer of a run, from the ``optimizer`` config section.

``name``: ``adam`` (optax: eps added to the bias-corrected sqrt(v)),
``adam_keras`` (Keras/TF's Adam: eps added to the *uncorrected* sqrt(v), as
the official TensorFlow implementations were trained) or ``sgd``. The
learning rate follows `learning_rate_schedule`; gradients may be clipped by
their global norm first.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

SCHEDULES = ("constant", "warmup_decay")


def learning_rate_schedule(config: Any, num_steps: int = 0):
  """``step -> learning rate`` (a float where the rate is constant).

  ``constant``: ``learning_rate``. ``warmup_decay``: ``learning_rate *
  min(1, (step / warmup_steps) ** warmup_power) * decay_rate ** (step /
  decay_steps)`` (continuous exponential decay; ``decay_steps = 0``: none),
  times ``late_decay_factor`` from ``late_decay_fraction`` of ``num_steps`` on
  (0: never), ``num_steps`` being the run's training length.
  """
  name = str(config.get("schedule", "constant"))
  base = float(config.learning_rate)
  if name == "constant":
    return base
  if name != "warmup_decay":
    raise ValueError(f"Unknown learning-rate schedule {name!r} (config field "
                     f"optimizer.schedule); known: {list(SCHEDULES)}.")
  warmup = int(config.get("warmup_steps", 0))
  power = float(config.get("warmup_power", 1.0))
  decay_rate = float(config.get("decay_rate", 1.0))
  decay_steps = int(config.get("decay_steps", 0))
  late_fraction = float(config.get("late_decay_fraction", 0.0))
  late_factor = float(config.get("late_decay_factor", 1.0))

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = jnp.float32(base)
    if warmup > 0:
      lr = lr * jnp.minimum(1.0, (step / warmup) ** power)
    if decay_steps > 0:
      lr = lr * jnp.float32(decay_rate) ** (step / decay_steps)
    if late_fraction > 0 and num_steps > 0:
      lr = jnp.where(step >= late_fraction * num_steps, lr * late_factor, lr)
    return lr

  return schedule


class _KerasAdamState(NamedTuple):
  count: Array
  mu: Any
  nu: Any


def scale_by_keras_adam(b1: float, b2: float, eps: float):
  """Adam's direction with Keras's eps placement.

  ``m / (sqrt(v) + eps) * sqrt(1 - b2^t) / (1 - b1^t)``, i.e. optax's
  ``m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t))``.
  """

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return _KerasAdamState(jnp.zeros([], jnp.int32), zeros,
                           jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu,
                      updates)
    count = state.count + 1
    t = count.astype(jnp.float32)
    scale = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    out = jax.tree.map(lambda m, v: scale * m / (jnp.sqrt(v) + eps), mu, nu)
    return out, _KerasAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def make_optimizer(config: Any,
                   num_steps: int = 0) -> optax.GradientTransformation:
  """The ``optimizer`` section as an optax transformation.

  ``name="sgd"`` (plain gradient descent) is there for tests and ablations:
  its update is linear in the gradient, so two runs that should take the
  same step can be compared to rounding error (Adam's normalised update
  turns rounding noise in a near-zero gradient into a step of up to ``lr``).
  """
  lr = learning_rate_schedule(config, num_steps)
  chain = []
  if config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  name = str(config.name)
  if name == "adam":
    chain.append(optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps))
  elif name == "adam_keras":
    chain += [scale_by_keras_adam(config.b1, config.b2, config.eps),
              optax.scale_by_learning_rate(lr)]
  elif name == "sgd":
    chain.append(optax.sgd(lr))
  else:
    raise ValueError(f"Unknown optimizer {name!r} (config field "
                     "optimizer.name); known: ['adam', 'adam_keras', 'sgd'].")
  return optax.chain(*chain)
