r"""Apply a trained model to your own images.

    python -m ocjax.segment --workdir=DIR --input=PATH [--output=OUT] \
        [--step=S] [--batch_size=16] [--flexible=auto|true|false]

``PATH`` is an image file or a folder of them (png, jpg, jpeg, bmp, gif,
tif, tiff, webp; not recursive), of any size. Each image is cropped and
resized as the run's training data was (`preprocessing_for`: a centre crop
of the dataset's proportions, then a resize to the model's resolution with
the dataset's filter), and the model reads the images in fixed-size batches
through one jit-compiled function. ``OUT`` (default ``DIR/segment/<name of
PATH>``) receives, per image, a folder ``OUT/<image stem>/`` with

* ``input.png``: the image as the model saw it;
* ``segmentation.png``: the segmentation (argmax over the slots' masks) as
  an indexed PNG, pixel value = slot index, palette = `ocjax.viz.grids`;
* ``overlay.png``: the segmentation's colours over the input;
* ``object_<k>.png``: one RGBA crop per non-empty slot (alpha = its soft
  mask, cropped to the bounding box of its pixels);
* ``latents.npz``: ``latents`` ``[K, L]`` (the slots' latents as the model
  used them), ``masks`` ``[K, H, W]``, ``segmentation`` ``[H, W]``, every
  exposed segmentation (``segmentation_<name>``), and where the model has
  them ``latent_mean``/``latent_std`` (posterior), ``positions``,
  ``presence`` and ``num_slots_used``;
* ``summary.json``: the source, the crop box in its pixels, and per slot its
  area, bounding box and crop file;

plus ``OUT/segment.json`` listing every image, the preprocessing applied
and the files that could not be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import time
from typing import Any, Iterator, Sequence

# Before TensorFlow is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np
from PIL import Image
from PIL import ImageOps

from data_pipelines import image_common
from data_pipelines import multi_object
from data_pipelines import shapestacks
from ocjax.eval import runner
from ocjax.train import checkpoint
from ocjax.train import loop
from ocjax.train import mesh as mesh_lib
from ocjax.train import step as step_lib
from ocjax.viz import grids
# pylint: enable=g-import-not-at-top,wrong-import-position

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif",
                    ".tiff", ".webp")
# Model extras written to the .npz when ``ModelOutput.aux`` has them.
_AUX_KEYS = {"mu": "latent_mean", "sigma": "latent_std",
             "positions": "positions", "presence": "presence",
             "num_slots_used": "num_slots_used"}


class SegmentError(RuntimeError):
  """The input or the run cannot be used as asked."""


# ------------------------------------------------------------ preprocessing
@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Centre crop (a fraction of the shorter side), then a square resize.

  Attributes:
    size: output height = width (the model's resolution).
    crop_fraction: side of the square centre crop over the shorter side.
    resize: "bilinear" (PIL, antialiased), "nearest_torch" (PyTorch's
      ``F.interpolate`` rule) or "nearest_pil".
    description: what is done, in words (for the JSON summary).
  """
  size: int
  crop_fraction: float = 1.0
  resize: str = "bilinear"
  description: str = ""

  def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, side, side)`` of the centre crop."""
    side = max(1, min(height, width,
                      int(self.crop_fraction * min(height, width))))
    return (height - side) // 2, (width - side) // 2, side, side

  def __call__(self, image: np.ndarray):
    """uint8 ``[H, W, 3]`` -> (float32 ``[S, S, 3]`` in [0, 1], crop box)."""
    top, left, h, w = self.crop_box(*image.shape[:2])
    crop = image[top:top + h, left:left + w]
    s = self.size
    if (h, w) != (s, s):
      if self.resize == "nearest_torch":
        rows = image_common.torch_nearest_indices(h, s)
        cols = image_common.torch_nearest_indices(w, s)
        crop = crop[rows][:, cols]
      else:
        method = {"bilinear": Image.BILINEAR,
                  "nearest_pil": Image.NEAREST}[self.resize]
        crop = np.asarray(Image.fromarray(crop).resize((s, s), method))
    return crop.astype(np.float32) / 255.0, (top, left, h, w)


def preprocessing_for(data: Any) -> Preprocess:
  """The crop and resize of the run's dataset, for images of any size.

  The dataset modules crop their own files at fixed pixel sizes; here the
  same crop is taken as a fraction of the shorter side, so an image shaped
  like the dataset's is cropped as the dataset was. Datasets without a crop
  of their own (and unknown ones) get a centre crop to a square.
  """
  name, size = str(data.name), int(data.image_size)

  def get(field, default):
    return data.get(field, default) if hasattr(data, "get") else default

  square = (f"centre crop to a square (no-op for square images), then "
            f"resize to {size}x{size}")
  if name == "sprites":
    return Preprocess(size, 1.0, "bilinear",
                      f"sprites (procedural, square): {square} (bilinear)")
  if name in ("objects_room", "clevr_with_masks", "multi_dsprites",
              "tetrominoes"):
    variant = get("variant", "") or multi_object.DEFAULT_VARIANT[name]
    raw = multi_object.VARIANTS.get((name, variant),
                                    multi_object.VARIANTS[
                                        (name, multi_object.DEFAULT_VARIANT[
                                            name])]).image_size
    crop = int(get("crop_size", -1))
    if crop == -1:
      crop = multi_object.GENESIS_CROP.get(name, 0)
    method = str(get("resize_method", "nearest_torch"))
    if crop:
      frac = crop / min(raw)
      text = (f"{name}: centre crop of {frac:.3g} x the shorter side (as "
              f"{crop} of {raw[0]}x{raw[1]}), then resize to {size}x{size} "
              f"({method})")
    else:
      frac, text = 1.0, f"{name}: {square} ({method})"
    return Preprocess(size, frac, method, text)
  if name == "shapestacks":
    crop = int(get("crop_size", 196))
    frac = crop / shapestacks.IMAGE_SIZE
    return Preprocess(size, frac, "bilinear", (
        f"shapestacks: centre crop of {frac:.3g} x the shorter side (as "
        f"{crop} of {shapestacks.IMAGE_SIZE}), then resize to {size}x{size} "
        "(bilinear)"))
  if name == "clevrtex":
    frac = float(get("crop_fraction", 0.8))
    return Preprocess(size, frac, "bilinear", (
        f"clevrtex: centre crop of {frac:.3g} x the shorter side, then "
        f"resize to {size}x{size} (bilinear)"))
  if name == "apc":
    return Preprocess(size, 1.0, "bilinear", (
        f"apc: shorter side to {size} and centre crop, i.e. {square} "
        "(bilinear)"))
  if name == "sketchy":
    return Preprocess(size, 1.0, "bilinear", (
        f"sketchy: {square} (bilinear); training used fixed crops of the "
        "front cameras' frames"))
  return Preprocess(size, 1.0, "bilinear", (
      f"{name}: no preprocessing known for this dataset; default: {square} "
      "(bilinear)"))


# ------------------------------------------------------------------ inputs
def list_images(path: str) -> list[str]:
  """The image files named by ``path`` (a file, or a folder's images)."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise SegmentError(f"--input={path!r} is neither a file nor a folder.")
  files = sorted(os.path.join(path, n) for n in os.listdir(path)
                 if n.lower().endswith(IMAGE_EXTENSIONS)
                 and not n.startswith(".")
                 and os.path.isfile(os.path.join(path, n)))
  if not files:
    raise SegmentError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                       f"{path!r}.")
  return files


