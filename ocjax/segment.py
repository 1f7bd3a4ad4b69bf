r"""Apply a trained model to your own images.

    python -m ocjax.segment --workdir=DIR --input=PATH [--output=OUT] \
        [--step=S] [--batch_size=16] [--eval_mode=MODE] [--clip_length=N]

``PATH`` is an image file or a folder of them (png, jpg, jpeg, bmp, gif,
tif, tiff, webp; not recursive), of any size. Each image is cropped and
resized as the run's training data was (`data_pipelines.preprocessing_for`,
from the dataset's module: a centre crop of the dataset's proportions, then
a resize to the model's resolution with the dataset's filter), and the model
reads the images in fixed-size batches through one jit-compiled function in
one of its evaluation modes (default: its first, e.g. fixed K). ``OUT`` (default ``DIR/segment/<name of
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

A video model (``input_key = "video"``) reads ``PATH`` as one video: a
video file (mp4, avi, mov, mkv, webm, m4v; decoded by imageio-ffmpeg) or a
folder of frames in name order, each frame preprocessed as above. The model
decomposes it as one clip (``--clip_length=N``: clips of N frames, slot
identities restarting with each), and ``OUT`` receives

* ``frames/input_NNNN.png``, ``frames/segmentation_NNNN.png`` (indexed, pixel
  value = slot index = track id: a tracked object keeps its colour) and
  ``frames/overlay_NNNN.png`` per frame;
* ``tracks.gif``: the input and the overlay side by side over time;
* ``tracks.npz``: ``masks`` ``[T, K, H, W]``, ``segmentation`` ``[T, H, W]``,
  ``latents`` ``[T, K, L]``, ``recon`` and where the model has them
  ``z_pres`` and ``boxes``;
* ``segment.json``: the sources, the preprocessing, and per slot (track) the
  frames it is present in and its mean area.
"""

from __future__ import annotations

import argparse
import dataclasses
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

import data_pipelines
from data_pipelines import palette as palette_lib
from data_pipelines import preprocess as preprocess_lib
from ocjax import run as run_lib
from ocjax.train import checkpoint
from ocjax.viz import grids
# pylint: enable=g-import-not-at-top,wrong-import-position

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif",
                    ".tiff", ".webp")
# Model extras written to the .npz when ``ModelOutput.aux`` has them.
_AUX_KEYS = {"mu": "latent_mean", "sigma": "latent_std",
             "positions": "positions", "presence": "presence",
             "num_slots_used": "num_slots_used"}
Preprocess = preprocess_lib.Preprocess
# Images with a shorter side below this are segmented with a warning.
MIN_SIDE = 8


class SegmentError(RuntimeError):
  """The input or the run cannot be used as asked."""


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
def make_predict(run: run_lib.Run, mode: str):
  """Jitted ``(variables, images [B, S, S, 3]) -> per-image outputs``."""
  apply = run.model_fn("eval", mode)

  @run.jit
  def predict(variables, images):
    out = apply(variables, {"image": images})
    res = {"masks": out.masks, "latents": out.latents,
           "segmentations": out.segmentations}
    for k in _AUX_KEYS:
      if k in out.aux:
        res[f"aux/{k}"] = out.aux[k]
    return res

  return predict


# ----------------------------------------------------------------- outputs
def _palette_bytes() -> list[int]:
  # Slot k has the colour of label k + 1, as in the figures' mask colouring.
  return palette_lib.palette(257)[1:].reshape(-1).tolist()


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


# ------------------------------------------------------------------ videos
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def read_video(path: str) -> np.ndarray:
  """uint8 RGB frames ``[T, H, W, 3]`` of a video file (ffmpeg, from the
  ``imageio-ffmpeg`` wheel)."""
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SegmentError("Reading video files needs imageio-ffmpeg (pip "
                       "install imageio-ffmpeg), or give a folder of "
                       "frames.") from e
  try:
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
  except Exception as e:  # pylint: disable=broad-except
    raise SegmentError(f"Cannot read video {path!r}: {type(e).__name__}: "
                       f"{e}") from e
  if not frames:
    raise SegmentError(f"Video {path!r} has no frames.")
  return np.stack(frames)


