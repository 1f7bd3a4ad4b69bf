"""The train state and the one jit-compiled training step.

The step knows the model only through the protocol of `ocjax.models.base`
(``model.apply(variables, batch, rngs=..., train=True) -> ModelOutput``, its
declared rng streams and mutable collections) and the objective only through
``objective(outputs, state) -> (loss, new_state, metrics)`` (plus
``objective.update(state, metrics, outputs)`` when gradients are
accumulated), so it carries every ocjax model, image or video.

Randomness is stateless: the key of step ``s`` is ``fold_in(train_key, s)``,
and each rng stream the model declares folds in its index. Draws are made for
the global batch, so the same step gives the same numbers on 1 device or 8.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ocjax import xla_flags

Array = jax.Array
# Independent key trees per use of the seed.
PURPOSES = ("train", "init", "figures", "eval", "sample")
# Gradient accumulation unrolls up to this many micro-batches (compile time
# grows with it).
MAX_UNROLLED_MICROBATCHES = 32


def purpose_key(seed: int, purpose: str) -> Array:
  """The root key of one use of the seed (train steps, init, eval, ...)."""
  return jax.random.fold_in(jax.random.key(seed), PURPOSES.index(purpose))


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly; checkpointed whole.

  ``model_state`` holds the model's mutable collections (e.g.
  ``{"batch_stats": ...}``; empty for most models).
  """
  step: Array  # [] int32, optimizer steps taken
  params: Any
  opt_state: Any
  objective_state: Any
  model_state: Any = flax.struct.field(default_factory=dict)

  def variables(self) -> dict[str, Any]:
    """What ``model.apply`` takes: parameters and mutable collections."""
    return {"params": self.params, **self.model_state}


def stream_rngs(key: Array, streams: Sequence[str]) -> dict[str, Array]:
  """One key per named rng stream: stream ``i`` gets ``fold_in(key, i)``."""
  return {name: jax.random.fold_in(key, i) for i, name in enumerate(streams)}


def init_variables(model, batch: dict[str, Array], seed: int):
  """Parameters and mutable collections from a (small) example batch."""
  rngs = stream_rngs(purpose_key(seed, "init"),
                     ("params",) + tuple(model.rng_streams))
  return dict(model.init(rngs, batch, train=False))


def create_state(variables, tx, objective) -> TrainState:
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(step=jnp.int32(0), params=params,
                    opt_state=tx.init(params),
                    objective_state=objective.init(), model_state=variables)


# On a CPU a step is computed as micro-batches of this many images per device
# when train.grad_accum_steps is 0 (auto): XLA's CPU convolutions run up to
# twice as fast per image on small batches (README, "Speed").
CPU_MICROBATCH = 4


def resolve_grad_accum(train_config: Any, batch_size: int | None = None, *,
                       model=None, num_devices: int | None = None,
                       backend: str | None = None) -> int:
  """The micro-batches per step: ``train.grad_accum_steps``, or with 0
  (auto) on a CPU the most that keep ``CPU_MICROBATCH`` images per device
  (and divide the batch), elsewhere 1. Models with batch statistics
  (mutable collections) are never split automatically: micro-batches would
  change their arithmetic, not only its speed."""
  a = int(train_config.grad_accum_steps)
  if a > 0:
    return a
  if model is not None and tuple(model.mutable_collections):
    return 1
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return 1
  b = int(batch_size or train_config.batch_size)
  per_device = b // (num_devices or jax.device_count())
  best = 1
  for a in range(1, per_device + 1):
    if per_device % a == 0 and per_device // a >= CPU_MICROBATCH:
      best = a
  return best


def _global_norm(tree) -> Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))


def stage_of(model, step: int) -> int | None:
  """The model's training stage at host step ``step`` (the number of its
  ``training_stages()`` boundaries ``<= step``), or None for a model without
  stages."""
  boundaries = tuple(getattr(model, "training_stages", tuple)())
  if not boundaries:
    return None
  return sum(int(step) >= b for b in boundaries)


