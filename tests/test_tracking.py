"""Tests of ocjax.metrics.tracking: the MOT protocol of Weis et al. (2021)."""

from __future__ import annotations

import numpy as np
import pytest

from ocjax.metrics import tracking as tr

T, H, W = 6, 16, 16


def _two_objects(t=T):
  """GT with two 4x4 squares (ids 1, 2) in every frame; bg 0."""
  gt = np.zeros((t, H, W), np.int32)
  gt[:, 2:6, 2:6] = 1
  gt[:, 9:13, 9:13] = 2
  return gt


def _perfect(gt, slots=(0, 3, 5)):
  """A prediction: slot slots[0] = bg, slots[i] = object i."""
  pred = np.full_like(gt, slots[0])
  for i, s in enumerate(slots[1:], 1):
    pred[gt == i] = s
  return pred


def _check(r, **expected):
  for k, v in expected.items():
    assert r[k] == pytest.approx(v, abs=1e-9), (k, r[k], v)


# ------------------------------------------------------------- known answers


def test_perfect_tracker():
  gt = _two_objects()
  r = tr.mot_metrics(gt, _perfect(gt))
  _check(r, mota=100, motp=100, match=100, id_switches=0, false_positives=0,
         misses=0, mostly_detected=100, mostly_tracked=100, num_objects=12,
         num_tracks=2, num_frames=T, num_predictions=12)


def test_identity_swap():
  gt = _two_objects()
  pred = _perfect(gt)
  pred[3:][gt[3:] == 1], pred[3:][gt[3:] == 2] = 5, 3  # Swap from t = 3.
  r = tr.mot_metrics(gt, pred)
  # Two SWITCH events (one per object at t = 3), then MATCHes again.
  _check(r, num_switches=2, num_matches=10, num_misses=0,
         num_false_positives=0, id_switches=100 * 2 / 12,
         mota=100 * (1 - 2 / 12), match=100 * 10 / 12, motp=100)
  # Each track MATCHed in 5 of 6 frames (83% >= 80%): still mostly tracked.
  _check(r, mostly_tracked=100, mostly_detected=100)


def test_swap_breaks_mostly_tracked_not_mostly_detected():
  gt = _two_objects(t=4)
  pred = _perfect(gt)
  pred[2:][gt[2:] == 1], pred[2:][gt[2:] == 2] = 5, 3
  r = tr.mot_metrics(gt, pred)
  # 3 MATCH of 4 frames = 75% < 80%; every frame detected.
  _check(r, mostly_tracked=0, mostly_detected=100, num_switches=2)


def test_missed_object():
  gt = _two_objects()
  pred = _perfect(gt)
  pred[gt == 2] = 0  # Object 2 falls into the background slot.
  r = tr.mot_metrics(gt, pred)
  _check(r, num_misses=T, misses=50, match=50, mota=50, false_positives=0,
         mostly_tracked=50, mostly_detected=50)


def test_false_positive():
  gt = _two_objects()
  pred = _perfect(gt)
  pred[:, 13:16, 0:3] = 7  # A 9-pixel blob on the background.
  r = tr.mot_metrics(gt, pred)
  _check(r, num_false_positives=T, false_positives=50, mota=50, match=100,
         misses=0, mostly_tracked=100)


def test_disappear_and_reappear_same_slot_is_no_switch():
  gt = _two_objects()
  gt[2:4][gt[2:4] == 1] = 0  # Object 1 hidden in frames 2 and 3.
  pred = _perfect(gt)
  r = tr.mot_metrics(gt, pred)
  _check(r, num_objects=10, num_matches=10, num_switches=0, mota=100,
         mostly_tracked=100)


def test_disappear_and_reappear_new_slot_is_a_switch():
  gt = _two_objects()
  gt[2:4][gt[2:4] == 1] = 0
  pred = _perfect(gt)
  pred[4:][gt[4:] == 1] = 8  # Comes back under another slot.
  r = tr.mot_metrics(gt, pred)
  _check(r, num_objects=10, num_switches=1, num_matches=9,
         mota=100 * (1 - 1 / 10))


def test_small_masks_are_dropped():
  gt = _two_objects()
  gt[:, 0, 10:15] = 3  # 5 pixels: not a ground-truth object.
  pred = _perfect(gt)
  pred[:, 15, 0:5] = 9  # 5 pixels: not a prediction.
  r = tr.mot_metrics(gt, pred)
  _check(r, num_objects=12, num_false_positives=0, mota=100)
  gt[:, 0, 9] = 3  # 6 pixels: now it counts, and is missed.
  pred2 = _perfect(gt)
  pred2[gt == 3] = 0
  r = tr.mot_metrics(gt, pred2)
  _check(r, num_objects=18, num_misses=T)
  # Same threshold, stricter setting: min_num_pixels=6 drops it again.
  r = tr.mot_metrics(gt, pred2, min_num_pixels=6)
  _check(r, num_objects=12, num_misses=0)


