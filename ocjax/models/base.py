"""The model protocol: what every ocjax model returns and declares.

A model is a Linen module, a subclass of `ObjectCentricModel`, called as

    model.apply(variables, batch, rngs=..., train=..., **eval_mode_kwargs)

and returning a `ModelOutput`. Generic code (``ocjax.run``, ``train/``,
``eval/``, ``viz/``, ``segment``) knows nothing else about a model than this
module says: the model *declares*, as class attributes,

* ``rng_streams``: the named random streams its calls draw from (besides
  ``params``). The key of stream ``i`` is ``fold_in(key, i)``: append new
  streams at the end, so the draws of the existing ones do not change.
* ``eval_modes``: evaluation modes, each a dict of keyword arguments for
  ``__call__`` (e.g. GENESIS-V2's ``{"fixed": {}, "flexible": {"flexible":
  True}}``). The first is the default.
* ``segmentation_names``: the soft segmentations ``ModelOutput.segmentations``
  holds, in the order figures show them; ``reported_segmentation`` names the
  one that ``ModelOutput.masks`` is (ranked in the best/worst grids, written
  by ``segment``).
* ``mutable_collections``: variable collections a training call updates
  (e.g. ``("batch_stats",)`` for BatchNorm). The train state keeps them,
  checkpointed and sharded like the parameters; evaluation reads them.
* ``input_key``: ``"image"`` (``[B, H, W, 3]``) or ``"video"``
  (``[B, T, H, W, 3]``).
* ``uses_step``: the model's arithmetic follows the training step (a
  loss-weight warm-up, a curriculum that freezes a part): training calls get
  ``step=`` the optimizer step (int32 scalar, the same for every
  micro-batch); other calls get ``step=None`` (the schedules' end).
* ``training_stages()`` (a method; default none): the steps at which the
  training call's computation changes shape, e.g. a part frozen for the
  first N steps (no gradient to compute for it). With boundaries
  ``(s_1, ..., s_n)`` the trainer compiles one step per stage and calls the
  model with ``stage=i`` (a Python int, static: the number of boundaries
  ``<= step``) besides ``step=``; a training call without ``stage`` (other
  callers of `ocjax.train.step.make_train_step`) must compute the same
  values from ``step`` alone.
* ``frozen_parameters(stage)`` (a method; default none): the top-level
  ``params`` entries to which the training call at ``stage`` (None for a
  model without stages or a call without one) sends no gradient, from the
  first step they are frozen on; the trainer leaves them and their optimizer
  state out of the update (`ocjax.train.step.apply_optimizer`), e.g. the
  autoencoder of AST-Seg's phase 2.
* ``cached_inputs(stage)`` (a method; default none): batch entries that the
  training call at ``stage`` reads when the batch has them and otherwise
  computes itself from each example alone (no batch statistics, no
  randomness) with parameters frozen at that stage; the model's
  ``compute_cached_inputs(batch, stage=)`` (a Linen method, called through
  ``apply(..., method=...)``) computes them, ``[B, ...]`` each. The trainer
  computes them once per example of a finite training set and reads them
  back at every later visit (`ocjax.train.input_cache`), as AST-Seg's
  official phase 2 reads the frozen background from disk.
* ``predicts_frames`` (video models): ``__call__`` accepts
  ``observed_frames=n``; frames after the first n are predicted, not seen
  (``ocjax.eval.prediction``).
* ``xla_cpu_options``: XLA:CPU compiler options for every compilation of
  the model (``{flag: value}``, e.g. APEX's YNNPACK fusions); applied on CPU
  where ocjax's XLA defaults apply (`ocjax.xla_flags.model_options`).

and optionally implements ``sample(num, *, noise=None) -> SampleOutput``
(scenes from its prior). ``dummy_batch`` gives inputs of the right shape
(initialisation and shape-only restores need no dataset). ``extra_figures``
(host side, default none) draws the model's own figures, which the trainer
writes beside the standard ones.

A model module (``ocjax/models/<name>.py``) exposes ``MODEL``, its class;
``config.model.name`` is the module's name and the other fields of
``config.model`` are the class's attributes (`from_config`), so a new model
needs no registration anywhere else.

Axis legend used across ocjax (shapes in comments): B batch, T time,
K slots, H height, W width, C channels, D embedding, L latent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@flax.struct.dataclass
class ModelOutput:
  """The model's answer for one batch.

  Attributes:
    recon: reconstruction, ``[B, (T,) H, W, C]``.
    masks: the segmentation the model reports (normalised over slots),
      ``[B, (T,) K, H, W, 1]``; ``segmentations[reported_segmentation]``.
    components: per-slot appearance, ``[B, (T,) K, H, W, C]``.
    losses: per-example loss terms, each ``[B]`` (e.g. ``nll``, ``kl``).
    latents: per-slot latents, ``[B, (T,) K, L]``.
    segmentations: every soft segmentation the model exposes for evaluation,
      by name (``segmentation_names``), each ``[B, (T,) K, H, W, 1]``.
    aux: model-specific intermediate values (small; for tests and figures).
  """
  recon: Array
  masks: Array
  components: Array
  losses: dict[str, Array]
  latents: Array
  segmentations: dict[str, Array]
  aux: dict[str, Any] = flax.struct.field(default_factory=dict)


@flax.struct.dataclass
class SampleOutput:
  """Scenes drawn from a model's prior.

  Attributes:
    image: ``[N, (T,) H, W, C]``.
    masks: ``[N, (T,) K, H, W, 1]``, normalised over slots.
    components: ``[N, (T,) K, H, W, C]``.
    latents: ``[N, (T,) K, L]``.
    aux: model-specific values (prior statistics, log masks, ...).
  """
  image: Array
  masks: Array
  components: Array
  latents: Array
  aux: dict[str, Any] = flax.struct.field(default_factory=dict)


class ObjectCentricModel(nn.Module):
  """Base class of ocjax models: the declarations of the module doc."""

  rng_streams: ClassVar[tuple[str, ...]] = ()
  eval_modes: ClassVar[Mapping[str, Mapping[str, Any]]] = {"fixed": {}}
  segmentation_names: ClassVar[tuple[str, ...]] = ("masks",)
  reported_segmentation: ClassVar[str] = "masks"
  mutable_collections: ClassVar[tuple[str, ...]] = ()
  input_key: ClassVar[str] = "image"
  uses_step: ClassVar[bool] = False
  predicts_frames: ClassVar[bool] = False
  xla_cpu_options: ClassVar[Mapping[str, str]] = {}

  def training_stages(self) -> tuple[int, ...]:
    """The steps where the training call's stage changes (module doc);
    default none."""
    return ()

  def frozen_parameters(self, stage: int | None = None) -> tuple[str, ...]:
    """The top-level ``params`` entries without a gradient at ``stage``
    (module doc); default none."""
    del stage
    return ()

  def cached_inputs(self, stage: int | None = None) -> tuple[str, ...]:
    """Batch entries the training call at ``stage`` may read precomputed
    (module doc); default none."""
    del stage
    return ()

  def compute_cached_inputs(self, batch: dict[str, Array], *,
                            stage: int | None = None) -> dict[str, Array]:
    """``{name: [B, ...]}`` for the names of ``cached_inputs(stage)``."""
    raise NotImplementedError(
        f"{type(self).__name__} declares cached_inputs({stage}) = "
        f"{self.cached_inputs(stage)} but no compute_cached_inputs.")

  def dummy_batch(self, batch_size: int = 1) -> dict[str, np.ndarray]:
    """Zeros shaped like the model's inputs (``image_size`` square RGB)."""
    size = int(getattr(self, "image_size"))
    return {"image": np.zeros((batch_size, size, size, 3), np.float32)}

  def extra_figures(self, batch: dict[str, np.ndarray],
                    out: ModelOutput) -> dict[str, np.ndarray]:
    """The model's own figures, drawn on the host; default none.

    The trainer calls it every time it writes figures, after the standard
    ones (``ocjax.train.loop.write_figures``), on process 0 only.

    Args:
      batch: the host figure batch (``input_key`` and, when the data has
        them, ``segmentation`` etc.).
      out: the model's evaluation output on ``batch``, already on the host
        (NumPy arrays; ``aux`` holds what the figures need).

    Returns:
      ``{name: uint8 [H, W, 3]}``, written as ``images/<name>_<step>.png``,
      ``images/<name>_latest.png`` and TensorBoard images. Names must differ
      from the standard figures' (``reconstruction``, ``samples``,
      ``video``). Called on the unbound module: read attributes only, never
      variables or submodules.
    """
    del batch, out
    return {}


def can_sample(model: Any) -> bool:
  """Whether the model implements ``sample`` (a prior to draw scenes from)."""
  return callable(getattr(type(model), "sample", None))


def from_config(cls: type, config: Any) -> nn.Module:
  """``cls(**fields)`` from a ``model`` config section (all but ``name``).

  A field the class does not have is an error naming it; ``dtype`` strings
  become dtypes; lists become tuples.
  """
  items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  fields = {k: v for k, v in items.items() if k != "name"}
  # Dataclass fields only: the protocol's ClassVar declarations are not
  # settable from a config.
  known = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(
        f"config.model has field(s) {unknown} that model {cls.__name__} does "
        f"not have; its fields are {sorted(known)}.")
  for k, v in fields.items():
    if k == "dtype" or k.endswith("_dtype"):
      fields[k] = jnp.dtype(v)
    elif isinstance(v, list):
      fields[k] = tuple(v)
  return cls(**fields)