def read_image(path: str) -> np.ndarray:
  """uint8 RGB ``[H, W, 3]`` (EXIF orientation applied)."""
  try:
    with Image.open(path) as img:
      img.load()
      img = ImageOps.exif_transpose(img)
      if img.mode in ("I;16", "I;16B", "I", "F"):  # 16/32-bit greyscale
        a = np.asarray(img, np.float64)
        a = a / max(float(a.max()), 1.0) * 255.0
        img = Image.fromarray(a.astype(np.uint8))
      rgb = np.asarray(img.convert("RGB"))
  except Exception as e:  # pylint: disable=broad-except
    raise SegmentError(f"Cannot read image {path!r}: "
                       f"{type(e).__name__}: {e}") from e
  if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
    raise SegmentError(f"Cannot read image {path!r}: empty image.")
  return rgb


class _ProgressBar:
  """A one-line progress bar on stderr (only for more than one batch)."""

  def __init__(self, total: int, enabled: bool):
    self.total, self.enabled = total, enabled
    self.t0 = time.monotonic()
    self.tty = sys.stderr.isatty()
    self._last_line = -1.0

  def update(self, done: int) -> None:
    if not self.enabled:
      return
    now = time.monotonic()
    if not self.tty and now - self._last_line < 10 and done < self.total:
      return
    self._last_line = now
    rate = done / max(now - self.t0, 1e-9)
    width = 30
    fill = int(width * done / max(self.total, 1))
    line = (f"[{'=' * fill}{' ' * (width - fill)}] {done}/{self.total} "
            f"images, {rate:.1f}/s")
    end = "\r" if self.tty and done < self.total else "\n"
    print(line, end=end, file=sys.stderr, flush=True)


