"""Multi-object tracking (MOT) metrics: the protocol of Weis et al. (2021).

APEX (Wu et al. 2021, Sec. IV, Table II) evaluates tracking "following the
procedure in Weis et al. [JMLR 2021], which is based on the protocol from
the established MOT16 tracking benchmark". That procedure (reference code:
``ocrb/eval/eval_mot.py`` and ``eval_utils.py`` of
ecker-lab/object-centric-representation-benchmark) is, per video and frame:

1. Predicted masks: the argmax over the K soft slot masks gives one binary
   mask per slot; the slot index is the track id (`labels_from_slot_masks`).
   Models that propagate object ids give their id map directly.
2. Masks with at most ``min_num_pixels`` (5) pixels are dropped, for ground
   truth and predictions alike.
3. With ``exclude_background`` (on here; ``--exclude_bg`` in the reference
   CLI), every prediction whose IoU with the ground-truth background mask
   exceeds ``background_iou_threshold`` (0.2) is deleted: the background
   slot(s) are not tracks.
4. Distance ``1 - IoU`` between every ground-truth object and prediction;
   pairs with IoU below ``iou_threshold`` (0.5) cannot match.
5. py-motmetrics' ``MOTAccumulator.update`` matches them: previous
   correspondences are kept where still valid (track continuity), the rest
   is solved by the Hungarian algorithm; it records MATCH, SWITCH, MISS and
   FP events. All videos share one accumulator, with ids made unique per
   video.

Metrics, with N the number of ground-truth object-frames (``num_objects``),
all in percent as in the reference and APEX's Table II:

* MOTA = 100 (1 - (misses + false positives + ID switches) / N); may be
  negative.
* MOTP = 100 (1 - mean distance of MATCH and SWITCH pairs) = the mean IoU
  of matched pairs.
* Match, ID S(witches), FPs, Miss: 100 x count / N (a switch is its own
  event, not a match).
* MT (mostly tracked): percentage of ground-truth tracks MATCHed in at least
  ``mostly_threshold`` (80%) of the frames where they are present; MD
  (mostly detected): the same counting MATCH and SWITCH (any detection).

Only the frames ``start_step <= t < stop_step`` are scored. The reference
CLI defaults to 2..10 (for next-step prediction); reconstruction-based
tracking, as APEX's, scores every frame (the defaults here).

The reference's ``--iou_thresh`` is a maximum *distance* (a pair matches
when ``1 - IoU <= iou_thresh``); ``iou_threshold`` here is the minimum IoU,
``1 - iou_thresh``. At the default 0.5 both read the same.

Use `mot_metrics` for arrays in memory, or `MOTEvaluator` to accumulate
batch after batch. `ocrb_frames` writes the reference's JSON records, for
checking numbers against its script.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

# Defaults of the protocol (ocrb eval_mot.py / eval_utils.py).
MIN_NUM_PIXELS = 5  # Masks need more than this many pixels.
IOU_THRESHOLD = 0.5  # Minimum IoU of a match (distance <= 0.5).
BACKGROUND_IOU_THRESHOLD = 0.2  # Predictions above it with the bg: removed.
MOSTLY_THRESHOLD = 0.8  # MT / MD: fraction of a track's frames.
_ID_STRIDE = 1 << 20  # Ids are made unique per video: video * stride + id.
_EPS = np.finfo(float).eps  # As the reference's calculate_iou.


def labels_from_slot_masks(masks: Any, slot_axis: int = 2) -> np.ndarray:
  """Hard assignment of soft slot masks: the slot index per pixel.

  Args:
    masks: ``[B, T, K, H, W(, 1)]`` soft masks (ocjax's video layout).
    slot_axis: the K axis.

  Returns:
    int32 ``[B, T, H, W]``: argmax over slots (ties go to the lower slot).
  """
  masks = np.asarray(masks)
  if masks.shape[-1] == 1 and masks.ndim >= 4:
    masks = masks[..., 0]
  return np.argmax(masks, axis=slot_axis).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class FrameMatch:
  """One frame's input to the accumulator."""
  gt_ids: np.ndarray  # [G] ground-truth ids kept.
  pred_ids: np.ndarray  # [P] predicted ids kept.
  distances: np.ndarray  # [G, P] 1 - IoU, NaN where no match is allowed.


def frame_distances(gt: np.ndarray, pred: np.ndarray, *,
                    min_num_pixels: int = MIN_NUM_PIXELS,
                    iou_threshold: float = IOU_THRESHOLD,
                    exclude_background: bool = True,
                    background_iou_threshold: float = BACKGROUND_IOU_THRESHOLD
                    ) -> FrameMatch:
  """Steps 2-4 of the protocol for one frame.

  Args:
    gt: int ``[H, W]`` ground-truth ids, 0 = background.
    pred: int ``[H, W]`` predicted track ids; negative = no prediction.
    min_num_pixels, iou_threshold, exclude_background,
      background_iou_threshold: see the module doc.

  Returns:
    A `FrameMatch`.
  """
  gt = np.asarray(gt).reshape(-1)
  pred = np.asarray(pred).reshape(-1)
  if gt.shape != pred.shape:
    raise ValueError(f"Ground truth and prediction differ in size: "
                     f"{gt.size} vs {pred.size} pixels.")
  g_vals, g_inv = np.unique(gt, return_inverse=True)
  has_pred = pred >= 0
  p_vals, p_inv = np.unique(pred[has_pred], return_inverse=True)
  n_g, n_p = len(g_vals), len(p_vals)
  g_area = np.bincount(g_inv, minlength=n_g)
  p_area = np.bincount(p_inv, minlength=n_p)
  inter = np.bincount(g_inv[has_pred] * n_p + p_inv,
                      minlength=n_g * n_p).reshape(n_g, n_p)
  union = g_area[:, None] + p_area[None, :] - inter
  iou = inter / (union + _EPS)  # [n_g, n_p]
  keep_p = p_area > min_num_pixels
  is_bg = g_vals == 0
  if exclude_background and is_bg.any():
    b = int(np.nonzero(is_bg)[0][0])
    if g_area[b] > min_num_pixels:
      keep_p &= ~(iou[b] > background_iou_threshold)
  keep_g = (g_area > min_num_pixels) & ~is_bg
  dist = 1.0 - iou[keep_g][:, keep_p]
  dist[dist > 1.0 - iou_threshold] = np.nan
  return FrameMatch(g_vals[keep_g], p_vals[keep_p], dist)


class MOTEvaluator:
  """Accumulates videos and computes the protocol's metrics.

  ``evaluator.add_batch(gt [B, T, H, W], pred [B, T, H, W])`` per batch,
  then ``evaluator.result()``.
  """

  def __init__(self, *, min_num_pixels: int = MIN_NUM_PIXELS,
               iou_threshold: float = IOU_THRESHOLD,
               exclude_background: bool = True,
               background_iou_threshold: float = BACKGROUND_IOU_THRESHOLD,
               mostly_threshold: float = MOSTLY_THRESHOLD,
               start_step: int = 0, stop_step: Optional[int] = None):
    import motmetrics as mm  # pylint: disable=g-import-not-at-top
    if not 0 <= iou_threshold <= 1 or not 0 <= background_iou_threshold <= 1:
      raise ValueError("iou_threshold and background_iou_threshold must be "
                       "in [0, 1].")
    if stop_step is not None and stop_step <= start_step:
      raise ValueError(f"stop_step={stop_step} must exceed start_step="
                       f"{start_step}.")
    self._mm = mm
    self.acc = mm.MOTAccumulator()
    self.frame_kwargs = dict(
        min_num_pixels=min_num_pixels, iou_threshold=iou_threshold,
        exclude_background=exclude_background,
        background_iou_threshold=background_iou_threshold)
    self.mostly_threshold = mostly_threshold
    self.start_step, self.stop_step = start_step, stop_step
    self.num_videos = 0
    self.num_frames = 0

  def add_video(self, gt: Any, pred: Any) -> None:
    """Adds one video: gt and pred int ``[T, H, W]`` (see frame_distances)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 3 or gt.shape != pred.shape:
      raise ValueError(f"Expected gt and pred [T, H, W] of equal shapes; got "
                       f"{gt.shape} and {pred.shape}.")
    if not (np.issubdtype(gt.dtype, np.integer) and
            np.issubdtype(pred.dtype, np.integer)):
      raise ValueError(f"gt and pred must be integer id maps; got {gt.dtype} "
                       f"and {pred.dtype} (use labels_from_slot_masks).")
    if gt.size and (gt.max() >= _ID_STRIDE or pred.max() >= _ID_STRIDE
                    or gt.min() < 0):
      raise ValueError(f"Ids must lie in [0, {_ID_STRIDE}) (gt) or "
                       f"(-inf, {_ID_STRIDE}) (pred).")
    stop = gt.shape[0] if self.stop_step is None else self.stop_step
    if stop > gt.shape[0] or self.start_step >= stop:
      raise ValueError(f"Frames [{self.start_step}, {stop}) are not in a "
                       f"video of {gt.shape[0]} frames.")
    offset = self.num_videos * _ID_STRIDE
    for t in range(self.start_step, stop):
      m = frame_distances(gt[t], pred[t], **self.frame_kwargs)
      self.acc.update(
          (m.gt_ids.astype(np.int64) + offset).tolist(),
          (m.pred_ids.astype(np.int64) + offset).tolist(), m.distances,
          frameid=self.num_frames)
      self.num_frames += 1
    self.num_videos += 1

  def add_batch(self, gt: Any, pred: Any, valid: Any = None) -> None:
    """Adds ``[B, T, H, W]`` videos; rows with ``valid`` False are skipped."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 4:
      raise ValueError(f"Expected [B, T, H, W]; got gt {gt.shape}.")
    valid = (np.ones(gt.shape[0], bool) if valid is None
             else np.asarray(valid, bool))
    for b in range(gt.shape[0]):
      if valid[b]:
        self.add_video(gt[b], pred[b])

  def result(self) -> dict[str, float]:
    """The metrics (percent) and the raw counts; see the module doc."""
    if not self.num_frames:
      raise ValueError("No frames were added.")
    mh = self._mm.metrics.create()
    names = ["num_frames", "mota", "motp", "num_matches", "num_switches",
             "num_false_positives", "num_misses", "num_objects",
             "num_predictions", "num_unique_objects"]
    summary = mh.compute(self.acc, metrics=names, name="acc")
    s = {k: float(summary[k].iloc[0]) for k in names}
    n = s["num_objects"]
    mostly_tracked, mostly_detected = _mostly(self.acc.mot_events,
                                              self.mostly_threshold)

    def pct(count):
      return 100.0 * count / n if n else float("nan")

    return {
        "mota": 100.0 * s["mota"] if n else float("nan"),
        "motp": 100.0 * (1.0 - s["motp"]),
        "match": pct(s["num_matches"]),
        "id_switches": pct(s["num_switches"]),
        "false_positives": pct(s["num_false_positives"]),
        "misses": pct(s["num_misses"]),
        "mostly_detected": mostly_detected,
        "mostly_tracked": mostly_tracked,
        "num_videos": float(self.num_videos),
        "num_frames": s["num_frames"],
        "num_objects": n,
        "num_tracks": s["num_unique_objects"],
        "num_matches": s["num_matches"],
        "num_switches": s["num_switches"],
        "num_false_positives": s["num_false_positives"],
        "num_misses": s["num_misses"],
        "num_predictions": s["num_predictions"],
    }


def _mostly(events, threshold: float) -> tuple[float, float]:
  """MT and MD (percent) from the accumulator's events (ocrb's rule)."""
  df = events[~events.Type.isin(["RAW", "MIGRATE", "TRANSFER", "ASCEND"])]
  present = df.OId.value_counts()  # Frames each track is in (non-FP rows).
  if not len(present):
    return float("nan"), float("nan")
  tracked = df[df.Type == "MATCH"].OId.value_counts()
  detected = df[df.Type != "MISS"].OId.value_counts()
  track_ratio = tracked.reindex(present.index, fill_value=0) / present
  detect_ratio = detected.reindex(present.index, fill_value=0) / present
  n = len(present)
  return (100.0 * float((track_ratio >= threshold).sum()) / n,
          100.0 * float((detect_ratio >= threshold).sum()) / n)


def mot_metrics(gt: Any, pred: Any, valid: Any = None,
                **kwargs) -> dict[str, float]:
  """The protocol's metrics for a batch of videos.

  Args:
    gt: int ``[B, T, H, W]`` (or ``[T, H, W]``) track ids, 0 = background.
    pred: int id maps of the same shape (e.g. `labels_from_slot_masks`),
      negative = no prediction.
    valid: optional bool ``[B]``; False rows (padding) are skipped.
    **kwargs: `MOTEvaluator`'s thresholds and frame range.

  Returns:
    See `MOTEvaluator.result`.
  """
  gt, pred = np.asarray(gt), np.asarray(pred)
  if gt.ndim == 3:
    gt, pred = gt[None], pred[None]
  ev = MOTEvaluator(**kwargs)
  ev.add_batch(gt, pred, valid)
  return ev.result()


# ------------------------------------------------ the reference's JSON format


def rle_encode(mask: np.ndarray) -> str:
  """Kaggle-style RLE of the reference: 1-based 'start length' pairs."""
  pixels = np.concatenate([[0], np.asarray(mask).reshape(-1).astype(np.int8),
                           [0]])
  runs = np.nonzero(pixels[1:] != pixels[:-1])[0] + 1
  runs[1::2] -= runs[::2]
  return " ".join(str(int(x)) for x in runs)


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
  """Inverse of `rle_encode`: uint8 mask of ``shape``."""
  s = rle.split()
  starts = np.asarray(s[0::2], int) - 1
  lengths = np.asarray(s[1::2], int)
  img = np.zeros(shape[0] * shape[1], np.uint8)
  for lo, n in zip(starts, lengths):
    img[lo:lo + n] = 1
  return img.reshape(shape)


def ocrb_frames(labels: Any, *, ground_truth: bool,
                id_offset: int = 0) -> list[dict[str, Any]]:
  """One video as the reference's JSON records (a list over frames).

  Ground truth: ``{'masks', 'ids', 'num_bg': 1}`` with the background mask
  (label 0) last; predictions: ``{'masks', 'ids'}`` for every non-empty
  label (negative labels are no prediction).
  """
  out = []
  for frame in np.asarray(labels):
    ids = [int(v) for v in np.unique(frame) if v > 0 or
           (v == 0 and not ground_truth)]
    rec = {"masks": [rle_encode(frame == v) for v in ids],
           "ids": [v + id_offset for v in ids]}
    if ground_truth:
      rec["masks"].append(rle_encode(frame == 0))
      rec["ids"].append(id_offset)  # The background's id (unused).
      rec["num_bg"] = 1
    out.append(rec)
  return out
