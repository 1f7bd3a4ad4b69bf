"""What every ocjax model returns, and what the trainer may rely on.

A model is a Linen module called as
``model.apply(variables, batch, rngs=..., train=...)`` returning a
`ModelOutput`. The trainer and the evaluation runner know nothing else about
the model: the objective turns ``losses`` into a scalar, the evaluator scores
every entry of ``segmentations``, the visualiser draws ``recon``, ``masks`` and
``components``.

Axis legend used across ocjax (shapes in comments): B batch, T time,
K slots, H height, W width, C channels, D embedding, L latent.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

Array = jax.Array


@flax.struct.dataclass
class ModelOutput:
  """The model's answer for one batch.

  Attributes:
    recon: reconstruction, ``[B, (T,) H, W, C]``.
    masks: the segmentation the model reports (normalised over slots),
      ``[B, (T,) K, H, W, 1]``.
    components: per-slot appearance, ``[B, (T,) K, H, W, C]``.
    losses: per-example loss terms, each ``[B]`` (e.g. ``nll``, ``kl``).
    latents: per-slot latents, ``[B, (T,) K, L]``.
    segmentations: every soft segmentation the model exposes for evaluation,
      by name (e.g. ``attention``, ``decoder``), each ``[B, (T,) K, H, W, 1]``.
    aux: model-specific intermediate values (small; for tests and figures).
  """
  recon: Array
  masks: Array
  components: Array
  losses: dict[str, Array]
  latents: Array
  segmentations: dict[str, Array]
  aux: dict[str, Any] = flax.struct.field(default_factory=dict)
