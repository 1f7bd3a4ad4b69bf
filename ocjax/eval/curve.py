"""A run's learning curve: its held-out scores against steps and training
time, read from the evaluations written during training
(``<workdir>/eval/<step>.json``, ``train.eval_every``), and a PNG of it.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax

from ocjax import run as run_lib
from ocjax.eval import runner
from ocjax.train import writers


def read(workdir: str, run: run_lib.Run, *,
         untrained: bool = False) -> list[dict]:
  """Per evaluation during training, ordered by step: ``step``,
  ``train_seconds`` and `runner.headline_scores`. ``untrained``: the
  untrained baseline (``eval/untrained.json``) first, as step 0 at 0 s."""
  points = []
  folder = os.path.join(workdir, "eval")
  if not os.path.isdir(folder):
    return points
  for name in os.listdir(folder):
    stem = name[:-len(".json")]
    if not (name.endswith(".json") and stem.isdigit()):
      continue
    with open(os.path.join(folder, name), encoding="utf-8") as f:
      results = json.load(f)
    if "train_seconds" not in results:  # scored before they were recorded
      continue
    points.append({"step": int(results["step"]),
                   "train_seconds": float(results["train_seconds"]),
                   **runner.headline_scores(results, run)})
  baseline = runner.read_untrained(workdir) if untrained else None
  if baseline is not None:
    points.append({"step": 0, "train_seconds": 0.0,
                   **runner.headline_scores(baseline, run)})
  return sorted(points, key=lambda p: p["step"])


def first_reach(points: list[dict], thresholds: Sequence[float],
                key: str = "ari_fg") -> dict[str, dict | None]:
  """Per threshold (as a string) the first point's step and training
  seconds with ``key`` at or above it; None where none reaches it."""
  out = {}
  for t in thresholds:
    hit = next((p for p in points if p[key] >= t), None)
    out[str(t)] = (None if hit is None else
                   {"step": hit["step"], "train_seconds": hit["train_seconds"]})
  return out


def plot(points: list[dict], path: str, title: str) -> str:
  """A small line plot (PIL only): ARI-FG and MSC-FG against minutes of
  training, with lines at 0.5 and 0.8. Returns ``path``."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  w, h, m = 520, 320, 40
  img = Image.new("RGB", (w, h), (255, 255, 255))
  d = ImageDraw.Draw(img)
  d.text((m, 8), title, fill=(0, 0, 0))
  d.rectangle([m, m, w - m, h - m], outline=(0, 0, 0))
  tmax = max([p["train_seconds"] for p in points] + [1.0]) / 60
  for y in (0.0, 0.5, 0.8, 1.0):
    yy = h - m - y * (h - 2 * m)
    d.line([m, yy, w - m, yy], fill=(220, 220, 220))
    d.text((4, yy - 6), f"{y:.1f}", fill=(0, 0, 0))
  d.text((w - m - 60, h - m + 8), f"{tmax:.1f} min", fill=(0, 0, 0))
  for key, colour in (("ari_fg", (200, 30, 30)), ("msc_fg", (30, 90, 200))):
    xy = [(m + p["train_seconds"] / 60 / tmax * (w - 2 * m),
           h - m - max(0.0, p[key]) * (h - 2 * m)) for p in points]
    if len(xy) > 1:
      d.line(xy, fill=colour, width=2)
    for x, y in xy:
      d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    d.text((m + 5, m + (5 if key == "ari_fg" else 18)),
           key.upper().replace("_", "-"), fill=colour)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  img.save(path)
  return path


def write_plot(workdir: str) -> str | None:
  """``<workdir>/curve.png``: the run's evaluations during training, from
  its untrained baseline on; None (nothing written) without any."""
  if jax.process_index() != 0:
    return None
  config = run_lib.config_from_workdir(workdir)
  run = run_lib.build(config)
  points = read(workdir, run, untrained=True)
  if not any(p["step"] > 0 for p in points):
    return None
  size = config.data.get("image_size", "")
  path = plot(points, os.path.join(workdir, "curve.png"),
              f"{config.model.name} on {config.data.name} {size}x{size}, "
              f"batch {config.train.batch_size}: held-out "
              f"{points[-1]['segmentation']} masks")
  writers.log("Learning curve (ARI-FG, MSC-FG against training minutes): %s",
              path)
  return path