def video_frames(path: str) -> tuple[list[np.ndarray], list[str]]:
  """The frames of a video file, or of a folder of images (in name
  order); returns (frames, their sources)."""
  if os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS):
    frames = read_video(path)
    return list(frames), [f"{path}#{t}" for t in range(len(frames))]
  files = list_images(path)
  return [read_image(f) for f in files], files


def _clip_predict(run: run_lib.Run, mode: str):
  apply = run.model_fn("eval", mode)

  @run.jit
  def predict(variables, video):
    out = apply(variables, {"video": video})
    res = {"masks": out.masks, "latents": out.latents, "recon": out.recon}
    for k in ("z_pres", "boxes"):
      if k in out.aux:
        res[f"aux/{k}"] = out.aux[k]
    return res

  return predict


def segment_video(run: run_lib.Run, state, input_path: str, output: str, *,
                  eval_mode: str, clip_length: int = 0) -> dict[str, Any]:
  """Decomposes and tracks a video (a file or a folder of frames) with a
  video model; see `segment` for the files written."""
  model, config = run.model, run.config
  frames, sources = video_frames(input_path)
  size = int(model.dummy_batch(1)["video"].shape[2])
  prep = data_pipelines.preprocessing_for(config.data)
  if prep.size != size:
    prep = dataclasses.replace(prep, size=size)
  video = np.stack([prep(f)[0] for f in frames]).astype(np.float32)
  t_total = len(video)
  clip = t_total if clip_length <= 0 else int(clip_length)
  predict = _clip_predict(run, eval_mode)
  params = state.variables()
  parts = []
  for start in range(0, t_total, clip):
    x = video[start:start + clip]
    parts.append(jax.device_get(predict(params, x[None])))
  res = {k: np.concatenate([p[k][0] for p in parts], 0) for k in parts[0]}
  masks = res["masks"][..., 0].astype(np.float32)  # [T, K, H, W]
  labels = np.argmax(masks, axis=1).astype(np.uint8)  # [T, H, W]
  k = masks.shape[1]
  os.makedirs(os.path.join(output, "frames"), exist_ok=True)
  overlays = []
  for t in range(t_total):
    rgb = grids.to_uint8(video[t])
    seg = Image.fromarray(labels[t])
    seg.putpalette(_palette_bytes())
    seg.save(os.path.join(output, "frames", f"segmentation_{t:04d}.png"))
    Image.fromarray(rgb).save(os.path.join(output, "frames",
                                           f"input_{t:04d}.png"))
    colours = grids.labels_to_rgb(labels[t].astype(np.int64) + 1)
    overlay = (0.5 * rgb + 0.5 * colours).round().astype(np.uint8)
    Image.fromarray(overlay).save(os.path.join(output, "frames",
                                               f"overlay_{t:04d}.png"))
    overlays.append(np.concatenate([rgb, overlay], axis=1))
  from ocjax.viz import video as video_viz  # pylint: disable=g-import-not-at-top
  video_viz.save_gif(os.path.join(output, "tracks.gif"), overlays)
  arrays = {"masks": masks, "segmentation": labels.astype(np.int32),
            "latents": res["latents"].astype(np.float32),
            "recon": res["recon"].astype(np.float32)}
  for key in ("z_pres", "boxes"):
    if f"aux/{key}" in res:
      arrays[key] = res[f"aux/{key}"]
  np.savez(os.path.join(output, "tracks.npz"), **arrays)
  tracks = []
  for s in range(k):
    area = (labels == s).reshape(t_total, -1).sum(1)
    present = np.flatnonzero(area)
    tracks.append({"slot": s, "frames_present": int(present.size),
                   "first_frame": int(present[0]) if present.size else None,
                   "last_frame": int(present[-1]) if present.size else None,
                   "mean_area": float(area[present].mean())
                   if present.size else 0.0})
  return {"sources": sources, "num_frames": t_total, "clip_length": clip,
          "num_slots": k, "tracks": tracks,
          "preprocessing": prep.description, "resize": prep.resize,
          "crop_fraction": prep.crop_fraction, "image_size": size}


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
    if min(raw.shape[:2]) < MIN_SIDE:
      print(f"warning: {path} is only {raw.shape[1]}x{raw.shape[0]} pixels; "
            f"it is upscaled to {prep.size}x{prep.size} and its segmentation "
            "will say little.", file=sys.stderr)
    batch.append({"path": path, "image": image, "raw_size": raw.shape[:2],
                  "box": box})
    if len(batch) == batch_size:
      yield batch
      batch = []
  if batch:
    yield batch


