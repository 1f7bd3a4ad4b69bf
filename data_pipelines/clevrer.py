"""CLEVRER videos read from ``data.data_dir``, pre-processed as paper 004.

Layout of the published files (Yi et al. 2020, clevrer.csail.mit.edu)::

  video_train/video_00000-01000/video_00000.mp4         480x320, 128 frames
  video_validation/video_10000-11000/video_10000.mp4
  annotation_train/annotation_00000-01000/annotation_00000.json
  annotation_validation/annotation_10000-11000/annotation_10000.json

Annotations (``object_property``: ``object_id``, ``color``, ``material``,
``shape``; ``motion_trajectory``: per frame, per object ``location``,
``velocity``, ``inside_camera_view``) hold no masks. Ground-truth masks are
read from ``data.mask_dir`` in the layout of CLEVRER's derendered object
proposals: ``sim_XXXXX.json`` with ``frames[i].frame_index`` and
``frames[i].objects[j]`` = ``{mask: {size: [320, 480], counts: <COCO RLE>},
color, material, shape, score}``. An object's track id is its annotation
``object_id + 1``, found by its (colour, material, shape), which are unique
within a CLEVRER video.

Pre-processing of paper 004 (App. B): crop ``crop_width`` = 40 pixels off
each side of the width (480 -> 400), resize to ``image_size`` = 64 (frames
bilinear, masks nearest), and split each 128-frame video into training
sequences of ``num_frames`` (40) frames (``clip_stride`` apart).

Splits: ``train`` = the clips of ``video_train``; ``validation`` = the clips
of ``video_validation``; ``test`` = paper 004's test protocol on the
validation videos (the test set has no annotations): videos with
``test_num_objects`` objects (3-5, or 6), each trimmed to its first
``num_frames`` window in which every frame shows at least
``test_min_visible`` objects and some object moves. ``segmentation`` is
present when ``mask_dir`` is set (required for ``test``).

Decoding mp4 needs ``imageio-ffmpeg`` (a wheel with a static ffmpeg).
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import stream
from data_pipelines import video_common as vc

NAME = "clevrer"
_SPLIT_DIRS = {"train": "train", "validation": "validation",
               "test": "validation"}
_VIDEO_RE = re.compile(r"video_(\d+)\.mp4$")

_MISSING = (
    "imageio-ffmpeg is not installed; the clevrer reader decodes mp4 with "
    "it. `pip install imageio-ffmpeg` (a wheel bundling ffmpeg).")


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = NAME
  c.data_dir = ""  # CLEVRER root: video_{train,validation}/, annotation_*/.
  c.mask_dir = ""  # sim_XXXXX.json mask proposals; required for test.
  c.image_size = 64  # Output height = width (paper 004: 64).
  c.crop_width = 40  # Pixels cropped off each side of the width.
  c.num_frames = 40  # Frames per sequence (paper 004: at most 40).
  c.frame_stride = 1  # Temporal subsampling within a sequence.
  c.clip_stride = 40  # Frames between sequence starts (train/validation).
  c.frames_per_video = 128  # CLEVRER: 128 frames per video.
  c.test_num_objects = (3, 5)  # Test videos' object count ((6, 6) too).
  c.test_min_visible = 3  # Objects in view in every test frame.
  c.motion_threshold = 0.05  # Speed that counts as motion (annotation units).
  c.mask_score_threshold = 0.5  # Mask proposals below are dropped.
  c.num_parallel_calls = 2  # tf.data: batches produced in parallel.
  c.prefetch = 2  # tf.data: batches prefetched.
  return c


PRESETS = {
    "test3to5": dict(test_num_objects=(3, 5)),
    "test6": dict(test_num_objects=(6, 6)),
}


def preset_config(preset: str) -> ml_collections.ConfigDict:
  return stream.preset(NAME, PRESETS, default_config, preset)


# ------------------------------------------------------------ COCO RLE masks


def decode_coco_rle(counts: str | bytes, size) -> np.ndarray:
  """Decodes a compressed COCO RLE (pycocotools' string form).

  Args:
    counts: the LEB128-like string of run lengths (column-major runs,
      starting with zeros).
    size: ``[height, width]``.

  Returns:
    bool mask [height, width].
  """
  if isinstance(counts, bytes):
    counts = counts.decode("ascii")
  h, w = int(size[0]), int(size[1])
  runs: list[int] = []
  p = 0
  while p < len(counts):
    x, k, more = 0, 0, True
    while more:
      c = ord(counts[p]) - 48
      x |= (c & 0x1F) << (5 * k)
      more = bool(c & 0x20)
      p += 1
      k += 1
      if not more and (c & 0x10):
        x |= -1 << (5 * k)
    if len(runs) > 2:
      x += runs[-2]
    runs.append(x)
  runs_a = np.asarray(runs, np.int64)
  if runs_a.sum() != h * w or np.any(runs_a < 0):
    raise ValueError(f"COCO RLE runs sum to {runs_a.sum()}, expected {h}x{w}"
                     f"={h * w}.")
  values = np.arange(len(runs_a)) % 2 == 1
  flat = np.repeat(values, runs_a)
  return flat.reshape(w, h).T


def encode_coco_rle(mask: np.ndarray) -> dict[str, Any]:
  """Inverse of `decode_coco_rle`: ``{"size": [h, w], "counts": str}``."""
  mask = np.asarray(mask, bool)
  h, w = mask.shape
  flat = mask.T.reshape(-1)
  change = np.nonzero(np.diff(flat.astype(np.int8)))[0] + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  runs = list(np.diff(bounds))
  if flat.size and flat[0]:
    runs = [0] + runs
  out = []
  for i, x in enumerate(runs):
    x = int(x)
    if i > 2:
      x -= int(runs[i - 2])
    more = True
    while more:
      c = x & 0x1F
      x >>= 5
      more = (x != -1) if (c & 0x10) else (x != 0)
      if more:
        c |= 0x20
      out.append(chr(c + 48))
  return {"size": [h, w], "counts": "".join(out)}


# ------------------------------------------------------------------ indexing


def _require_ffmpeg():
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(_MISSING) from e
  return imageio_ffmpeg


def _root(config: Any) -> str:
  data_dir = stream.field(config, "data_dir")
  if not data_dir:
    raise ValueError(
        "data.data_dir is empty; the clevrer dataset reads CLEVRER's "
        "video_train/ and video_validation/ from it. For procedural videos "
        "use data.name='clevrer_like'.")
  root = os.path.abspath(data_dir)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data.data_dir={data_dir!r} is not a "
                            "directory.")
  return root


@functools.lru_cache(maxsize=8)
def _videos(root: str, which: str) -> tuple[tuple[int, str], ...]:
  """Sorted (video id, path) of ``video_<which>/**/video_NNNNN.mp4``."""
  top = os.path.join(root, f"video_{which}")
  if not os.path.isdir(top):
    raise FileNotFoundError(
        f"{top} is missing; expected CLEVRER's video_{which}/ (e.g. "
        f"video_{which}/video_00000-01000/video_00000.mp4) under "
        "data.data_dir.")
  out = []
  for dirpath, _, files in os.walk(top):
    for f in files:
      m = _VIDEO_RE.search(f)
      if m:
        out.append((int(m.group(1)), os.path.join(dirpath, f)))
  if not out:
    raise FileNotFoundError(f"{top} holds no video_NNNNN.mp4 files.")
  return tuple(sorted(out))


def _annotation_path(root: str, which: str, video_id: int) -> str:
  lo = video_id // 1000 * 1000
  return os.path.join(
      root, f"annotation_{which}", f"annotation_{lo:05d}-{lo + 1000:05d}",
      f"annotation_{video_id:05d}.json")


@functools.lru_cache(maxsize=256)
def _annotation(root: str, which: str, video_id: int):
  path = _annotation_path(root, which, video_id)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      ann = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e}).") from e
  for key in ("object_property", "motion_trajectory"):
    if key not in ann:
      raise ValueError(f"{path}: key {key!r} is missing; expected a CLEVRER "
                       "annotation.")
  return ann


def _span(config: Any) -> int:
  return (stream.int_field(config, "num_frames") - 1) * stream.int_field(
      config, "frame_stride") + 1


def _test_window(ann: dict, config: Any, path: str) -> int | None:
  """First start of a window with enough visible objects and motion."""
  lo, hi = stream.int_range(config, "test_num_objects", minimum=1)
  if not lo <= len(ann["object_property"]) <= hi:
    return None
  traj = ann["motion_trajectory"]
  span = _span(config)
  stride = stream.int_field(config, "frame_stride")
  need = stream.int_field(config, "test_min_visible", 0)
  threshold = float(stream.field(config, "motion_threshold"))
  visible, moving = [], []
  for frame in traj:
    objs = frame.get("objects", [])
    visible.append(sum(bool(o.get("inside_camera_view", True))
                       for o in objs))
    moving.append(any(np.linalg.norm(o.get("velocity", [0, 0, 0]))
                      > threshold for o in objs))
  if len(traj) < span:
    raise ValueError(f"{path}: motion_trajectory has {len(traj)} frames, "
                     f"fewer than the {span} a sequence spans.")
  for s in range(len(traj) - span + 1):
    frames = range(s, s + span, stride)
    if (all(visible[f] >= need for f in frames) and
        any(moving[f] for f in frames)):
      return s
  return None


@functools.lru_cache(maxsize=8)
def _index_cached(root: str, split: str, key: tuple) -> np.ndarray:
  config = dict(key)
  which = _SPLIT_DIRS[split]
  videos = _videos(root, which)
  span = _span(config)
  if split != "test":
    per = (config["frames_per_video"] - span) // config["clip_stride"] + 1
    if per < 1:
      raise ValueError(
          f"data.num_frames={config['num_frames']} x frame_stride="
          f"{config['frame_stride']} spans {span} frames, more than the "
          f"{config['frames_per_video']} of a video.")
    return np.array([(v, c * config["clip_stride"])
                     for v in range(len(videos)) for c in range(per)],
                    np.int64).reshape(-1, 2)
  rows = []
  for v, (vid, _) in enumerate(videos):
    ann = _annotation(root, which, vid)
    if ann is None:
      raise FileNotFoundError(
          f"{_annotation_path(root, which, vid)} is missing; the test split "
          "selects sequences from the validation annotations.")
    start = _test_window(ann, config, _annotation_path(root, which, vid))
    if start is not None:
      rows.append((v, start))
  return np.array(rows, np.int64).reshape(-1, 2)


_INDEX_FIELDS = ("num_frames", "frame_stride", "clip_stride",
                 "frames_per_video", "test_num_objects", "test_min_visible",
                 "motion_threshold")


def _index(config: Any, split: str) -> tuple[str, np.ndarray]:
  """(root, [n, 2] rows of (video position, first frame))."""
  stream.split_id(split)
  root = _root(config)
  key = tuple((k, tuple(stream.field(config, k)) if isinstance(
      stream.field(config, k), (tuple, list)) else stream.field(config, k))
              for k in _INDEX_FIELDS)
  return root, _index_cached(root, split, key)


def num_examples(config: Any, split: str) -> int:
  return len(_index(config, split)[1])


# ----------------------------------------------------------------- decoding


def read_frames(path: str, frames: np.ndarray) -> np.ndarray:
  """Decodes the given frame indices of an mp4: uint8 [len, H, W, 3]."""
  ffmpeg = _require_ffmpeg()
  wanted = {int(f): i for i, f in enumerate(frames)}
  last = max(wanted)
  gen = ffmpeg.read_frames(path)
  try:
    meta = next(gen)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: cannot decode the video ({e}).") from e
  w, h = meta["size"]
  out = np.zeros((len(frames), h, w, 3), np.uint8)
  n = 0
  try:
    for i, buf in enumerate(gen):
      if i in wanted:
        out[wanted[i]] = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
      n = i + 1
      if i >= last:
        break
  finally:
    gen.close()
  if n <= last:
    raise ValueError(f"{path}: has {n} frames; frame {last} was asked for.")
  return out


def preprocess_frames(frames: np.ndarray, crop: int, size: int) -> np.ndarray:
  """Crops ``crop`` px off both sides of the width, resizes: [T, S, S, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  t, h, w, _ = frames.shape
  if w <= 2 * crop:
    raise ValueError(f"Frames of width {w} cannot lose 2 x {crop} pixels.")
  out = np.zeros((t, size, size, 3), np.uint8)
  for i in range(t):
    img = Image.fromarray(frames[i, :, crop:w - crop])
    out[i] = np.asarray(img.resize((size, size), Image.BILINEAR))
  return out


def preprocess_masks(ids: np.ndarray, crop: int, size: int) -> np.ndarray:
  """Same geometry as `preprocess_frames` for id maps (nearest)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  t, _, w = ids.shape
  out = np.zeros((t, size, size), np.uint8)
  for i in range(t):
    img = Image.fromarray(ids[i, :, crop:w - crop].astype(np.uint8))
    out[i] = np.asarray(img.resize((size, size), Image.NEAREST))
  return out


@functools.lru_cache(maxsize=64)
def _proposals(mask_dir: str, video_id: int):
  path = os.path.join(mask_dir, f"sim_{video_id:05d}.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing (data.mask_dir); expected "
                            "CLEVRER mask proposals sim_XXXXX.json.")
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e}).") from e
  if "frames" not in data:
    raise ValueError(f"{path}: key 'frames' is missing.")
  return path, {int(fr.get("frame_index", i)): fr.get("objects", [])
                for i, fr in enumerate(data["frames"])}


def read_masks(mask_dir: str, video_id: int, frames: np.ndarray,
               annotation, score_threshold: float,
               shape: tuple[int, int]) -> np.ndarray:
  """Track-id maps [len, H, W] uint8 of the given frames (0 = background)."""
  path, per_frame = _proposals(mask_dir, video_id)
  ids_by_attr: dict[tuple, int] = {}
  if annotation is not None:
    for o in annotation["object_property"]:
      ids_by_attr[(o["color"], o["material"], o["shape"])] = (
          int(o["object_id"]) + 1)
  else:  # Order of first appearance over the whole video: stable ids.
    for f in sorted(per_frame):
      for o in per_frame[f]:
        key = (o.get("color"), o.get("material"), o.get("shape"))
        ids_by_attr.setdefault(key, len(ids_by_attr) + 1)
  out = np.zeros((len(frames),) + tuple(shape), np.uint8)
  for row, f in enumerate(frames):
    objs = [o for o in per_frame.get(int(f), [])
            if o.get("score", 1.0) >= score_threshold]
    for o in sorted(objs, key=lambda o: o.get("score", 1.0)):
      key = (o.get("color"), o.get("material"), o.get("shape"))
      if key not in ids_by_attr:
        continue  # A proposal that matches no annotated object.
      try:
        m = decode_coco_rle(o["mask"]["counts"], o["mask"]["size"])
      except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: frame {f}: bad mask ({e}).") from e
      if m.shape != tuple(shape):
        raise ValueError(f"{path}: frame {f}: mask of shape {m.shape}, video "
                         f"frames are {tuple(shape)}.")
      out[row][m] = ids_by_attr[key]
  return out


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int | None = None,
                process_count: int | None = None,
                repeat: bool | None = None):
  """This process's batches (see ``data_pipelines/__init__.py``).

  Elements: ``video`` float32 [b, T, S, S, 3] in [0, 1], ``segmentation``
  int32 [b, T, S, S] (when ``mask_dir`` is set) and, when not repeating,
  ``valid`` bool [b].
  """
  _require_ffmpeg()
  root, index = _index(config, split)
  which = _SPLIT_DIRS[split]
  videos = _videos(root, which)
  mask_dir = stream.field(config, "mask_dir")
  if split == "test" and not mask_dir:
    raise ValueError("data.mask_dir is empty; the clevrer test split is "
                     "scored on ground-truth masks (sim_XXXXX.json).")
  if mask_dir and not os.path.isdir(mask_dir):
    raise FileNotFoundError(f"data.mask_dir={mask_dir!r} is not a "
                            "directory.")
  if not len(index):
    raise ValueError(f"No {split!r} sequences found under {root}.")
  t = stream.int_field(config, "num_frames")
  stride = stream.int_field(config, "frame_stride")
  size = stream.int_field(config, "image_size", 8)
  crop = stream.int_field(config, "crop_width", 0)
  threshold = float(stream.field(config, "mask_score_threshold"))
  with_masks = bool(mask_dir)

  def load_rows(indices, valid):
    video = np.zeros((len(indices), t, size, size, 3), np.float32)
    seg = np.zeros((len(indices), t, size, size), np.int32)
    for row, (i, ok) in enumerate(zip(indices, valid)):
      if not ok:
        continue
      v, start = index[i]
      vid, path = videos[v]
      frames = start + stride * np.arange(t)
      raw = read_frames(path, frames)  # [t, 320, 480, 3]
      video[row] = preprocess_frames(raw, crop, size) / 255.0
      if with_masks:
        ids = read_masks(mask_dir, vid, frames,
                         _annotation(root, which, vid), threshold,
                         raw.shape[1:3])
        seg[row] = preprocess_masks(ids, crop, size)
    out = {"video": video}
    if with_masks:
      out["segmentation"] = seg
    return out

  return stream.make_dataset(
      load_rows, vc.episode_features(t, size, size, with_masks),
      n=len(index), split=split, batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat,
      options=stream.stream_options(config))
