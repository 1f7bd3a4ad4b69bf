"""Future-frame prediction and its error curve (paper 004 Sec. 3.2.3, Fig. 5).

    python -m ocjax.eval.prediction --workdir=runs/provide --observed=20 \
        --predicted=10 --num_videos=100

The run's model (one that declares ``predicts_frames``) sees the first
``--observed`` frames of each test clip of its data (``num_frames`` set to
observed + predicted) and predicts the next ``--predicted``: each predicted
frame's cells score the model's own reconstruction in place of the frame,
with the gradient inputs zeroed. Reports, per prediction step, the MSE
between the predicted and the true frame (per pixel and channel) and the
ARI-FG of the predicted masks, averaged over clips; writes
``<workdir>/eval/prediction_<step>.json`` and a strip of the first clips
(``prediction_<step>.png``: frames, prediction, masks).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import jax
import numpy as np

import data_pipelines
from ocjax import run as run_lib
from ocjax.metrics import segmentation as seg_metrics
from ocjax.train import step as step_lib
from ocjax.viz import grids
from ocjax.viz import video as video_viz


def predict(workdir: str, *, observed: int, predicted: int,
            num_videos: int = 100, batch_size: int = 8) -> dict:
  """The error curve of the run in ``workdir`` (see module doc)."""
  run, state = run_lib.restore(workdir)
  model = run.model
  if not getattr(model, "predicts_frames", False):
    raise ValueError(
        f"Model {run.config.model.name!r} of {workdir} does not predict "
        "frames (it does not declare predicts_frames).")
  if observed < 1 or predicted < 1:
    raise ValueError(f"--observed and --predicted must be >= 1, got "
                     f"{observed}, {predicted}.")
  length = observed + predicted
  data = run.config.data.copy_and_resolve_references()
  with data.unlocked():
    data.num_frames = length
    if "episode_length" in data and data.episode_length < length:
      data.episode_length = length
  rngs = run.rngs(step_lib.purpose_key(run.seed, "eval"))
  apply = run.jit(lambda v, x: model.apply(
      v, x, rngs=rngs, train=False, observed_frames=observed))
  variables = state.variables()
  ds = data_pipelines.get_dataset(data, "test", batch_size=batch_size,
                                  seed=run.seed, process_index=0,
                                  process_count=1, repeat=False)
  mse, ari_fg, count, first = 0.0, 0.0, 0, None
  for batch in data_pipelines.iterate(ds):
    video, truth = batch["video"], batch["segmentation"]
    valid = np.asarray(batch.get("valid", np.ones(len(video), bool)))
    out = jax.device_get(apply(variables, {"video": video}))
    err = np.mean((out.recon - video) ** 2, axis=(2, 3, 4))  # [B, T]
    scores = jax.device_get(seg_metrics.video_segmentation_metrics(
        out.masks, truth))
    mse = mse + err[valid].sum(0)
    ari_fg = ari_fg + np.asarray(scores["ari_fg"])[valid].sum(0)
    count += int(valid.sum())
    if first is None:
      first = (video, out)
    if count >= num_videos:
      break
  if not count:
    raise ValueError(f"The test split of {data.name!r} gave no clips.")
  mse, ari_fg = mse / count, ari_fg / count
  step = int(state.step)
  result = {
      "step": step, "observed": observed, "predicted": predicted,
      "num_videos": count,
      "mse_observed": float(mse[:observed].mean()),
      "ari_fg_observed": float(ari_fg[:observed].mean()),
      # Prediction step p = 1..predicted: frame observed + p - 1.
      "mse_by_step": [float(v) for v in mse[observed:]],
      "ari_fg_by_step": [float(v) for v in ari_fg[observed:]],
  }
  folder = os.path.join(workdir, "eval")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f"prediction_{step}.json"), "w",
            encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  video, out = first
  strip = video_viz.strip(video, out.recon, {"masks": out.masks}, out.masks,
                          out.components, None, max_frames=length)
  grids.save_png(os.path.join(folder, f"prediction_{step}.png"), strip)
  return result


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--observed", type=int, default=20)
  parser.add_argument("--predicted", type=int, default=10)
  parser.add_argument("--num_videos", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=8)
  args = parser.parse_args(argv)
  r = predict(args.workdir, observed=args.observed, predicted=args.predicted,
              num_videos=args.num_videos, batch_size=args.batch_size)
  print(f"step {r['step']}: {r['num_videos']} clips, {r['observed']} frames "
        f"seen (MSE {r['mse_observed']:.5f}, ARI-FG "
        f"{r['ari_fg_observed']:.4f})")
  print("prediction step | MSE | ARI-FG")
  for p, (m, a) in enumerate(zip(r["mse_by_step"], r["ari_fg_by_step"]), 1):
    print(f"{p:15d} | {m:.5f} | {a:.4f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
