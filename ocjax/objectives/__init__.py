"""Objective registry: ``build(config)`` -> ``(outputs, state) -> ...``.

An objective has ``init() -> state`` and
``__call__(outputs, state) -> (loss, new_state, metrics)``; its state (GECO's
beta and moving average) lives in the train state and is checkpointed.
"""

from __future__ import annotations

from typing import Any

from ocjax.objectives import geco as geco_lib


def build(config: Any):
  """Builds the objective of an experiment config (``objective`` section)."""
  obj, model = config.objective, config.model
  if obj.name != "geco":
    raise ValueError(f"Unknown objective {obj.name!r} (config field "
                     "objective.name); known: ['geco'].")
  h = w = model.image_size
  num_elements = 3 * h * w  # goal is per pixel and channel
  mask_loss = bool(model.get("mask_consistency", False))
  beta_init = obj.beta_init
  if beta_init is None:  # App. E: 1e-10 with the mask-consistency loss.
    beta_init = 1e-10 if mask_loss else 1.0
  geco = geco_lib.Geco(
      goal=obj.goal * num_elements,
      # Same update size at every resolution, as in the reference train.py.
      step_size=obj.eta * 64**2 / (h * w),
      alpha=obj.alpha, beta_init=beta_init, beta_min=obj.beta_min,
      beta_max=obj.beta_max, speedup=obj.speedup)
  regularisers = ("kl", "kl_mask") if mask_loss else ("kl",)
  return geco_lib.GecoObjective(geco=geco, reconstruction="nll",
                                regularisers=regularisers, enabled=obj.geco)
