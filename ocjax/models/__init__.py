"""Model registry: ``build(config.model)`` returns a Linen module."""

from __future__ import annotations

import importlib
from typing import Any

# name -> module with a `from_config(model_config)` function.
MODELS: dict[str, str] = {
    "genesis_v2": "ocjax.models.genesis_v2",
}


def build(config: Any):
  """Builds the model named by ``config.name``."""
  if config.name not in MODELS:
    raise ValueError(f"Unknown model {config.name!r} (config field "
                     f"model.name); known models: {sorted(MODELS)}.")
  return importlib.import_module(MODELS[config.name]).from_config(config)