# ------------------------------------------------------------------- model
def load_run(workdir: str, step: int | None = None):
  """``(config, model, params, step)`` of the run in ``workdir``."""
  config = runner.config_from_workdir(workdir)
  model, objective, tx = loop.build(config)
  size = int(config.model.image_size)
  # Shapes only: the dataset itself need not be present.
  example = {"image": np.zeros((1, size, size, 3), np.float32)}
  checkpointer = loop.make_checkpointer(config, workdir, read_only=True)
  state, _ = loop.init_or_restore(
      config, model, objective, tx, checkpointer, mesh_lib.make_mesh(),
      example, step=-1 if step is None else step, require=True)
  return config, model, state.params, int(state.step)


def make_predict(model, seed: int, flexible: bool):
  """Jitted ``(params, images [B, S, S, 3]) -> per-image outputs``."""
  kwargs = {"flexible": True} if flexible else {}

  @jax.jit
  def predict(params, images):
    key = step_lib.purpose_key(seed, "eval")
    out = model.apply({"params": params}, {"image": images}, train=False,
                      rngs=step_lib.stream_rngs(key), **kwargs)
    res = {"masks": out.masks, "latents": out.latents,
           "segmentations": out.segmentations}
    for k in _AUX_KEYS:
      if k in out.aux:
        res[f"aux/{k}"] = out.aux[k]
    return res

  return predict


def _supports_flexible(model) -> bool:
  return "flexible" in inspect.signature(type(model).__call__).parameters


# ----------------------------------------------------------------- outputs
def _palette_bytes() -> list[int]:
  # Slot k has colour PALETTE[k + 1], as in the figures' mask colouring.
  colours = np.roll(grids.PALETTE, -1, axis=0)
  colours = np.resize(colours, (256, 3))
  return colours.astype(np.uint8).reshape(-1).tolist()


def _unique_stem(path: str, taken: set[str]) -> str:
  base, ext = os.path.splitext(os.path.basename(path))
  stem = base
  if stem in taken:
    stem = f"{base}_{ext.lstrip('.').lower()}"
  i = 2
  while stem in taken:
    stem, i = f"{base}_{i}", i + 1
  taken.add(stem)
  return stem


