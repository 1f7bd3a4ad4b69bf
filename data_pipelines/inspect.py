r"""Shows what a dataset yields: counts, shapes and a grid of examples.

  python -m data_pipelines.inspect --dataset=NAME [--data_dir=DIR]
      [--out=grid.png] [--split=train] [--num=8] [--seed=0] [--variant=V]
      [--set field=value ...] [--shuffle] [--scale=N]

Prints the number of examples of every split and the shapes, dtypes and
value ranges of one batch, and writes a PNG grid: the images on the first
row, their ground-truth segmentations (0 = background in black, a fixed
colour per id) on the second and an overlay on the third. Works for every
dataset in ``data_pipelines.DATASETS``, the procedural ones included (no
``--data_dir``); video datasets are drawn by
``data_pipelines.video_strip.render_video_strip``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

import data_pipelines
from data_pipelines import image_common


def palette(n: int = 256) -> np.ndarray:
  """``[n, 3]`` uint8: black for 0, then well-separated colours."""
  base = np.array([
      [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
      [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
      [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
      [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195],
      [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]],
                  np.uint8)
  reps = -(-(n - 1) // len(base))
  return np.concatenate([np.zeros((1, 3), np.uint8),
                         np.tile(base, (reps, 1))[:n - 1]], 0)


def dataset_config(name: str, *, data_dir: str | None = None,
                   variant: str | None = None,
                   overrides: Sequence[str] = ()) -> Any:
  """The module's default ``data`` config for ``name``, then overrides."""
  if name not in data_pipelines.DATASETS:
    raise ValueError(
        f"Unknown dataset {name!r}. Known datasets: "
        f"{', '.join(sorted(data_pipelines.DATASETS))}.")
  module = importlib.import_module(data_pipelines.DATASETS[name])
  if hasattr(module, "default_config"):
    config = module.default_config()
  else:
    config = ml_collections.ConfigDict({"name": name, "data_dir": ""})
  config.name = name  # Modules serving several names.
  if data_dir is not None:
    if "data_dir" not in config:
      raise ValueError(f"{name} takes no data_dir.")
    config.data_dir = data_dir
  if variant is not None:
    if "variant" not in config:
      raise ValueError(f"{name} has no variants (no field data.variant).")
    config.variant = variant
  for item in overrides:
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("data.")
    if not sep or key not in config:
      raise ValueError(
          f"Override {item!r}: expected field=value with a field of the "
          f"{name} config ({', '.join(sorted(config))}).")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    old = config[key]
    if isinstance(old, str):
      value = raw
    elif isinstance(old, float) and isinstance(value, int):
      value = float(value)
    elif isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    config[key] = value
  return config


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
    pal = palette()
    colours = pal[np.clip(seg, 0, len(pal) - 1)]
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
    try:
      video_strip = importlib.import_module("data_pipelines.video_strip")
    except ImportError as e:
      raise RuntimeError(
          "This is a video dataset; drawing it needs "
          "data_pipelines.video_strip.render_video_strip, which this "
          f"checkout lacks ({e}).") from None
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
  parser.add_argument("--set", action="append", default=[],
                      metavar="FIELD=VALUE", help="override a data field")
  parser.add_argument("--shuffle", action="store_true",
                      help="show the shuffled training stream (repeat=True) "
                      "instead of the split in order")
  parser.add_argument("--scale", type=int, default=None,
                      help="upscaling factor of the grid")
  args = parser.parse_args(argv)
  try:
    config = dataset_config(args.dataset, data_dir=args.data_dir,
                            variant=args.variant, overrides=args.set)
    print(f"Dataset {args.dataset!r} "
          f"({data_pipelines.DATASETS[args.dataset]})"
          + (f" from {config.data_dir}" if config.get("data_dir") else ""))
    for split, count in split_counts(config).items():
      print(f"  {split}: {count}")
    ds = data_pipelines.get_dataset(
        config, args.split, batch_size=args.num, seed=args.seed,
        process_index=0, process_count=1, repeat=args.shuffle)
    batch = next(image_common.iterate(ds), None)
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