def frozen_of(model, stage: int | None) -> tuple[str, ...]:
  """The top-level ``params`` entries the model's training call at ``stage``
  gives no gradient (its ``frozen_parameters``, `ocjax.models.base`)."""
  declared = getattr(model, "frozen_parameters", None)
  return tuple(declared(stage)) if declared is not None else ()


def _frozen_mask(params, names: tuple[str, ...]):
  """Booleans shaped like ``params``: True under the top-level ``names``."""
  unknown = sorted(set(names) - set(params))
  if unknown:
    raise ValueError(
        f"frozen_parameters names {unknown}, which are not top-level "
        f"entries of the model's params {sorted(params)}.")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[0].key in names, params)


def _stand_in(tree, mask):
  """``tree`` with its masked leaves replaced by scalar zeros."""
  return jax.tree.map(lambda x, m: jnp.zeros((), x.dtype) if m else x,
                      tree, mask)


def _keep(new, old, mask):
  """``new`` with its masked leaves taken from ``old``."""
  return jax.tree.map(lambda n, o, m: o if m else n, new, old, mask)


def apply_optimizer(tx, grads, params, opt_state, frozen: tuple[str, ...]):
  """``(params, opt_state)`` after one update of ``tx``.

  The top-level ``params`` entries named in ``frozen`` (whose gradient is
  zero) and the optimizer state that mirrors them are kept as they are: the
  optimizer updates scalar stand-ins instead, so a frozen part costs no
  optimizer arithmetic (the autoencoder of AST-Seg's phase 2: about 40M
  parameters, their two Adam moments). That equals the full update wherever
  the optimizer leaves a parameter with zero gradient and zero state
  unchanged (Adam, SGD, gradient clipping; not weight decay or a momentum
  left over from earlier training), as it does for a part frozen from its
  first step.
  """
  if not frozen:
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  mask = _frozen_mask(params, frozen)
  state_mask = optax.tree_utils.tree_map_params(
      tx, lambda _, m: m, opt_state, mask,
      transform_non_params=lambda v: jax.tree.map(lambda _: False, v))
  params_in = _stand_in(params, mask)
  updates, new_state = tx.update(_stand_in(grads, mask),
                                 _stand_in(opt_state, state_mask), params_in)
  return (_keep(optax.apply_updates(params_in, updates), params, mask),
          _keep(new_state, opt_state, state_mask))


