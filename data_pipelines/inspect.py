r"""Shows what a dataset yields: counts, shapes and a grid of examples.

  python -m data_pipelines.inspect --dataset=NAME [--data_dir=DIR]
      [--out=grid.png] [--split=train] [--num=8] [--seed=0] [--variant=V]
      [--preset=P] [--set field=value ...] [--shuffle] [--scale=N]

Prints the number of examples of every split and the shapes, dtypes and
value ranges of one batch, and writes a PNG grid: the images on the first
row, their ground-truth segmentations (0 = background in black, a fixed
colour per id: `data_pipelines.palette`) on the second and an overlay on the
third. Works for every dataset in ``data_pipelines.DATASETS``, the procedural
ones included (no ``--data_dir``); video datasets are drawn by
``data_pipelines.video_strip.render_video_strip``. The config is
`data_pipelines.dataset_config`'s.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, Sequence

import numpy as np

import data_pipelines
from data_pipelines import video_strip
from data_pipelines.palette import labels_to_rgb


def split_counts(config: Any) -> dict[str, str]:
  """``{split: count or 'n/a (reason)'}`` for every split."""
  out = {}
  for split in data_pipelines.SPLITS:
    try:
      out[split] = str(data_pipelines.num_examples(config, split))
    except (ValueError, FileNotFoundError) as e:
      out[split] = f"n/a ({str(e).splitlines()[0]})"
  return out


def describe(batch: Mapping[str, np.ndarray]) -> list[str]:
  """One line per field: dtype, shape, range or labels."""
  lines = []
  for key in sorted(batch):
    v = np.asarray(batch[key])
    line = f"  {key}: {v.dtype} {tuple(v.shape)}"
    if v.size and v.dtype.kind == "f":
      line += f" range [{v.min():.3f}, {v.max():.3f}]"
    elif v.size and v.dtype.kind in "iu":
      ids = np.unique(v)
      shown = ", ".join(str(i) for i in ids[:16])
      line += f" ids {{{shown}{', ...' if len(ids) > 16 else ''}}}"
    elif v.dtype == bool:
      line += f" ({int(v.sum())} true)"
    lines.append(line)
  return lines


def grid_image(batch: Mapping[str, np.ndarray], *, num: int = 8,
               scale: int = 1, gap: int = 2) -> np.ndarray:
  """uint8 grid: images, segmentations, overlays (rows) x examples."""
  images = np.asarray(batch["image"])
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"batch['image'] must be [B, H, W, 3]; got "
                     f"{images.shape}.")
  keep = np.arange(len(images))
  if "valid" in batch:
    keep = keep[np.asarray(batch["valid"], bool)]
  keep = keep[:num]
  images = np.round(np.clip(images[keep], 0, 1) * 255).astype(np.uint8)
  rows = [images]
  if "segmentation" in batch:
    seg = np.asarray(batch["segmentation"])[keep]
    colours = labels_to_rgb(seg)
    rows.append(colours)
    overlay = np.where(seg[..., None] > 0,
                       images // 2 + colours // 2, images)
    rows.append(overlay.astype(np.uint8))
  b, h, w = images.shape[:3]
  if scale > 1:
    rows = [r.repeat(scale, 1).repeat(scale, 2) for r in rows]
    h, w = h * scale, w * scale
  out = np.full((len(rows) * (h + gap) - gap, max(b, 1) * (w + gap) - gap,
                 3), 255, np.uint8)
  for r, row in enumerate(rows):
    for i in range(b):
      out[r * (h + gap):r * (h + gap) + h, i * (w + gap):i * (w + gap) + w] = (
          row[i])
  return out


def write_grid(batch: Mapping[str, np.ndarray], path: str, *, num: int = 8,
               scale: int | None = None) -> str:
  """Writes the grid of an image batch, or a video strip; returns ``path``."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if "video" in batch:
    return video_strip.render_video_strip(batch, path, max_videos=num)
  if "image" not in batch:
    raise ValueError(f"The batch has neither 'image' nor 'video' (fields: "
                     f"{sorted(batch)}).")
  if scale is None:  # At least ~96 pixels per example.
    scale = max(1, 96 // np.asarray(batch["image"]).shape[1])
  Image.fromarray(grid_image(batch, num=num, scale=scale)).save(path)
  return path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m data_pipelines.inspect",
      description="Counts, shapes and a grid of a dataset's examples with "
      "their ground-truth segmentations.")
  names = ", ".join(sorted(data_pipelines.DATASETS))
  parser.add_argument("--dataset", required=True, help=f"one of {names}")
  parser.add_argument("--data_dir", default=None,
                      help="folder with the published files (real datasets)")
  parser.add_argument("--out", default="grid.png", help="PNG to write")
  parser.add_argument("--split", default="train",
                      choices=data_pipelines.SPLITS)
  parser.add_argument("--num", type=int, default=8, help="examples shown")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--variant", default=None)
  parser.add_argument("--preset", default="")
  parser.add_argument("--set", action="append", default=[],
                      metavar="FIELD=VALUE", help="override a data field")
  parser.add_argument("--shuffle", action="store_true",
                      help="show the shuffled training stream (repeat=True) "
                      "instead of the split in order")
  parser.add_argument("--scale", type=int, default=None,
                      help="upscaling factor of the grid")
  args = parser.parse_args(argv)
  try:
    config = data_pipelines.dataset_config(
        args.dataset, preset=args.preset, variant=args.variant,
        data_dir=args.data_dir, overrides=args.set)
    print(f"Dataset {args.dataset!r} "
          f"({data_pipelines.DATASETS[args.dataset]})"
          + (f" from {config.data_dir}" if config.get("data_dir") else ""))
    for split, count in split_counts(config).items():
      print(f"  {split}: {count}")
    ds = data_pipelines.get_dataset(
        config, args.split, batch_size=args.num, seed=args.seed,
        process_index=0, process_count=1, repeat=args.shuffle)
    batch = next(data_pipelines.iterate(ds), None)
    if batch is None:
      raise ValueError(f"Split {args.split!r} yielded no batch.")
    print(f"One batch of split {args.split!r}:")
    print("\n".join(describe(batch)))
    path = write_grid(batch, args.out, num=args.num, scale=args.scale)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Wrote {path}: " + ("video strip" if "video" in batch else
                             "images / ground-truth segmentations / overlay"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
