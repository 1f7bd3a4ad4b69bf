"""Segmentation and reconstruction metrics: ARI, covering (MSC), mIoU, MSE.

Every segmentation score is computed from one contingency table per image,

  n[b, i, j] = |{pred == i} ∩ {true == j}|,

built as a one-hot contraction over the pixels (`contingency_table`). ARI,
ARI-FG, MSC, MSC-FG and their pixel-weighted variants are cheap functions of
that table, so `segmentation_metrics` builds it once under ``jax.jit`` and
derives all of them; nothing loops over images or pixels. Only the Hungarian
matching of the CLEVRTEX mIoU runs on the host (scipy).

Labels are non-negative integers below a static bound (``num_pred_labels``,
``num_true_labels``) so that the table has a static shape. Outside ``jit`` a
missing bound is inferred as ``max + 1``; under ``jit`` it must be given.
Pixels whose label falls outside ``[0, bound)`` fall in no cell of the table
and are ignored; negative GT labels are how "don't care" regions are marked.

Protocols follow the reference code named in the project's notes
(``shared/notes/metrics_protocols.md``): ARI as
``sklearn.metrics.adjusted_rand_score``, MSC as GENESIS
``utils/misc.py:average_segcover``, mIoU as CLEVRTEX
``CLEVRTEX_Evaluator.update``.

Axis legend: B batch, T time, K slots, H height, W width, C channels,
N pixels, P predicted labels, G ground-truth labels.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

Array = jax.Array


# ---------------------------------------------------------------------------
# Label maps and the contingency table.
# ---------------------------------------------------------------------------


def _label_bound(labels, bound: Optional[int], arg_name: str) -> int:
  """Static number of labels: ``bound``, or ``max(labels) + 1`` if concrete."""
  if bound is not None:
    return int(bound)
  if isinstance(labels, jax.core.Tracer):
    raise ValueError(
        f"`{arg_name}` must be given when the labels are traced (under "
        "jax.jit or vmap): the contingency table needs a static size.")
  return max(int(np.max(np.asarray(labels), initial=-1)) + 1, 1)


def _check_images(labels, arg_name: str) -> None:
  """Raises unless ``labels`` is ``[B, H, W]`` or ``[B, N]``."""
  if len(jnp.shape(labels)) not in (2, 3):
    raise ValueError(
        f"`{arg_name}` must be [B, H, W] or [B, N] labels, got shape "
        f"{jnp.shape(labels)}. For [B, T, H, W] videos use the *_per_frame "
        "or *_per_video functions.")


@functools.partial(
    jax.jit, static_argnames=("num_pred_labels", "num_true_labels"))
def _contingency(pred: Array, true: Array, num_pred_labels: int,
                 num_true_labels: int) -> Array:
  # pred, true: [B, ...] -> [B, P, G] int32 counts. The one-hot masks are int8
  # with int32 accumulation: exact, and on CPU about 4x faster than float32
  # (pixels on the last axis, so each image is one [P, N] x [N, G] product).
  pred = pred.reshape(pred.shape[0], -1).astype(jnp.int32)  # [B, N]
  true = true.reshape(true.shape[0], -1).astype(jnp.int32)  # [B, N]
  pred_1h = pred[:, None, :] == jnp.arange(num_pred_labels)[:, None]
  true_1h = true[:, None, :] == jnp.arange(num_true_labels)[:, None]
  return jnp.einsum("bpn,bgn->bpg", pred_1h.astype(jnp.int8),
                    true_1h.astype(jnp.int8),
                    preferred_element_type=jnp.int32)


def contingency_table(pred, true, *, num_pred_labels: Optional[int] = None,
                      num_true_labels: Optional[int] = None) -> Array:
  """Per-image contingency table of two label maps.

  Args:
    pred: predicted labels, int ``[B, H, W]`` or ``[B, N]``.
    true: ground-truth labels, same shape; 0 is the background.
    num_pred_labels: static bound on the predicted labels.
    num_true_labels: static bound on the ground-truth labels.

  Returns:
    ``[B, P, G]`` int32, ``n[b, i, j] = |{pred == i} ∩ {true == j}|``.
    Pixels with a label outside ``[0, bound)`` are not counted.
  """
  num_pred_labels = _label_bound(pred, num_pred_labels, "num_pred_labels")
  num_true_labels = _label_bound(true, num_true_labels, "num_true_labels")
  _check_images(pred, "pred")
  _check_images(true, "true")
  if jnp.shape(pred) != jnp.shape(true):
    raise ValueError(
        f"pred {jnp.shape(pred)} and true {jnp.shape(true)} differ.")
  return _contingency(pred, true, num_pred_labels, num_true_labels)


@jax.jit
def labels_from_masks(masks) -> Array:
  """Hard labels from (log or soft) slot masks by argmax over K.

  Ties go to the lowest slot index (`jnp.argmax`), as in the GENESIS
  reference.

  Args:
    masks: ``[B, K, H, W, 1]`` or ``[B, K, H, W]`` masks or log masks.

  Returns:
    ``[B, H, W]`` int32 slot indices.
  """
  masks = jnp.asarray(masks)
  if masks.ndim == 5:
    masks = masks[..., 0]
  if masks.ndim != 4:
    raise ValueError(
        f"masks must be [B, K, H, W, 1] or [B, K, H, W], got {masks.shape}.")
  return jnp.argmax(masks, axis=1).astype(jnp.int32)


# ---------------------------------------------------------------------------
# Scores from a contingency table.
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("foreground_only",))
def ari_from_contingency(table: Array, *,
                         foreground_only: bool = False) -> Array:
  """Adjusted Rand Index from ``[..., P, G]`` tables, as sklearn computes it.

  With ordered pair counts over the counted pixels (pairs in the same cell:
  tp; same predicted, different true label: fn; the converse: fp; neither:
  tn), ``ARI = 2 (tp tn - fn fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn))``
  and ``ARI = 1`` when ``fn = fp = 0`` (identical partitions, fewer than two
  pixels, one cluster on both sides).

  Each count is a sum of non-negative products of integer counts, e.g.
  ``fn = sum_ij n_ij (a_i - n_ij)``, so nothing cancels: up to 4096 pixels
  (64x64) the counts are exact in float32, and the final expression is well
  conditioned (its absolute error stays within a few float32 ulps of 1;
  tested against sklearn to 1e-6 up to 400x400 pixels).

  Args:
    table: ``[..., P, G]`` counts from `contingency_table`.
    foreground_only: drop the pixels whose true label is 0 (ARI-FG).

  Returns:
    ``[...]`` float32 ARI.
  """
  n = jnp.asarray(table, jnp.float32)
  if foreground_only:
    n = n[..., 1:]
  a = jnp.sum(n, axis=-1, keepdims=True)  # [..., P, 1] predicted sizes
  b = jnp.sum(n, axis=-2, keepdims=True)  # [..., 1, G] true sizes
  total = jnp.sum(n, axis=(-2, -1), keepdims=True)  # [..., 1, 1]
  pair_sum = functools.partial(jnp.sum, axis=(-2, -1))
  tp = pair_sum(n * (n - 1.0))
  fn = pair_sum(n * (a - n))
  fp = pair_sum(n * (b - n))
  tn = pair_sum(n * (total - a - b + n))
  numerator = 2.0 * (tp * tn - fn * fp)
  denominator = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
  perfect = (fn == 0) & (fp == 0)
  return jnp.where(perfect, 1.0,
                   numerator / jnp.where(perfect, 1.0, denominator))


@functools.partial(
    jax.jit, static_argnames=("foreground_only", "pixel_weighted"))
def covering_from_contingency(table: Array, *, foreground_only: bool = False,
                              pixel_weighted: bool = False) -> Array:
  """Segmentation covering from ``[..., P, G]`` tables (GENESIS's MSC).

  Each GT segment ``A_j`` present in the image (``j > 0`` if
  ``foreground_only``) scores ``max_i IoU(A_j, {pred == i} ∩ {true >= 0})``,
  0 when no union is positive. The image scores their mean (MSC) or, with
  ``pixel_weighted``, ``sum_j |A_j| IoU_j / sum_j |A_j|`` (scaled MSC); 0 if
  no GT segment is present.

  Args:
    table: ``[..., P, G]`` counts from `contingency_table`.
    foreground_only: leave out the background segment (label 0).
    pixel_weighted: weight each segment by its size.

  Returns:
    ``[...]`` float32 covering.
  """
  n = jnp.asarray(table, jnp.float32)
  pred_sizes = jnp.sum(n, axis=-1, keepdims=True)  # [..., P, 1]
  true_sizes = jnp.sum(n, axis=-2)  # [..., G]
  union = pred_sizes + true_sizes[..., None, :] - n  # [..., P, G]
  iou = jnp.where(union > 0, n / jnp.where(union > 0, union, 1.0), 0.0)
  best = jnp.max(iou, axis=-2)  # [..., G]
  present = true_sizes > 0
  if foreground_only:
    present = present.at[..., 0].set(False)
  if pixel_weighted:
    weight = jnp.where(present, true_sizes, 0.0)
  else:
    weight = present.astype(jnp.float32)
  return (jnp.sum(weight * best, axis=-1)
          / jnp.maximum(jnp.sum(weight, axis=-1), 1.0))


# ---------------------------------------------------------------------------
# Scores from label maps and masks ([B, H, W] images).
# ---------------------------------------------------------------------------


def ari(pred, true, *, foreground_only: bool = False,
        num_pred_labels: Optional[int] = None,
        num_true_labels: Optional[int] = None) -> Array:
  """Per-image ARI of two label maps (ARI-FG with ``foreground_only``).

  Equal to ``sklearn.metrics.adjusted_rand_score(true[b], pred[b])`` on the
  flattened maps (on ``true[b] > 0`` pixels only for ARI-FG), including its
  convention that an image with fewer than two (FG) pixels scores 1.0.

  Args:
    pred: int ``[B, H, W]`` or ``[B, N]``.
    true: int, same shape; 0 is the background.
    foreground_only: drop pixels with ``true == 0``.
    num_pred_labels: static bound on ``pred`` (needed under jit).
    num_true_labels: static bound on ``true`` (needed under jit).

  Returns:
    ``[B]`` float32.
  """
  table = contingency_table(pred, true, num_pred_labels=num_pred_labels,
                            num_true_labels=num_true_labels)
  return ari_from_contingency(table, foreground_only=foreground_only)


def ari_from_masks(masks, true, *, foreground_only: bool = False,
                   num_true_labels: Optional[int] = None) -> Array:
  """Per-image ARI of ``argmax_K masks`` against ``true``.

  Args:
    masks: ``[B, K, H, W, 1]`` soft or log masks (argmax is taken over K).
    true: int ``[B, H, W]``.
    foreground_only: drop pixels with ``true == 0``.
    num_true_labels: static bound on ``true`` (needed under jit).

  Returns:
    ``[B]`` float32.
  """
  pred = labels_from_masks(masks)
  return ari(pred, true, foreground_only=foreground_only,
             num_pred_labels=jnp.shape(masks)[1],
             num_true_labels=num_true_labels)


def segmentation_covering(pred, true, *, foreground_only: bool = False,
                          pixel_weighted: bool = False,
                          num_pred_labels: Optional[int] = None,
                          num_true_labels: Optional[int] = None) -> Array:
  """Per-image segmentation covering (see `covering_from_contingency`).

  ``pixel_weighted=False`` is GENESIS's "MSC" (``msc``/``msc_fg``), ``True``
  its scaled variant (``msc_scaled``/``msc_fg_scaled``).

  Args:
    pred: int ``[B, H, W]`` or ``[B, N]``.
    true: int, same shape; 0 is the background, negative labels are ignored.
    foreground_only: leave out the background segment.
    pixel_weighted: weight segments by their size.
    num_pred_labels: static bound on ``pred`` (needed under jit).
    num_true_labels: static bound on ``true`` (needed under jit).

  Returns:
    ``[B]`` float32.
  """
  table = contingency_table(pred, true, num_pred_labels=num_pred_labels,
                            num_true_labels=num_true_labels)
  return covering_from_contingency(table, foreground_only=foreground_only,
                                   pixel_weighted=pixel_weighted)


def msc(pred, true, *, foreground_only: bool = False,
        num_pred_labels: Optional[int] = None,
        num_true_labels: Optional[int] = None) -> Array:
  """GENESIS's "MSC" / "MSC-FG": `segmentation_covering`, unweighted."""
  return segmentation_covering(
      pred, true, foreground_only=foreground_only, pixel_weighted=False,
      num_pred_labels=num_pred_labels, num_true_labels=num_true_labels)


def msc_scaled(pred, true, *, foreground_only: bool = False,
               num_pred_labels: Optional[int] = None,
               num_true_labels: Optional[int] = None) -> Array:
  """GENESIS's scaled covering: `segmentation_covering`, pixel-weighted."""
  return segmentation_covering(
      pred, true, foreground_only=foreground_only, pixel_weighted=True,
      num_pred_labels=num_pred_labels, num_true_labels=num_true_labels)


@functools.partial(jax.jit, static_argnames=("num_true_labels",))
def _segmentation_metrics(masks: Array, true: Array,
                          num_true_labels: int) -> dict[str, Array]:
  pred = labels_from_masks(masks)  # [B, H, W]
  table = _contingency(pred, true, masks.shape[1], num_true_labels)
  return _scores_from_table(table)


def _scores_from_table(table: Array) -> dict[str, Array]:
  cover = covering_from_contingency
  return {
      "ari": ari_from_contingency(table),
      "ari_fg": ari_from_contingency(table, foreground_only=True),
      "msc": cover(table),
      "msc_fg": cover(table, foreground_only=True),
      "msc_scaled": cover(table, pixel_weighted=True),
      "msc_fg_scaled": cover(table, foreground_only=True,
                             pixel_weighted=True),
  }


def segmentation_metrics(masks, true, *,
                         num_true_labels: Optional[int] = None
                         ) -> dict[str, Array]:
  """ARI, ARI-FG, MSC, MSC-FG and the scaled MSCs of one batch, per image.

  The predicted segmentation is ``argmax_K masks`` (GENESIS takes it of the
  log masks; soft masks give the same argmax up to ties from underflow).
  One jitted contingency table serves every score.

  Args:
    masks: ``[B, K, H, W, 1]`` (or ``[B, K, H, W]``) soft or log masks.
    true: int ``[B, H, W]``, 0 = background, negative = ignored.
    num_true_labels: static bound on ``true`` (needed under jit).

  Returns:
    Dict of ``[B]`` float32: ``ari``, ``ari_fg``, ``msc``, ``msc_fg``,
    ``msc_scaled``, ``msc_fg_scaled``. Batch values are their plain means.
  """
  num_true_labels = _label_bound(true, num_true_labels, "num_true_labels")
  mask_shape, true_shape = jnp.shape(masks), jnp.shape(true)
  if (len(mask_shape) == 5 and mask_shape[-1] == 1):
    mask_shape = mask_shape[:-1]
  if (len(mask_shape) != 4
      or true_shape != mask_shape[:1] + mask_shape[2:]):
    raise ValueError(f"Expected masks [B, K, H, W, 1] and true [B, H, W], "
                     f"got {jnp.shape(masks)} and {true_shape}.")
  # Squeezing happens under jit: outside it, it would copy the masks.
  return _segmentation_metrics(masks, true, num_true_labels)


# ---------------------------------------------------------------------------
# Videos ([B, T, H, W]): per-frame scores versus one partition per video.
# ---------------------------------------------------------------------------


def stack_time(masks, true):
  """A clip as one image, time stacked along the height (a slot is then one
  track: swapping objects between frames costs). ``masks [B, T, K, H, W,
  1]``, ``true [B, T, H, W]`` -> ``[B, K, T H, W, 1]``, ``[B, T H, W]``."""
  b, t, k, h, w = jnp.shape(masks)[:5]
  masks = jnp.moveaxis(masks, 2, 1).reshape(b, k, t * h, w, -1)
  return masks, jnp.reshape(true, (b, t * h, w))



@functools.partial(
    jax.jit, static_argnames=("num_pred_labels", "num_true_labels"))
def _video_contingency(pred: Array, true: Array, num_pred_labels: int,
                       num_true_labels: int) -> Array:
  # pred, true: [B, T, H, W] -> per-frame tables [B, T, P, G].
  batch, time = pred.shape[:2]
  table = _contingency(pred.reshape(batch * time, -1),
                       true.reshape(batch * time, -1), num_pred_labels,
                       num_true_labels)
  return table.reshape(batch, time, *table.shape[1:])


def _video_tables(pred, true, num_pred_labels, num_true_labels) -> Array:
  """``[B, T, H, W]`` label maps -> per-frame tables ``[B, T, P, G]``."""
  if len(jnp.shape(pred)) != 4 or jnp.shape(pred) != jnp.shape(true):
    raise ValueError(f"Expected [B, T, H, W] pred and true, got "
                     f"{jnp.shape(pred)} and {jnp.shape(true)}.")
  return _video_contingency(
      pred, true, _label_bound(pred, num_pred_labels, "num_pred_labels"),
      _label_bound(true, num_true_labels, "num_true_labels"))


def ari_per_frame(pred, true, *, foreground_only: bool = False,
                  num_pred_labels: Optional[int] = None,
                  num_true_labels: Optional[int] = None) -> Array:
  """ARI of each frame on its own (PROVIDE, IODINE, GENESIS protocols).

  Slot identities may change between frames without penalty. Average the
  result over T (and B) for a per-frame video ARI.

  Args:
    pred: int ``[B, T, H, W]``.
    true: int ``[B, T, H, W]``.
    foreground_only: drop pixels with ``true == 0``.
    num_pred_labels: static bound on ``pred`` (needed under jit).
    num_true_labels: static bound on ``true`` (needed under jit).

  Returns:
    ``[B, T]`` float32.
  """
  tables = _video_tables(pred, true, num_pred_labels, num_true_labels)
  return ari_from_contingency(tables, foreground_only=foreground_only)


def ari_per_video(pred, true, *, foreground_only: bool = False,
                  num_pred_labels: Optional[int] = None,
                  num_true_labels: Optional[int] = None) -> Array:
  """ARI of each video as one partition of its T x H x W pixels (OCLF).

  A slot that swaps objects between frames is penalised, unlike in
  `ari_per_frame`. GT labels must be track ids, stable over time.

  Args:
    pred: int ``[B, T, H, W]``.
    true: int ``[B, T, H, W]``.
    foreground_only: drop pixels with ``true == 0``.
    num_pred_labels: static bound on ``pred`` (needed under jit).
    num_true_labels: static bound on ``true`` (needed under jit).

  Returns:
    ``[B]`` float32.
  """
  tables = _video_tables(pred, true, num_pred_labels, num_true_labels)
  return ari_from_contingency(jnp.sum(tables, axis=1),
                              foreground_only=foreground_only)


def segmentation_covering_per_frame(
    pred, true, *, foreground_only: bool = False, pixel_weighted: bool = False,
    num_pred_labels: Optional[int] = None,
    num_true_labels: Optional[int] = None) -> Array:
  """`segmentation_covering` of each frame of ``[B, T, H, W]``: ``[B, T]``."""
  tables = _video_tables(pred, true, num_pred_labels, num_true_labels)
  return covering_from_contingency(tables, foreground_only=foreground_only,
                                   pixel_weighted=pixel_weighted)


@functools.partial(jax.jit, static_argnames=("num_true_labels",))
def _video_segmentation_metrics(masks: Array, true: Array,
                                num_true_labels: int) -> dict[str, Array]:
  if masks.ndim == 6:
    masks = masks[..., 0]
  pred = jnp.argmax(masks, axis=2).astype(jnp.int32)  # [B, T, H, W]
  table = _video_contingency(pred, true, masks.shape[2],
                             num_true_labels)  # [B, T, P, G]
  scores = _scores_from_table(table)
  video_table = jnp.sum(table, axis=1)  # [B, P, G]
  scores["ari_video"] = ari_from_contingency(video_table)
  scores["ari_fg_video"] = ari_from_contingency(video_table,
                                                foreground_only=True)
  return scores


def video_segmentation_metrics(masks, true, *,
                               num_true_labels: Optional[int] = None
                               ) -> dict[str, Array]:
  """`segmentation_metrics` per frame, plus per-video ARIs.

  Args:
    masks: ``[B, T, K, H, W, 1]`` (or ``[B, T, K, H, W]``) masks.
    true: int ``[B, T, H, W]`` track ids, 0 = background.
    num_true_labels: static bound on ``true`` (needed under jit).

  Returns:
    Dict with the `segmentation_metrics` keys as per-frame ``[B, T]`` scores,
    and ``ari_video``, ``ari_fg_video``: ``[B]`` ARIs of each video taken as
    one partition (`ari_per_video`).
  """
  num_true_labels = _label_bound(true, num_true_labels, "num_true_labels")
  mask_shape, true_shape = jnp.shape(masks), jnp.shape(true)
  if len(mask_shape) == 6 and mask_shape[-1] == 1:
    mask_shape = mask_shape[:-1]
  if len(mask_shape) != 5 or true_shape != mask_shape[:2] + mask_shape[3:]:
    raise ValueError(f"Expected masks [B, T, K, H, W, 1] and true "
                     f"[B, T, H, W], got {jnp.shape(masks)} and {true_shape}.")
  return _video_segmentation_metrics(masks, true, num_true_labels)


# ---------------------------------------------------------------------------
# CLEVRTEX mIoU (Hungarian matching on the host).
# ---------------------------------------------------------------------------


@jax.jit
def _iou_from_contingency(table: Array) -> tuple[Array, Array, Array]:
  # table: [B, M, M] -> IoU [B, M, M], pred sizes [B, M], true sizes [B, M].
  pred_sizes = jnp.sum(table, axis=-1)
  true_sizes = jnp.sum(table, axis=-2)
  union = pred_sizes[..., :, None] + true_sizes[..., None, :] - table
  nonempty = (pred_sizes[..., :, None] > 0) & (true_sizes[..., None, :] > 0)
  iou = jnp.where(nonempty, table / jnp.where(nonempty, union, 1.0), 0.0)
  return iou, pred_sizes, true_sizes


def miou_clevrtex(pred, true, *, num_slots: int,
                  num_true_labels: Optional[int] = None
                  ) -> dict[str, np.ndarray]:
  """CLEVRTEX's matched mIoU (``CLEVRTEX_Evaluator.update``), per image.

  Both maps are one-hot over ``M = max(num_true_labels, num_slots)`` labels
  (CLEVRTEX: ``max(true.max() + 1, K)`` over the batch), the background
  included. ``IoU[i, j]`` is 0 when either mask is empty. Per image,
  ``linear_sum_assignment(IoU.T, maximize=True)`` matches every GT index j
  to a predicted index; ``num_pairs`` counts the matched pairs where either
  side is non-empty. Then:

  - ``miou`` = sum of matched IoUs / ``num_pairs``;
  - ``miou_fg`` = the same without GT index 0, / ``(num_pairs - 1)``;
  - ``miou_gt`` = sum of matched IoUs / number of non-empty GT masks;
  - ``dice``, ``dice_fg``: matched Dice, normalised like ``miou(_fg)``;
  - ``acc``: 1.0 where the numbers of non-empty masks agree.

  As in CLEVRTEX, a ratio with a zero denominator is NaN (``miou_fg`` when
  the only pair is the background). The IoU matrices come from a jitted
  contingency table; only the matching loops over images, on the host.

  Args:
    pred: int ``[B, H, W]`` predicted slot index (argmax over K slots).
    true: int ``[B, H, W]`` GT labels, 0 = background.
    num_slots: K, the number of predicted masks.
    num_true_labels: bound on ``true``; defaults to ``true.max() + 1``.

  Returns:
    Dict of float64 ``[B]`` numpy arrays.
  """
  num_true_labels = _label_bound(true, num_true_labels, "num_true_labels")
  size = max(num_true_labels, int(num_slots))
  table = contingency_table(pred, true, num_pred_labels=size,
                            num_true_labels=size)
  iou, pred_sizes, true_sizes = jax.device_get(_iou_from_contingency(table))
  table = np.asarray(jax.device_get(table), np.float64)
  # Hungarian matching, GT rows: match[b, j] is the prediction of GT j.
  match = np.stack([
      scipy.optimize.linear_sum_assignment(iou_b.T, maximize=True)[1]
      for iou_b in iou
  ])  # [B, M]
  rows = np.arange(len(match))[:, None]  # [B, 1]
  cols = np.arange(match.shape[1])[None, :]  # [1, M]
  matched_iou = iou[rows, match, cols].astype(np.float64)  # [B, M]
  matched_inter = table[rows, match, cols]  # [B, M]
  matched_pred_sizes = pred_sizes[rows, match].astype(np.float64)  # [B, M]
  true_sizes = true_sizes.astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    dice = 2.0 * matched_inter / (matched_pred_sizes + true_sizes)
    dice = np.nan_to_num(dice, nan=0.0, posinf=0.0)
    num_pairs = np.sum((true_sizes > 0) | (matched_pred_sizes > 0), axis=1)
    num_true = np.sum(true_sizes > 0, axis=1)
    num_pred = np.sum(pred_sizes > 0, axis=1)
    return {
        "miou": matched_iou.sum(1) / num_pairs,
        "miou_fg": matched_iou[:, 1:].sum(1) / (num_pairs - 1),
        "miou_gt": matched_iou.sum(1) / num_true,
        "dice": dice.sum(1) / num_pairs,
        "dice_fg": dice[:, 1:].sum(1) / (num_pairs - 1),
        "acc": (num_true == num_pred).astype(np.float64),
    }


def miou_clevrtex_from_masks(masks, true, *,
                             masks_have_background: bool = True,
                             num_true_labels: Optional[int] = None
                             ) -> dict[str, np.ndarray]:
  """`miou_clevrtex` of soft masks ``[B, K, H, W, 1]`` against ``true``.

  With ``masks_have_background=False`` a background mask ``1 - sum_K masks``
  is prepended first (slot 0), as CLEVRTEX does for FG-only models.
  """
  masks = jnp.asarray(masks)
  if masks.ndim == 5:
    masks = masks[..., 0]
  if not masks_have_background:
    background = 1.0 - jnp.sum(masks, axis=1, keepdims=True)
    masks = jnp.concatenate([background, masks], axis=1)
  return miou_clevrtex(labels_from_masks(masks), true,
                       num_slots=masks.shape[1],
                       num_true_labels=num_true_labels)


# ---------------------------------------------------------------------------
# Reconstruction error.
# ---------------------------------------------------------------------------


def mse(recon, image) -> Array:
  """Mean squared error per pixel and channel: ``[..., H, W, C]`` -> ``[...]``.

  object-centric-library's convention; video ``[B, T, H, W, C]`` gives
  ``[B, T]``.
  """
  diff = jnp.asarray(recon, jnp.float32) - jnp.asarray(image, jnp.float32)
  return jnp.mean(jnp.square(diff), axis=(-3, -2, -1))


def mse_sum_clevrtex(recon, image) -> Array:
  """Squared error summed over H, W, C per image, as CLEVRTEX reports it.

  Images are in [0, 1]; at 128x128 the values are in the hundreds.
  ``[..., H, W, C]`` -> ``[...]``.
  """
  diff = jnp.asarray(recon, jnp.float32) - jnp.asarray(image, jnp.float32)
  return jnp.sum(jnp.square(diff), axis=(-3, -2, -1))