def make_train_step(model, objective, tx, *, seed: int,
                    grad_accum_steps: int = 1,
                    state_sharding=None, batch_sharding=None,
                    skip_frozen: bool = True,
                    ) -> Callable[..., tuple[TrainState, dict]]:
  """Builds ``train_step(state, batch, stage=None) -> (state, metrics)``,
  jitted.

  ``state`` is donated. ``metrics`` are scalars: the objective's terms, the
  gradient and parameter norms. With ``grad_accum_steps = A`` the global batch
  is split into A micro-batches (rows ``a, a + A, ...``) whose gradients are
  averaged; the objective's state is updated once, from the averaged metrics.
  ``stage`` (static; `stage_of` the host step, as the trainer passes it)
  reaches models that declare ``training_stages`` (`ocjax.models.base`);
  each stage compiles once. Without it they compute from ``step`` alone.
  The parameters a stage freezes (``frozen_parameters``) are left out of
  the optimizer's update (`apply_optimizer`); ``skip_frozen=False`` updates
  them as any other (the same values for Adam; benchmarks compare the two).
  """
  seed_key = purpose_key(seed, "train")
  streams = tuple(model.rng_streams)
  mutable = tuple(model.mutable_collections)
  uses_step = bool(getattr(model, "uses_step", False))
  frozen_at = (lambda stage: frozen_of(model, stage)) if skip_frozen else (
      lambda stage: ())

  def apply(params, model_state, batch, key, step, *, stage=None):
    """``(outputs, new model_state)`` of one training call."""
    variables = {"params": params, **model_state}
    rngs = stream_rngs(key, streams)
    kwargs = {"step": step} if uses_step else {}
    if stage is not None:
      kwargs["stage"] = stage
    if mutable:
      outputs, updated = model.apply(variables, batch, rngs=rngs, train=True,
                                     mutable=list(mutable), **kwargs)
      return outputs, dict(model_state, **updated)
    return (model.apply(variables, batch, rngs=rngs, train=True, **kwargs),
            model_state)

  def loss_fn(params, model_state, batch, objective_state, key, step, *,
              stage=None):
    outputs, model_state = apply(params, model_state, batch, key, step,
                                 stage=stage)
    loss, new_objective_state, metrics = objective(outputs, objective_state)
    return loss, (new_objective_state, model_state, metrics)

  def accumulate(state, batch, key, stage):
    a = grad_accum_steps
    # Frozen parameters' gradients (zeros) as scalar stand-ins: no sums.
    mask = _frozen_mask(state.params, frozen_at(stage))
    loss_at_stage = functools.partial(loss_fn, stage=stage)
    grad_fn = jax.value_and_grad(loss_at_stage, has_aux=True)

    def split(x):  # [B, ...] -> [A, B / A, ...], micro-batch a = rows a::A
      x = x.reshape((x.shape[0] // a, a) + x.shape[1:])
      return jnp.swapaxes(x, 0, 1)

    micro = jax.tree.map(split, batch)

    def body(carry, inputs):
      grads_sum, metrics_sum, model_state = carry
      i, mb = inputs
      (_, (_, model_state, metrics)), grads = grad_fn(
          state.params, model_state, mb, state.objective_state,
          jax.random.fold_in(key, i), state.step)
      grads_sum = jax.tree.map(jnp.add, grads_sum, _stand_in(grads, mask))
      metrics_sum = jax.tree.map(jnp.add, metrics_sum, metrics)
      return (grads_sum, metrics_sum, model_state), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros_g = _stand_in(jax.tree.map(jnp.zeros_like, state.params), mask)
    _, (_, _, metrics0) = jax.eval_shape(
        loss_at_stage, state.params, state.model_state, first,
        state.objective_state, key, state.step)
    output_shapes = jax.eval_shape(
        lambda p, m, b: apply(p, m, b, key, state.step, stage=stage)[0],
        state.params,
        state.model_state, first)
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics0)
    # Unrolled: XLA's CPU backend runs a rolled loop around the whole model
    # about 10x slower than the same steps unrolled (README, "Speed").
    (grads, metrics, model_state), _ = jax.lax.scan(
        body, (zeros_g, zeros_m, state.model_state), (jnp.arange(a), micro),
        unroll=min(a, MAX_UNROLLED_MICROBATCHES))
    grads = jax.tree.map(lambda g: g / a, grads)
    metrics = jax.tree.map(lambda m: m / a, metrics)
    objective_state = objective.update(state.objective_state, metrics,
                                       output_shapes)
    return grads, objective_state, model_state, metrics

  @functools.partial(jax.jit, donate_argnames=("state",),
                     static_argnames=("stage",),
                     out_shardings=(state_sharding, None)
                     if state_sharding is not None else None,
                     compiler_options=xla_flags.model_options(model))
  def train_step(state: TrainState, batch: dict[str, Array],
                 stage: int | None = None):
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    key = jax.random.fold_in(seed_key, state.step)
    if grad_accum_steps == 1:
      grad_fn = jax.value_and_grad(functools.partial(loss_fn, stage=stage),
                                   has_aux=True)
      (_, (objective_state, model_state, metrics)), grads = grad_fn(
          state.params, state.model_state, batch, state.objective_state, key,
          state.step)
    else:
      grads, objective_state, model_state, metrics = accumulate(
          state, batch, key, stage)
    frozen = frozen_at(stage)
    grads = _stand_in(grads, _frozen_mask(state.params, frozen))  # zeros
    params, opt_state = apply_optimizer(tx, grads, state.params,
                                        state.opt_state, frozen)
    metrics = dict(metrics, grad_norm=_global_norm(grads),
                   param_norm=_global_norm(params))
    new_state = TrainState(step=state.step + 1, params=params,
                           opt_state=opt_state,
                           objective_state=objective_state,
                           model_state=model_state)
    return new_state, metrics

  return train_step
