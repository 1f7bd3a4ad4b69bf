"""Models: ``build(config.model)`` returns the Linen module it names.

``config.model.name`` is the name of a module ``ocjax/models/<name>.py``
that exposes ``MODEL`` (an `ocjax.models.base.ObjectCentricModel`
subclass); the module is imported on first use. Nothing else registers a
model: `names` lists every module of this package that exposes one.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ocjax.models import base


def names() -> list[str]:
  """Every model of the package (module names exposing ``MODEL``), sorted."""
  found = []
  for info in pkgutil.iter_modules(__path__):
    if info.name.startswith("_") or info.name == "base":
      continue
    if hasattr(importlib.import_module(f"{__name__}.{info.name}"), "MODEL"):
      found.append(info.name)
  return sorted(found)


def model_class(name: str) -> type:
  """The class of model ``name``; a clear error for an unknown one."""
  try:
    module = importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    module = None
  if module is None or not hasattr(module, "MODEL"):
    raise ValueError(f"Unknown model {name!r} (config field model.name); "
                     f"known models: {names()}.")
  return module.MODEL


def build(config: Any):
  """The model named by ``config.name``, built from the other fields."""
  return base.from_config(model_class(str(config.name)), config)