def write_outputs(folder: str, image: np.ndarray, res: dict[str, Any],
                  info: dict[str, Any]) -> dict[str, Any]:
  """The files of one image (see module doc); returns its summary."""
  os.makedirs(folder, exist_ok=True)
  masks = np.asarray(res["masks"], np.float32)[..., 0]  # [K, H, W]
  k = masks.shape[0]
  labels = np.argmax(masks, axis=0).astype(np.uint8)  # [H, W]
  rgb = grids.to_uint8(image)
  Image.fromarray(rgb).save(os.path.join(folder, "input.png"))
  seg = Image.fromarray(labels)  # "L"; a palette makes it "P"
  seg.putpalette(_palette_bytes())
  seg.save(os.path.join(folder, "segmentation.png"))
  colours = grids.labels_to_rgb(labels.astype(np.int64) + 1)
  overlay = (0.5 * rgb + 0.5 * colours).round().astype(np.uint8)
  Image.fromarray(overlay).save(os.path.join(folder, "overlay.png"))
  slots = []
  for s in range(k):
    ys, xs = np.nonzero(labels == s)
    entry = {"slot": s, "area": int(ys.size),
             "fraction": float(ys.size / labels.size),
             "mask_mass": float(masks[s].sum())}
    if ys.size:
      t, b, l, r = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
      alpha = np.round(np.clip(masks[s], 0, 1) * 255).astype(np.uint8)
      rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)[t:b, l:r]
      name = f"object_{s:02d}.png"
      Image.fromarray(rgba).save(os.path.join(folder, name))
      entry.update(bbox=[int(t), int(l), int(b), int(r)], crop=name)
    slots.append(entry)
  arrays = {"latents": np.asarray(res["latents"], np.float32),
            "masks": masks, "segmentation": labels.astype(np.int32)}
  for name, m in res["segmentations"].items():
    arrays[f"segmentation_{name}"] = np.asarray(m, np.float32)[..., 0]
  for key, out_name in _AUX_KEYS.items():
    if f"aux/{key}" in res:
      arrays[out_name] = np.asarray(res[f"aux/{key}"])
  np.savez(os.path.join(folder, "latents.npz"), **arrays)
  summary = dict(info, num_slots=k, slots=slots,
                 latent_dim=int(arrays["latents"].shape[-1]),
                 files=sorted(os.listdir(folder)) + ["summary.json"])
  if "num_slots_used" in arrays:
    summary["num_slots_used"] = int(arrays["num_slots_used"])
  with open(os.path.join(folder, "summary.json"), "w",
            encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary


# -------------------------------------------------------------------- main
def _batches(files: Sequence[str], prep: Preprocess, batch_size: int,
             errors: list[dict[str, str]]) -> Iterator[list[dict[str, Any]]]:
  """Lists of ``batch_size`` readable images; failures go to ``errors``."""
  batch = []
  for path in files:
    try:
      raw = read_image(path)
    except SegmentError as e:
      print(f"warning: {e}", file=sys.stderr)
      errors.append({"file": path, "error": str(e)})
      continue
    image, box = prep(raw)
    batch.append({"path": path, "image": image, "raw_size": raw.shape[:2],
                  "box": box})
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


def segment(workdir: str, input_path: str, output: str | None = None, *,
            step: int | None = None, batch_size: int = 16,
            flexible: bool | None = None) -> dict[str, Any]:
  """Segments the image(s) at ``input_path``; returns the run summary.

  Args:
    workdir: a training run (``config.json`` and ``checkpoints/``).
    input_path: an image file or a folder of images.
    output: output folder (default ``workdir/segment/<name of input>``).
    step: checkpoint step (default: the latest).
    batch_size: images per compiled call (the last batch is padded).
    flexible: flexible K where the model has it (default: the run's
      ``eval.flexible``).

  Raises:
    SegmentError: no images, a single unreadable image, or none readable.
  """
  files = list_images(input_path)
  if batch_size < 1:
    raise SegmentError(f"--batch_size={batch_size}; expected >= 1.")
  config, model, params, step = load_run(workdir, step)
  prep = preprocessing_for(config.data)
  if prep.size != int(config.model.image_size):
    prep = dataclasses.replace(prep, size=int(config.model.image_size))
  if flexible is None:
    flexible = bool(config.get("eval", {}).get("flexible", False))
  flexible = flexible and _supports_flexible(model)
  predict = make_predict(model, int(config.seed), flexible)
  name = os.path.basename(os.path.normpath(input_path))
  if os.path.isfile(input_path):
    name = os.path.splitext(name)[0]
  output = output or os.path.join(workdir, "segment", name)
  os.makedirs(output, exist_ok=True)

  errors: list[dict[str, str]] = []
  images: list[dict[str, Any]] = []
  taken: set[str] = set()
  bar = _ProgressBar(len(files), enabled=len(files) > batch_size)
  s = prep.size
  for batch in _batches(files, prep, batch_size, errors):
    x = np.zeros((batch_size, s, s, 3), np.float32)  # padded to one shape
    for i, item in enumerate(batch):
      x[i] = item["image"]
    res = jax.device_get(predict(params, x))
    for i, item in enumerate(batch):
      row = jax.tree.map(lambda a, i=i: a[i], res)
      stem = _unique_stem(item["path"], taken)
      top, left, h, w = item["box"]
      info = {"source": os.path.abspath(item["path"]),
              "original_size": [int(v) for v in item["raw_size"]],
              "crop_box": {"top": top, "left": left, "height": h,
                           "width": w},
              "model_size": [s, s], "step": step, "flexible": flexible}
      summary = write_outputs(os.path.join(output, stem), item["image"],
                              row, info)
      images.append({"source": info["source"], "output": stem,
                     "num_slots_used": summary.get("num_slots_used"),
                     "objects": sum(1 for e in summary["slots"]
                                    if e["area"])})
    bar.update(len(images) + len(errors))
  if not images:
    if len(files) == 1:
      raise SegmentError(errors[0]["error"])
    raise SegmentError(f"None of the {len(files)} image files in "
                       f"{input_path!r} could be read (first: "
                       f"{errors[0]['error']}).")
  run = {"workdir": os.path.abspath(workdir), "step": step,
         "output": os.path.abspath(output),
         "model": str(config.model.name), "dataset": str(config.data.name),
         "preprocessing": prep.description, "resize": prep.resize,
         "crop_fraction": prep.crop_fraction, "image_size": s,
         "flexible": flexible, "num_images": len(images), "images": images,
         "errors": errors}
  with open(os.path.join(output, "segment.json"), "w",
            encoding="utf-8") as f:
    json.dump(run, f, indent=2)
  return run


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ocjax.segment",
      description="Segment your own images with a trained run.")
  parser.add_argument("--workdir", required=True, help="The training run.")
  parser.add_argument("--input", required=True,
                      help="An image file or a folder of images.")
  parser.add_argument("--output", default=None, help="Output folder "
                      "(default: WORKDIR/segment/<name of input>).")
  parser.add_argument("--step", type=int, default=None,
                      help="Checkpoint step (default: the latest).")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--flexible", default="auto",
                      choices=("auto", "true", "false"),
                      help="Flexible K (models that have it); auto: the "
                      "run's eval.flexible.")
  args = parser.parse_args(argv)
  flexible = {"auto": None, "true": True, "false": False}[args.flexible]
  try:
    run = segment(args.workdir, args.input, args.output, step=args.step,
                  batch_size=args.batch_size, flexible=flexible)
  except (SegmentError, FileNotFoundError, ValueError,
          checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Segmented {run['num_images']} image(s) with step {run['step']} "
        f"({run['preprocessing']}); wrote {run['output']}/"
        + (f"; {len(run['errors'])} file(s) could not be read."
           if run["errors"] else "."))
  return 0


if __name__ == "__main__":
  sys.exit(main())