def test_iou_threshold_is_inclusive():
  gt = np.zeros((1, H, W), np.int32)
  gt[0, 0:4, 0:4] = 1  # 16 pixels.
  pred = np.zeros_like(gt)
  pred[0, 0:4, 0:2] = 1  # 8 pixels inside: IoU = 8 / 16 = 0.5.
  r = tr.mot_metrics(gt, pred, exclude_background=True)
  _check(r, num_matches=1, motp=50)
  pred[0, 0:4, 0:2] = 0
  pred[0, 0:3, 0:2] = 1  # 6 pixels inside: IoU = 6 / 16 < 0.5.
  pred[0, 3, 0:2] = 2  # Keeps slot 1 above the 5-pixel floor? (6 > 5).
  r = tr.mot_metrics(gt, pred)
  _check(r, num_matches=0, num_misses=1, num_false_positives=1)


def test_background_exclusion():
  gt = _two_objects()
  pred = _perfect(gt)
  on = tr.mot_metrics(gt, pred)
  off = tr.mot_metrics(gt, pred, exclude_background=False)
  _check(on, num_false_positives=0)
  _check(off, num_false_positives=T)  # The bg slot is a false positive.
  # A slot overlapping the bg with IoU <= 0.2 stays a prediction.
  pred = _perfect(gt)
  pred[:, 13:16, 0:3] = 7
  r = tr.mot_metrics(gt, pred, background_iou_threshold=0.0)
  _check(r, num_false_positives=0)  # Removed: IoU with the bg > 0.


def test_frame_range():
  gt = _two_objects()
  pred = _perfect(gt)
  pred[0] = 0  # Frame 0 is all background: both objects missed there.
  r = tr.mot_metrics(gt, pred)
  _check(r, num_misses=2, num_frames=T)
  r = tr.mot_metrics(gt, pred, start_step=1)
  _check(r, num_misses=0, num_frames=T - 1, mota=100)
  r = tr.mot_metrics(gt, pred, start_step=2, stop_step=4)
  _check(r, num_frames=2, num_objects=4)
  with pytest.raises(ValueError, match="Frames"):
    tr.mot_metrics(gt, pred, stop_step=T + 1)


def test_videos_do_not_share_ids_and_padding_is_skipped():
  gt = np.stack([_two_objects(), _two_objects(), _two_objects()])
  pred = np.stack([_perfect(gt[0], (0, 1, 2)), _perfect(gt[1], (0, 2, 1)),
                   np.zeros_like(gt[0])])
  r = tr.mot_metrics(gt, pred, valid=[True, True, False])
  # Slot 1 tracks object 1 in video 0 and object 2 in video 1: no switch.
  _check(r, num_videos=2, num_switches=0, mota=100, num_tracks=4)


def test_labels_from_slot_masks_matches_labels():
  gt = _two_objects()
  pred = _perfect(gt, (0, 1, 2))
  masks = np.eye(3, dtype=np.float32)[pred]  # [T, H, W, K]
  masks = np.moveaxis(masks, -1, 1)[None, ..., None]  # [1, T, K, H, W, 1]
  labels = tr.labels_from_slot_masks(masks)
  np.testing.assert_array_equal(labels[0], pred)
  assert tr.mot_metrics(gt, labels[0]) == tr.mot_metrics(gt, pred)


def test_bad_inputs():
  gt = _two_objects()
  with pytest.raises(ValueError, match="integer"):
    tr.mot_metrics(gt, gt.astype(np.float32))
  with pytest.raises(ValueError, match="shape"):
    tr.mot_metrics(gt, gt[:, :8])
  ev = tr.MOTEvaluator()
  with pytest.raises(ValueError, match="No frames"):
    ev.result()


# ---------------------------------------------------------- property tests


