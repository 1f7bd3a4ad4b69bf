"""``--mode=sample``: scenes drawn from the model's prior, as PNG files.

Writes ``<workdir>/samples/<step>/sample_NNNN.png`` (one per scene) and
``<workdir>/samples/<step>_grid.png`` (scene, its segmentation and the
per-slot components, one row per scene).
"""

from __future__ import annotations

import os

import jax
import numpy as np

import data_pipelines
from ocjax.train import loop
from ocjax.train import mesh as mesh_lib
from ocjax.train import writers
from ocjax.viz import grids


def sample(config, workdir: str, step: int | None = None,
           num: int | None = None, seed: int | None = None) -> str:
  """Draws ``num`` (default ``config.sample.num``) scenes; returns the grid."""
  data_pipelines.configure_tensorflow()
  model, objective, tx = loop.build(config)
  if not hasattr(model, "sample"):
    raise ValueError(f"Model {config.model.name!r} has no prior to sample.")
  checkpointer = loop.make_checkpointer(config, workdir, read_only=True)
  step = config.sample.step if step is None else step
  state, _ = loop.init_or_restore(
      config, model, objective, tx, checkpointer, mesh_lib.make_mesh(),
      loop.example_batch(config), step=step, require=True)
  num = config.sample.num if num is None else num
  sampler = loop.make_sampler(model, num,
                              config.seed if seed is None else seed)
  out = jax.device_get(sampler(state.params))
  step = int(state.step)
  folder = os.path.join(workdir, "samples", str(step))
  for i, image in enumerate(np.asarray(out["image"])):
    grids.save_png(os.path.join(folder, f"sample_{i:04d}.png"), image)
  grid = grids.sample_grid(np.asarray(out["image"]), np.asarray(out["masks"]),
                           np.asarray(out["components"]), max_rows=num)
  path = grids.save_png(os.path.join(workdir, "samples", f"{step}_grid.png"),
                        grid)
  writers.log("Wrote %d samples of step %d to %s/ and the grid %s.", num,
              step, folder, path)
  return path
