"""The best, median and worst evaluation images by ARI-FG, as one PNG grid.

`ocjax.eval.runner.evaluate_variables` hands back every image's scores and
its position in the evaluation stream; `write_grid` picks the ``n`` best, the
``n`` around the median and the ``n`` worst by ARI-FG of the model's reported
segmentation in its first evaluation mode, fetches exactly those images again
(the evaluation stream is deterministic and seekable), runs the model on their
whole batches with the evaluation rng (so the masks are the ones that were
scored) and draws

  input | ground truth | reconstruction | each segmentation | components

one row per image, under a banner per group. Writes
``<workdir>/eval/<step>_best_median_worst.png`` and a ``.json`` naming the
images (stream positions) and their scores.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw

import data_pipelines
from ocjax import run as run_lib
from ocjax.metrics import segmentation as seg_metrics
from ocjax.viz import grids
from ocjax.viz import video as video_viz

GROUPS = ("best", "median", "worst")
_BANNER_COLOURS = {"best": (40, 150, 60), "median": (110, 110, 110),
                   "worst": (200, 40, 40)}


def score_key(per_image: dict[str, Any], run: run_lib.Run | None = None,
              metric: str = "ari_fg") -> str:
  """The per-image score to rank by: the model's reported segmentation in its
  first evaluation mode (without ``run``: the first segmentation that has
  ``metric`` in a mode named ``fixed``, else in any mode)."""
  if run is not None:
    mode = next(iter(run.eval_modes()))
    preferred = f"{mode}/{run.model.reported_segmentation}/{metric}"
    if preferred in per_image:
      return preferred
  keys = sorted(k for k in per_image
                if k.count("/") == 2 and k.endswith(f"/{metric}"))
  fixed = [k for k in keys if k.startswith("fixed/")]
  if not keys:
    raise KeyError(f"No per-image {metric} scores among {sorted(per_image)}.")
  return (fixed or keys)[0]


def select(scores, n: int = 3) -> dict[str, np.ndarray]:
  """Indices of the ``n`` best, median and worst finite scores.

  Each group is ordered from the higher to the lower score; ties keep the
  stream order. The median group is the ``n`` images centred on the middle of
  the ranking. With fewer than ``3 n`` images the groups overlap.

  Args:
    scores: ``[N]`` per-image scores (NaN are left out).
    n: images per group.

  Returns:
    ``{"best": [<=n], "median": [<=n], "worst": [<=n]}`` int indices.
  """
  scores = np.asarray(scores, np.float64)
  finite = np.flatnonzero(np.isfinite(scores))
  order = finite[np.argsort(-scores[finite], kind="stable")]  # high -> low
  m = len(order)
  n = min(n, m)
  start = max(0, min(m - n, (m - 1) // 2 - (n - 1) // 2))
  return {"best": order[:n], "median": order[start:start + n],
          "worst": order[m - n:]}


def _banner(text: str, width: int, colour, height: int = 14) -> np.ndarray:
  """A ``[height, width, 3]`` strip with ``text`` in white on ``colour``."""
  img = Image.new("RGB", (max(width, 1), height), tuple(colour))
  ImageDraw.Draw(img).text((3, 1), text, fill=(255, 255, 255))
  return np.asarray(img)


def stack_groups(tiles: dict[str, np.ndarray],
                 captions: dict[str, str]) -> np.ndarray:
  """Stacks per-group grids vertically, each under its banner."""
  width = max(t.shape[1] for t in tiles.values())
  parts = []
  for name, tile in tiles.items():
    parts.append(_banner(captions.get(name, name), width,
                         _BANNER_COLOURS.get(name, (0, 0, 0))))
    pad = np.full((tile.shape[0], width, 3), 255, np.uint8)
    pad[:, :tile.shape[1]] = tile
    parts.append(pad)
  return np.concatenate(parts, axis=0)


def fetch_rows(config, positions, *, split: str, batch_size: int,
               apply=None, params=None) -> dict[str, np.ndarray]:
  """The examples at stream ``positions`` (and the model's outputs on them).

  Each needed global batch is read once (``start_step`` seeks to it) and,
  with ``apply``, the model runs on the whole batch, so every row sees the
  random draws it saw during evaluation.

  Returns:
    ``image`` (or ``video``), ``segmentation`` and, with ``apply``, ``recon``, ``masks``,
    ``components`` and ``seg/<name>`` per segmentation, rows in the order of
    ``positions``.
  """
  positions = np.asarray(positions, np.int64)
  rows: dict[int, dict[str, np.ndarray]] = {}
  for b in sorted(set((positions // batch_size).tolist())):
    ds = data_pipelines.get_dataset(config.data, split,
                                    batch_size=batch_size, seed=config.seed,
                                    start_step=b, process_index=0,
                                    process_count=1, repeat=False)
    batch = next(data_pipelines.iterate(ds))
    out = {}
    if apply is not None:
      res = jax.device_get(apply(params, run_lib.model_inputs(batch)))
      out = {"recon": res.recon, "masks": res.masks,
             "components": res.components,
             **{f"seg/{k}": v for k, v in res.segmentations.items()}}
    for p in positions[positions // batch_size == b]:
      r = int(p % batch_size)
      row = {k: np.asarray(batch[k][r])
             for k in ("image", "video", "segmentation") if k in batch}
      row.update({k: np.asarray(v[r]) for k, v in out.items()})
      rows[int(p)] = row
  keys = rows[int(positions[0])].keys() if len(positions) else ()
  return {k: np.stack([rows[int(p)][k] for p in positions]) for k in keys}


def write_grid(run: run_lib.Run, workdir: str, step: int, variables,
               per_image: dict[str, np.ndarray], *, n: int = 3,
               metric: str = "ari_fg") -> str | None:
  """Writes the best/median/worst grid and its JSON; returns the PNG path.

  Rows are images (a reconstruction grid) or clips (video strips). Returns
  None (and writes nothing) when there are no per-image ``metric`` scores or
  no ground truth.
  """
  if not per_image or "position" not in per_image:
    return None
  try:
    key = score_key(per_image, run, metric)
  except KeyError:
    return None
  scores = np.asarray(per_image[key], np.float64)
  positions = np.asarray(per_image["position"], np.int64)
  picks = select(scores, n)
  if not any(len(v) for v in picks.values()):
    return None
  config, model = run.config, run.model
  ec = config.eval
  mode, seg_name = key.split("/")[:2]
  apply = run.apply_fn("eval", mode)
  tiles, captions, record = {}, {}, {"metric": key, "step": int(step),
                                     "split": ec.split, "groups": {}}
  for group in GROUPS:
    idx = picks[group]
    ex = fetch_rows(config, positions[idx], split=ec.split,
                    batch_size=ec.batch_size, apply=apply, params=variables)
    key_in = model.input_key
    if key_in not in ex or "segmentation" not in ex:
      return None
    segmentations = {name: ex[f"seg/{name}"]
                     for name in model.segmentation_names}
    # The score of the refetched rows, as a check that they are the ones
    # that were ranked (a clip is scored as the runner scores it).
    if key_in == "video":
      masks, truth = seg_metrics.stack_time(ex[f"seg/{seg_name}"],
                                            ex["segmentation"])
      tiles[group] = video_viz.strip(
          ex["video"], ex["recon"], segmentations, ex["masks"],
          ex["components"], ex["segmentation"], max_clips=len(idx))
    else:
      masks, truth = ex[f"seg/{seg_name}"], ex["segmentation"]
      tiles[group] = grids.reconstruction_grid(
          ex["image"], ex["recon"], segmentations=segmentations,
          masks=ex["masks"], components=ex["components"],
          segmentation=ex["segmentation"], max_rows=len(idx))
    check = seg_metrics.segmentation_metrics(masks, truth)[metric]
    values = ", ".join(f"{s:.3f}" for s in scores[idx])
    captions[group] = f"{group} {metric}: {values}"
    record["groups"][group] = [
        {"position": int(p), "score": float(s), "rescored": float(c)}
        for p, s, c in zip(positions[idx], scores[idx], np.asarray(check))]
  grid = stack_groups(tiles, captions)
  path = os.path.join(workdir, "eval", f"{step}_best_median_worst.png")
  grids.save_png(path, grid)
  with open(path[:-4] + ".json", "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  return path