def segment(workdir: str, input_path: str, output: str | None = None, *,
            step: int | None = None, batch_size: int = 16,
            eval_mode: str | None = None,
            clip_length: int = 0) -> dict[str, Any]:
  """Segments the image(s) at ``input_path``, or for a video model tracks
  the video there; returns the run summary.

  Args:
    workdir: a training run (``config.json`` and ``checkpoints/``).
    input_path: an image file or a folder of images.
    output: output folder (default ``workdir/segment/<name of input>``).
    step: checkpoint step (default: the latest).
    batch_size: images per compiled call (the last batch is padded).
    eval_mode: one of the model's evaluation modes (default: its first).
    clip_length: video models: frames per call (0: the whole video as one
      clip; slot identities restart with each clip).

  Raises:
    SegmentError: no images, a single unreadable image, or none readable.
  """
  if batch_size < 1:
    raise SegmentError(f"--batch_size={batch_size}; expected >= 1.")
  run, state = run_lib.restore(workdir, step)
  config, model = run.config, run.model
  step = int(state.step)
  modes = list(model.eval_modes)
  eval_mode = eval_mode or modes[0]
  if eval_mode not in modes:
    raise SegmentError(f"--eval_mode={eval_mode}: model "
                       f"{config.model.name!r} has the modes {modes}.")
  name = os.path.basename(os.path.normpath(input_path))
  if os.path.isfile(input_path):
    name = os.path.splitext(name)[0]
  output = output or os.path.join(workdir, "segment", name)
  if os.path.exists(output) and not os.path.isdir(output):
    raise SegmentError(f"--output={output} is a file; name a folder (it is "
                       "created if missing).")
  if model.input_key == "video":
    if clip_length < 0:
      raise SegmentError(f"--clip_length={clip_length}; expected >= 0.")
    summary = segment_video(run, state, input_path, output,
                            eval_mode=eval_mode, clip_length=clip_length)
    summary.update({"workdir": os.path.abspath(workdir), "step": step,
                    "output": os.path.abspath(output),
                    "model": str(config.model.name),
                    "dataset": str(config.data.name), "eval_mode": eval_mode,
                    "num_images": summary["num_frames"], "errors": []})
    with open(os.path.join(output, "segment.json"), "w",
              encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
    return summary
  size = int(model.dummy_batch(1)["image"].shape[1])
  prep = data_pipelines.preprocessing_for(config.data)
  if prep.size != size:
    prep = dataclasses.replace(prep, size=size)
  files = list_images(input_path)
  predict = make_predict(run, eval_mode)
  params = state.variables()
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
              "model_size": [s, s], "step": step, "eval_mode": eval_mode}
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
         "eval_mode": eval_mode, "num_images": len(images), "images": images,
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
  parser.add_argument("--clip_length", type=int, default=0,
                      help="Video models: frames per call (0: the whole "
                      "video; identities restart with each clip).")
  parser.add_argument("--eval_mode", default=None,
                      help="One of the model's evaluation modes (e.g. fixed "
                      "or flexible K); default: its first.")
  args = parser.parse_args(argv)
  try:
    run = segment(args.workdir, args.input, args.output, step=args.step,
                  batch_size=args.batch_size, eval_mode=args.eval_mode,
                  clip_length=args.clip_length)
  except (SegmentError, FileNotFoundError, ValueError,
          checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if "tracks" in run:
    print(f"Tracked {run['num_frames']} frame(s) with step {run['step']} "
          f"({run['preprocessing']}); wrote {run['output']}/ (tracks.gif, "
          "frames/, tracks.npz).")
    return 0
  print(f"Segmented {run['num_images']} image(s) with step {run['step']} "
        f"({run['preprocessing']}); wrote {run['output']}/"
        + (f"; {len(run['errors'])} file(s) could not be read."
           if run["errors"] else "."))
  return 0


def console() -> None:
  """The ``ocjax-segment`` console script."""
  sys.exit(main())


if __name__ == "__main__":
  sys.exit(main())
