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
from ocjax import run as run_lib
from ocjax.train import writers
from ocjax.viz import grids


def sample(workdir: str, step: int | None = None, num: int | None = None,
           seed: int | None = None, *, config=None) -> str:
  """Draws ``num`` (default ``sample.num``) scenes; returns the grid's path.

  The run's own ``config.json`` is used; ``config`` may only change the
  evaluation and sampling settings (`ocjax.run.config_from_workdir`).
  """
  data_pipelines.configure_tensorflow()
  if step is None:
    step = int(run_lib.config_from_workdir(workdir, config).sample.step)
  run, state = run_lib.restore(workdir, step, config=config)
  num = int(run.config.sample.num) if num is None else num
  out = jax.device_get(run.sample_fn(num, seed)(state.variables()))
  step = int(state.step)
  folder = os.path.join(workdir, "samples", str(step))
  for i, image in enumerate(np.asarray(out.image)):
    grids.save_png(os.path.join(folder, f"sample_{i:04d}.png"), image)
  grid = grids.sample_grid(np.asarray(out.image), np.asarray(out.masks),
                           np.asarray(out.components), max_rows=num)
  path = grids.save_png(os.path.join(workdir, "samples", f"{step}_grid.png"),
                        grid)
  writers.log("Wrote %d samples of step %d to %s/ and the grid %s.", num,
              step, folder, path)
  return path