def _random_video(rng, t=5, size=12, n_gt=3, n_slots=4):
  """Random blocky id maps, so masks are big enough to matter."""
  def blocky(n):
    coarse = rng.integers(0, n, (t, size // 3, size // 3))
    return np.repeat(np.repeat(coarse, 3, 1), 3, 2).astype(np.int32)
  gt = blocky(n_gt + 1)
  pred = np.where(rng.uniform(size=gt.shape) < 0.8, gt, blocky(n_slots))
  pred = (pred + rng.integers(0, n_slots)) % n_slots
  return gt, pred


@pytest.mark.parametrize("seed", range(4))
def test_invariant_to_relabelling(seed):
  rng = np.random.default_rng(seed)
  gt, pred = _random_video(rng)
  base = tr.mot_metrics(gt, pred)
  perm_pred = rng.permutation(10)[pred]
  perm_gt = np.concatenate([[0], 1 + rng.permutation(9)])[gt]
  for g, p in ((gt, perm_pred), (perm_gt, pred)):
    r = tr.mot_metrics(g, p)
    for k in base:
      assert r[k] == pytest.approx(base[k], nan_ok=True), k


@pytest.mark.parametrize("seed", range(6))
def test_event_bookkeeping(seed):
  rng = np.random.default_rng(100 + seed)
  gt, pred = _random_video(rng, t=6)
  r = tr.mot_metrics(gt, pred)
  # Each GT object-frame is exactly one MATCH, SWITCH or MISS.
  assert r["num_matches"] + r["num_switches"] + r["num_misses"] == (
      r["num_objects"])
  # N, the GT object-frames, counted here from the ground truth itself.
  assert r["num_objects"] == sum(len(set(np.unique(f)) - {0}) for f in gt)
  assert r["mota"] == pytest.approx(
      100 - r["misses"] - r["false_positives"] - r["id_switches"])
  assert r["mostly_tracked"] <= r["mostly_detected"]
  assert 50 <= r["motp"] <= 100 or r["num_matches"] + r["num_switches"] == 0


def _reference_mot(gt_json, pred_json, shape, exclude_bg=True):
  """The reference's algorithm (ocrb eval_mot.py), restated on its JSON."""
  import motmetrics as mm  # pylint: disable=g-import-not-at-top
  acc = mm.MOTAccumulator()
  count = 0
  for gv, pv in zip(gt_json, pred_json):
    for gf, pf in zip(gv, pv):
      preds, pids = [], []
      for rle, i in zip(pf["masks"], pf["ids"]):
        m = tr.rle_decode(rle, shape)
        if m.sum() > 5:
          preds.append(m)
          pids.append(i)
      gts, gids = [], []
      for rle, i in zip(gf["masks"], gf["ids"]):
        m = tr.rle_decode(rle, shape)
        if m.sum() > 5:
          gts.append(m)
          gids.append(i)
      ious = np.ones((len(gts), len(preds)))
      for a, g in enumerate(gts):
        for b, p in enumerate(preds):
          inter = float((g * p).sum())
          union = float(g.sum() + p.sum()) - inter
          ious[a, b] = 1.0 if union == 0 else inter / (
              union + np.finfo(float).eps)
      if exclude_bg:
        for _ in range(gf["num_bg"]):
          if ious.shape[1]:
            drop = np.nonzero(ious[-1] > 0.2)[0]
            ious = np.delete(ious, drop, 1)
            pids = [x for k, x in enumerate(pids) if k not in drop]
          ious = np.delete(ious, -1, 0)
          del gids[-1]
      d = 1.0 - ious
      d[d > 0.5] = np.nan
      acc.update(gids, pids, d, frameid=count)
      count += 1
  mh = mm.metrics.create()
  s = mh.compute(acc, metrics=["mota", "motp", "num_matches", "num_switches",
                               "num_false_positives", "num_misses",
                               "num_objects"], name="a")
  return {k: float(s[k].iloc[0]) for k in s.columns}


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_algorithm(seed):
  """Against a restatement of the reference on its own JSON records."""
  rng = np.random.default_rng(200 + seed)
  videos = [_random_video(rng, t=4, size=12) for _ in range(3)]
  gt_json, pred_json = [], []
  for v, (g, p) in enumerate(videos):
    g[:, 0, :] = 0  # Keep the background above 5 pixels in every frame.
    gt_json.append(tr.ocrb_frames(g, ground_truth=True, id_offset=v * 100))
    pred_json.append(tr.ocrb_frames(p, ground_truth=False,
                                    id_offset=v * 100))
  ref = _reference_mot(gt_json, pred_json, (12, 12))
  mine = tr.mot_metrics(np.stack([g for g, _ in videos]),
                        np.stack([p for _, p in videos]))
  for k in ("num_matches", "num_switches", "num_false_positives",
            "num_misses", "num_objects"):
    assert mine[k] == ref[k], k
  assert mine["mota"] == pytest.approx(100 * ref["mota"])
  assert mine["motp"] == pytest.approx(100 * (1 - ref["motp"]))


def test_rle_round_trip():
  rng = np.random.default_rng(0)
  for _ in range(20):
    m = rng.uniform(size=(7, 9)) < rng.uniform()
    np.testing.assert_array_equal(tr.rle_decode(tr.rle_encode(m), (7, 9)), m)
  assert tr.rle_encode(np.array([[0, 1], [1, 0]])) == "2 2"


def test_per_frame_vs_per_video_ari_on_a_swap():
  """A swap is invisible per frame and visible per video (and to MOT)."""
  from ocjax.metrics import segmentation as seg  # pylint: disable=g-import-not-at-top
  gt = _two_objects()
  pred = _perfect(gt, (0, 1, 2))
  pred[3:][gt[3:] == 1], pred[3:][gt[3:] == 2] = 2, 1
  per_frame = np.asarray(seg.ari_per_frame(pred[None], gt[None],
                                           foreground_only=True))
  per_video = np.asarray(seg.ari_per_video(pred[None], gt[None],
                                           foreground_only=True))
  np.testing.assert_allclose(per_frame, 1.0, atol=1e-6)
  assert float(np.ravel(per_video)[0]) < 0.99
  assert tr.mot_metrics(gt, pred)["num_switches"] == 2
