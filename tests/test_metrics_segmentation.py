"""Tests for ocjax.metrics.segmentation (ARI, MSC, mIoU, MSE)."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from sklearn.metrics import adjusted_rand_score

from ocjax.metrics import segmentation as seg

_SCORES = ("ari", "ari_fg", "msc", "msc_fg", "msc_scaled", "msc_fg_scaled")


def _sklearn_ari(pred, true, foreground_only=False):
  """Per-image sklearn ARI of [B, ...] label maps."""
  scores = []
  for p, t in zip(pred.reshape(len(pred), -1), true.reshape(len(true), -1)):
    keep = t > 0 if foreground_only else np.ones_like(t, bool)
    scores.append(adjusted_rand_score(t[keep], p[keep]))
  return np.array(scores)


# ---------------------------------------------------------------------------
# GENESIS reference values.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genesis_metric_cases(genesis_v2_reference):
  data = genesis_v2_reference  # conftest: $OCJAX_FIXTURES or shared/
  return [{key[len(f"metric/case{c}/"):]: data[key]
           for key in data if key.startswith(f"metric/case{c}/")}
          for c in range(int(data["metric/num_cases"]))]


def test_genesis_reference_metrics(genesis_metric_cases):
  assert len(genesis_metric_cases) == 4
  for case in genesis_metric_cases:
    log_m = case["log_m"][..., None]  # [B, K, H, W, 1]
    # The argmaxes the reference used (ARI of exp(log_m), MSC of log_m).
    np.testing.assert_array_equal(
        seg.labels_from_masks(np.exp(log_m)), case["pred_argmax_ari"])
    np.testing.assert_array_equal(
        seg.labels_from_masks(log_m), case["pred_argmax_msc"])
    scores = seg.segmentation_metrics(log_m, case["gt"])
    for name in _SCORES:
      got = np.asarray(scores[name], np.float64)
      err_msg = f"{case['name']}: {name}"
      np.testing.assert_allclose(got, case[f"{name}_per_image"], rtol=0,
                                 atol=1e-6, err_msg=err_msg)
      np.testing.assert_allclose(got.mean(), case[name], rtol=0, atol=1e-6,
                                 err_msg=err_msg)


def test_genesis_reference_ari_from_soft_masks(genesis_metric_cases):
  for case in genesis_metric_cases:
    masks = np.exp(case["log_m"])[..., None]
    for fg, key in ((False, "ari_per_image"), (True, "ari_fg_per_image")):
      got = seg.ari_from_masks(masks, case["gt"], foreground_only=fg)
      np.testing.assert_allclose(got, case[key], rtol=0, atol=1e-6)


def test_genesis_reference_covering_functions(genesis_metric_cases):
  for case in genesis_metric_cases:
    pred, true = case["pred_argmax_msc"], case["gt"]
    for fg in (False, True):
      name = "msc_fg" if fg else "msc"
      np.testing.assert_allclose(
          seg.msc(pred, true, foreground_only=fg),
          case[f"{name}_per_image"], rtol=0, atol=1e-6)
      np.testing.assert_allclose(
          seg.msc_scaled(pred, true, foreground_only=fg),
          case[f"{name}_scaled_per_image"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------
# ARI against sklearn.
# ---------------------------------------------------------------------------


class AriTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_sklearn_on_random_cases(self):
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 64, 7, 64, 64):
      # Labels below random counts; the bounds stay 10 (unused labels are
      # empty rows and columns of the table) so each size compiles once.
      num_true, num_pred = (int(k) for k in rng.integers(1, 11, 2))
      true = rng.integers(0, num_true, (3, size, size))
      # A noisy relabelling of the GT, so the ARIs spread over [0, 1].
      noise = rng.integers(0, num_pred, true.shape)
      pred = np.where(rng.random(true.shape) < rng.random(), true % num_pred,
                      noise)
      for fg in (False, True):
        fn = self.variant(functools.partial(
            seg.ari, foreground_only=fg, num_pred_labels=10,
            num_true_labels=10))
        np.testing.assert_allclose(fn(pred, true),
                                   _sklearn_ari(pred, true, fg),
                                   rtol=0, atol=1e-6)

  def test_precision_on_large_images_with_few_fg_pixels(self):
    # Large, nearly single-cluster partitions are where a naive float32
    # expected-index formula loses digits.
    rng = np.random.default_rng(1)
    for size in (128, 256):
      true = np.zeros((2, size, size), np.int32)
      for obj in range(1, 6):
        y, x = rng.integers(0, size - 8, 2)
        true[:, y:y + int(rng.integers(1, 8)), x:x + 5] = obj
      pred = np.where(rng.random(true.shape) < 0.9, true % 4, 0)
      pred[1] = np.where(rng.random((size, size)) < 0.01, 3, 0)
      for fg in (False, True):
        np.testing.assert_allclose(
            seg.ari(pred, true, foreground_only=fg),
            _sklearn_ari(pred, true, fg), rtol=0, atol=1e-6)

  @parameterized.named_parameters(
      # [1, H, W] pred, true, foreground_only, expected (= sklearn).
      ("empty_foreground", [[0, 1, 2, 3]], [[0, 0, 0, 0]], True, 1.0),
      ("one_fg_pixel", [[0, 1, 2, 3]], [[0, 0, 5, 0]], True, 1.0),
      ("single_cluster_both", [[2, 2, 2, 2]], [[1, 1, 1, 1]], False, 1.0),
      ("identical_relabelled", [[3, 3, 0, 1]], [[1, 1, 2, 0]], False, 1.0),
      ("split_single_gt", [[0, 0, 1, 1]], [[4, 4, 4, 4]], False, 0.0),
      ("constant_prediction", [[0, 0, 0, 0]], [[1, 1, 2, 2]], False, 0.0),
      ("one_pixel_image", [[5]], [[2]], False, 1.0),
  )
  def test_edge_cases(self, pred, true, fg, expected):
    pred, true = np.array([pred]), np.array([true])  # [1, 1, N]
    np.testing.assert_allclose(
        _sklearn_ari(pred, true, fg), [expected], atol=1e-12)
    np.testing.assert_allclose(
        seg.ari(pred, true, foreground_only=fg), [expected], atol=1e-7)

  def test_negative_true_labels_are_ignored(self):
    pred = np.array([[0, 0, 1, 1, 1, 0]])
    true = np.array([[1, 1, 2, 2, -1, -1]])
    np.testing.assert_allclose(seg.ari(pred, true), [1.0])

  def test_needs_static_bounds_under_jit(self):
    pred = true = jnp.zeros((2, 4, 4), jnp.int32)
    with self.assertRaisesRegex(ValueError, "num_pred_labels"):
      jax.jit(seg.ari)(pred, true)
    fn = jax.jit(functools.partial(seg.segmentation_metrics,
                                   num_true_labels=3))
    self.assertEqual(fn(jnp.ones((2, 5, 4, 4, 1)), true)["ari"].shape, (2,))

  def test_rejects_video_shaped_input(self):
    with self.assertRaisesRegex(ValueError, "per_frame"):
      seg.ari(np.zeros((2, 3, 4, 4), int), np.zeros((2, 3, 4, 4), int))

  def test_argmax_ties_go_to_the_lowest_slot(self):
    masks = np.zeros((1, 3, 1, 2, 1), np.float32)
    masks[0, 1:, 0, 1] = 0.5  # pixel 1: slots 1 and 2 tie
    np.testing.assert_array_equal(seg.labels_from_masks(masks), [[[0, 1]]])


# ---------------------------------------------------------------------------
# Segmentation covering.
# ---------------------------------------------------------------------------


def _reference_covering(pred, true, foreground_only, pixel_weighted):
  """Loop-based covering straight from the GENESIS definition."""
  scores = []
  for p, t in zip(pred, true):
    labels = np.unique(t[t > 0] if foreground_only else t[t >= 0])
    total, norm = 0.0, 0.0
    for i in labels:
      a = t == i
      best = 0.0
      for j in np.unique(p):
        b = (p == j) & (t >= 0)
        union = (a | b).sum()
        if union:
          best = max(best, (a & b).sum() / union)
      weight = a.sum() if pixel_weighted else 1.0
      total += weight * best
      norm += weight
    scores.append(total / max(norm, 1.0))
  return np.array(scores)


class CoveringTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed(self):
    # GT 0 = left 2x2 block (4 px), GT 1 and GT 2 = the right cells of row 0
    # and row 1 (2 px each). Prediction: slot 0 = GT 0 exactly, slot 1 = the
    # whole right half (4 px).
    #   IoU(GT0) = 1; IoU(GT1) = IoU(GT2) = 2 / 4 = 0.5.
    #   msc           = (1 + .5 + .5) / 3           = 2/3
    #   msc_fg        = (.5 + .5) / 2               = 0.5
    #   msc_scaled    = (4*1 + 2*.5 + 2*.5) / 8     = 0.75
    #   msc_fg_scaled = (2*.5 + 2*.5) / 4           = 0.5
    true = np.array([[[0, 0, 1, 1], [0, 0, 2, 2]]])
    pred = np.array([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    expected = {(False, False): 2 / 3, (True, False): 0.5,
                (False, True): 0.75, (True, True): 0.5}
    for (fg, weighted), value in expected.items():
      fn = self.variant(functools.partial(
          seg.segmentation_covering, foreground_only=fg,
          pixel_weighted=weighted, num_pred_labels=2, num_true_labels=3))
      np.testing.assert_allclose(fn(pred, true), [value], rtol=1e-6)

  def test_hand_computed_ignored_pixels_and_empty_images(self):
    # Image 0: GT 1 = pixels {0, 1}; pixels 2, 3 are ignored (label -1).
    #   slot 0 = {0}: IoU = 1/2. slot 1 = {1, 2, 3} ∩ {true >= 0} = {1}:
    #   IoU = 1/2 (it would be 1/4 if the ignored pixels counted).
    #   msc = msc_fg = 0.5 (label 0 is absent, so FG changes nothing).
    # Image 1: background only: msc = IoU(GT0, slot 0 = all) = 1, msc_fg = 0.
    # Image 2: every pixel ignored: no GT segment, so 0.
    true = np.array([[1, 1, -1, -1], [0, 0, 0, 0], [-1, -1, -1, -1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1]])
    np.testing.assert_allclose(seg.msc(pred, true), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(seg.msc(pred, true, foreground_only=True),
                               [0.5, 0.0, 0.0])
    np.testing.assert_allclose(seg.msc_scaled(pred, true), [0.5, 1.0, 0.0])

  def test_matches_loop_reference(self):
    rng = np.random.default_rng(2)
    for _ in range(6):
      true = rng.integers(-1, 6, (3, 12, 12))
      true[0] = np.minimum(true[0], 0)  # an image without foreground
      pred = np.where(rng.random(true.shape) < 0.7, np.abs(true) % 4,
                      rng.integers(0, 4, true.shape))
      for fg in (False, True):
        for weighted in (False, True):
          np.testing.assert_allclose(
              seg.segmentation_covering(pred, true, foreground_only=fg,
                                        pixel_weighted=weighted),
              _reference_covering(pred, true, fg, weighted), atol=1e-6)


# ---------------------------------------------------------------------------
# CLEVRTEX mIoU.
# ---------------------------------------------------------------------------


def _reference_miou(pred, true, num_slots):
  """CLEVRTEX protocol with explicit binary masks and loops."""
  size = max(int(true.max()) + 1, num_slots)
  out = {k: [] for k in ("miou", "miou_fg", "miou_gt", "dice", "dice_fg",
                         "acc")}
  for p, t in zip(pred, true):
    pm = np.stack([p == i for i in range(size)])  # [M, H, W] bool
    tm = np.stack([t == j for j in range(size)])
    iou = np.zeros((size, size), np.float32)
    for i in range(size):
      for j in range(size):
        if pm[i].any() and tm[j].any():
          iou[i, j] = np.float32((pm[i] & tm[j]).sum()) / np.float32(
              (pm[i] | tm[j]).sum())
    gt_ind, pred_ind = scipy.optimize.linear_sum_assignment(iou.T,
                                                            maximize=True)
    ious = iou.T[gt_ind, pred_ind].astype(np.float64)
    pm = pm[pred_ind]
    pairs = sum(tm[j].any() or pm[j].any() for j in range(size))
    dice = np.array([
        2 * (pm[j] & tm[j]).sum() / (pm[j].sum() + tm[j].sum())
        if pm[j].any() or tm[j].any() else 0.0 for j in range(size)])
    num_true = sum(m.any() for m in tm)
    out["miou"].append(ious.sum() / pairs)
    out["miou_fg"].append(ious[1:].sum() / (pairs - 1))
    out["miou_gt"].append(ious.sum() / num_true)
    out["dice"].append(dice.sum() / pairs)
    out["dice_fg"].append(dice[1:].sum() / (pairs - 1))
    out["acc"].append(float(num_true == sum(m.any() for m in pm)))
  return {k: np.array(v) for k, v in out.items()}


def test_miou_hand_computed():
  # GT: 0 = left 2x2 block, 1 and 2 = right cells of rows 0 and 1. K = 3
  # slots: slot 2 = left block, slot 0 = right half, slot 1 empty. M = 3.
  # IoU (pred rows x GT cols) = [[0, .5, .5], [0, 0, 0], [1, 0, 0]].
  # Best matching: GT0-slot2 (1), GT1/GT2 share slot 0 (.5) and slot 1 (0):
  #   miou    = (1 + .5 + 0) / 3 pairs = 0.5
  #   miou_fg = .5 / (3 - 1)           = 0.25
  #   miou_gt = 1.5 / 3 non-empty GT   = 0.5
  #   dice    = (2*4/8 + 2*2/(4+2) + 0) / 3 = (1 + 2/3) / 3 = 5/9
  #   dice_fg = (2/3) / 2              = 1/3
  #   acc     = 0 (2 non-empty slots, 3 non-empty GT masks)
  true = np.array([[[0, 0, 1, 1], [0, 0, 2, 2]]])
  pred = np.array([[[2, 2, 0, 0], [2, 2, 0, 0]]])
  got = seg.miou_clevrtex(pred, true, num_slots=3)
  expected = {"miou": 0.5, "miou_fg": 0.25, "miou_gt": 0.5, "dice": 5 / 9,
              "dice_fg": 1 / 3, "acc": 0.0}
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], [value], rtol=1e-6, err_msg=key)


def test_miou_hand_computed_with_padding():
  # 1x4 image, GT = [0, 0, 0, 1], every pixel in slot 3 of K = 4: M = 4.
  # IoU(slot 3, GT0) = 3/4, IoU(slot 3, GT1) = 1/4; the matching gives
  # GT0 -> slot 3 and GT1 -> an empty slot. Only the pairs of GT0 and GT1
  # have a non-empty side, so num_pairs = 2:
  #   miou = .75 / 2 = 0.375, miou_fg = 0 / 1 = 0, miou_gt = .75 / 2.
  got = seg.miou_clevrtex(np.array([[3, 3, 3, 3]]), np.array([[0, 0, 0, 1]]),
                          num_slots=4)
  np.testing.assert_allclose(got["miou"], [0.375])
  np.testing.assert_allclose(got["miou_fg"], [0.0])
  np.testing.assert_allclose(got["miou_gt"], [0.375])


def test_miou_matches_loop_reference():
  rng = np.random.default_rng(3)
  for num_slots, num_true in ((4, 3), (6, 9), (7, 7)):
    true = rng.integers(0, num_true, (5, 10, 10))
    true[0] = np.where(true[0] > 1, 0, true[0])
    pred = np.where(rng.random(true.shape) < 0.6,
                    (true * 3 + 1) % num_slots,
                    rng.integers(0, num_slots, true.shape))
    got = seg.miou_clevrtex(pred, true, num_slots=num_slots)
    ref = _reference_miou(pred, true, num_slots)
    for key in ref:
      np.testing.assert_allclose(got[key], ref[key], rtol=1e-12,
                                 err_msg=key)


def test_miou_from_masks_without_background():
  # Two FG slots; the prepended background 1 - sum wins where both are low.
  masks = np.array([[0.9, 0.1, 0.0, 0.2], [0.05, 0.8, 0.1, 0.1]])
  masks = masks.reshape(1, 2, 1, 4, 1)  # [B, K, H, W, 1]
  true = np.array([[[1, 2, 0, 0]]])
  got = seg.miou_clevrtex_from_masks(masks, true, masks_have_background=False)
  # Labels: [1, 2, 0, 0] = true, so every score is perfect.
  for key in ("miou", "miou_fg", "miou_gt", "dice", "acc"):
    np.testing.assert_allclose(got[key], [1.0], err_msg=key)


# ---------------------------------------------------------------------------
# Videos.
# ---------------------------------------------------------------------------


def test_video_slot_swap():
  # Two frames with the same two objects (track ids 1, 2); the model's
  # slots swap objects between frames. Each frame alone is perfect. As one
  # partition of 8 pixels the table is [[2, 2], [2, 2]] (rows: slots,
  # columns: objects). Ordered pair counts: tp = 4 * 2*1 = 8,
  # fn = fp = 4 * 2*(4 - 2) = 16, tn = 4 * 2*(8 - 4 - 4 + 2) = 16, so
  # ARI = 2 (8*16 - 16*16) / ((8+16)(16+16) * 2) = -256 / 1536 = -1/6.
  true = np.array([[[[1, 1], [2, 2]], [[1, 1], [2, 2]]]])  # [B, T, H, W]
  pred = np.array([[[[0, 0], [1, 1]], [[1, 1], [0, 0]]]])
  np.testing.assert_allclose(seg.ari_per_frame(pred, true), [[1.0, 1.0]])
  np.testing.assert_allclose(seg.ari_per_video(pred, true), [-1 / 6],
                             rtol=1e-6)
  np.testing.assert_allclose(
      seg.ari_per_video(pred, true, foreground_only=True), [-1 / 6],
      rtol=1e-6)
  np.testing.assert_allclose(
      adjusted_rand_score(true.ravel(), pred.ravel()), -1 / 6)


def test_video_metrics_match_image_metrics():
  rng = np.random.default_rng(4)
  masks = rng.random((2, 3, 5, 8, 8, 1)).astype(np.float32)
  true = rng.integers(0, 4, (2, 3, 8, 8))
  got = seg.video_segmentation_metrics(masks, true)
  frames = seg.segmentation_metrics(masks.reshape(6, 5, 8, 8, 1),
                                    true.reshape(6, 8, 8))
  for name in _SCORES:
    np.testing.assert_allclose(got[name], np.reshape(frames[name], (2, 3)),
                               rtol=1e-6)
  pred = np.argmax(masks[..., 0], axis=2)
  np.testing.assert_allclose(got["ari_video"],
                             _sklearn_ari(pred, true), atol=1e-6)
  np.testing.assert_allclose(got["ari_fg_video"],
                             _sklearn_ari(pred, true, True), atol=1e-6)
  np.testing.assert_allclose(
      seg.segmentation_covering_per_frame(pred, true, foreground_only=True),
      np.reshape(frames["msc_fg"], (2, 3)), rtol=1e-6)


# ---------------------------------------------------------------------------
# Reconstruction error.
# ---------------------------------------------------------------------------


def test_mse():
  image = np.zeros((2, 2, 2, 3), np.float32)
  recon = image.copy()
  recon[0, 0, 0, 0] = 0.5  # one squared error of .25 over 12 values
  recon[1] = 1.0  # 12 squared errors of 1
  np.testing.assert_allclose(seg.mse(recon, image), [0.25 / 12, 1.0])
  np.testing.assert_allclose(seg.mse_sum_clevrtex(recon, image), [0.25, 12])
  video = np.broadcast_to(recon[:, None], (2, 4, 2, 2, 3))
  np.testing.assert_allclose(seg.mse(video, np.zeros_like(video)),
                             np.repeat([[0.25 / 12], [1.0]], 4, axis=1))


if __name__ == "__main__":
  absltest.main()
