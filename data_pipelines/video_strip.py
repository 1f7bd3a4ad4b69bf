r"""Renders video batches as a PNG strip: frames over their track-id masks.

  python -m data_pipelines.video_strip --dataset=NAME --out=strip.png
      [--split=train] [--num_videos=2] [--num_frames=10] [--data_dir=DIR]
      [--preset=P] [--set field=value ...] [--seed=0] [--scale=2]

`render_video_strip(batch, path)` is the library entry point (also used by
``data_pipelines.inspect``): for each video, one row of frames, then one row
per id map (``segmentation`` and any ``extra_rows``) painted with
`data_pipelines.palette`, so a track keeps its colour over time and id 0 is
black.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, Sequence

import numpy as np

import data_pipelines
from data_pipelines.palette import labels_to_rgb


def strip_image(batch: Mapping[str, Any], *, max_videos: int = 4,
                max_frames: int = 10,
                extra_rows: Mapping[str, Any] | None = None,
                gap: int = 2) -> np.ndarray:
  """The strip as uint8 [rows * H + gaps, frames * W + gaps, 3]."""
  video = np.asarray(batch["video"])
  if video.ndim != 5 or video.shape[-1] != 3:
    raise ValueError(f"batch['video'] must be [B, T, H, W, 3]; got "
                     f"{video.shape}.")
  _, t, h, w, _ = video.shape
  t = min(t, max_frames)
  maps = []
  if "segmentation" in batch:
    maps.append(np.asarray(batch["segmentation"]))
  maps += [np.asarray(v) for v in (extra_rows or {}).values()]
  for m in maps:
    if m.shape[:4] != video.shape[:4]:
      raise ValueError(f"id map of shape {m.shape} does not match the video "
                       f"{video.shape[:4]}.")
  keep = np.arange(len(video))
  if "valid" in batch:  # Padding rows of evaluation batches.
    keep = keep[np.asarray(batch["valid"], bool)]
  rows = []
  for i in keep[:max_videos]:
    frames = video[i, :t]
    if frames.dtype != np.uint8:
      frames = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)
    rows.append(frames)
    for m in maps:
      rows.append(labels_to_rgb(m[i, :t]))
  if not rows:
    raise ValueError("The batch has no valid video to draw.")
  height = len(rows) * h + (len(rows) - 1) * gap
  width = t * w + (t - 1) * gap
  out = np.full((height, width, 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for j in range(t):
      y, x = r * (h + gap), j * (w + gap)
      out[y:y + h, x:x + w] = row[j]
  return out


def render_video_strip(batch: Mapping[str, Any], path: str, *,
                       max_videos: int = 4, max_frames: int = 10,
                       scale: int = 2,
                       extra_rows: Mapping[str, Any] | None = None) -> str:
  """Writes a PNG of ``batch['video']`` over its id maps; returns the path.

  Args:
    batch: ``video`` [B, T, H, W, 3] (float in [0, 1] or uint8), optional
      ``segmentation`` [B, T, H, W] int (track ids).
    path: output PNG.
    max_videos, max_frames: how much of the batch to show.
    scale: nearest-neighbour upscaling factor.
    extra_rows: more id maps [B, T, H, W] to draw under each video, e.g. a
      model's ``argmax`` over slots.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = strip_image(batch, max_videos=max_videos, max_frames=max_frames,
                      extra_rows=extra_rows)
  img = Image.fromarray(image)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  img.save(path)
  return path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m data_pipelines.video_strip",
      description="Render the first videos of a dataset with their masks.")
  parser.add_argument("--dataset", required=True)
  parser.add_argument("--out", default="video_strip.png")
  parser.add_argument("--split", default="train")
  parser.add_argument("--num_videos", type=int, default=2)
  parser.add_argument("--num_frames", type=int, default=10)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--preset", default="")
  parser.add_argument("--set", action="append", default=[],
                      metavar="FIELD=VALUE")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--scale", type=int, default=2)
  args = parser.parse_args(argv)
  config = data_pipelines.dataset_config(
      args.dataset, preset=args.preset, data_dir=args.data_dir,
      overrides=args.set)
  ds = data_pipelines.get_dataset(
      config, args.split, batch_size=args.num_videos, seed=args.seed,
      process_index=0, process_count=1, repeat=False)
  batch = next(data_pipelines.iterate(ds))
  render_video_strip(batch, args.out, max_videos=args.num_videos,
                     max_frames=args.num_frames, scale=args.scale)
  shapes = ", ".join(f"{k} {v.shape}" for k, v in sorted(batch.items()))
  print(f"Wrote {args.out} ({shapes}).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
