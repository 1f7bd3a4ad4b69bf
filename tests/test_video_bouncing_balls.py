"""Tests of the Bouncing Balls datasets (procedural and R-NEM's HDF5)."""

from __future__ import annotations

import numpy as np
import pytest

import data_pipelines
from data_pipelines import bouncing_balls as bb
from data_pipelines import bouncing_balls_rnem as rnem


def _small(**kw):
  c = bb.default_config()
  c.update(dict(image_size=32, episode_length=10, num_frames=8,
                num_train=20, num_validation=5, num_test=6, substeps=4))
  c.update(kw)
  return c


def _batches(config, split, n, **kw):
  kw.setdefault("batch_size", 4)
  kw.setdefault("seed", 0)
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  ds = data_pipelines.get_dataset(config, split, **kw)
  return list(ds.take(n).as_numpy_iterator())


def test_batch_contract():
  (b,) = _batches(_small(), "train", 1)
  assert set(b) == {"video", "segmentation"}
  assert b["video"].shape == (4, 8, 32, 32, 3)
  assert b["video"].dtype == np.float32
  assert 0 <= b["video"].min() and b["video"].max() <= 1
  assert b["segmentation"].shape == (4, 8, 32, 32)
  assert b["segmentation"].dtype == np.int32
  # Binary variant: grey frames; white exactly where a ball is.
  np.testing.assert_array_equal(b["video"][..., 0], b["video"][..., 2])
  np.testing.assert_array_equal(b["video"][..., 0] > 0,
                                b["segmentation"] > 0)


def test_episodes_are_deterministic_and_split_specific():
  spec = bb.spec_from_config(_small())
  a = bb.generate_episode(spec, "train", 3)
  np.testing.assert_array_equal(a["video"],
                                bb.generate_episode(spec, "train", 3)["video"])
  assert not np.array_equal(a["video"],
                            bb.generate_episode(spec, "test", 3)["video"])
  other = bb.spec_from_config(_small(content_seed=1))
  assert not np.array_equal(a["video"],
                            bb.generate_episode(other, "train", 3)["video"])


def test_physics_is_elastic_and_contained():
  spec = bb.spec_from_config(_small(image_size=64, episode_length=200,
                                    speed=(3.0, 4.0)))
  rng = np.random.default_rng(0)
  pos, vel, radii, masses = bb.simulate(rng, 6, spec)
  energy = 0.5 * (masses * (vel ** 2).sum(-1)).sum(-1)  # [T]
  np.testing.assert_allclose(energy, energy[0], rtol=1e-9)
  assert np.all(pos >= radii[None, :, None] - 1e-9)
  assert np.all(pos <= 64 - radii[None, :, None] + 1e-9)
  # Ball-ball collisions happened (a speed changed away from the walls)
  # and they conserve momentum: check the pair impulse directly.
  speeds = np.linalg.norm(vel, axis=-1)
  assert np.any(np.abs(np.diff(speeds, axis=0)) > 1e-6)
  iu, ju = np.triu_indices(6, 1)
  gaps = (np.linalg.norm(pos[:, iu] - pos[:, ju], axis=-1)
          - radii[iu] - radii[ju])
  assert gaps.min() > -2.0  # Overlaps are resolved within a frame.


def test_radius_follows_mass():
  spec = bb.spec_from_config(_small())
  _, _, radii, masses = bb.simulate(np.random.default_rng(1), 4, spec)
  np.testing.assert_allclose(radii, spec.radius * masses ** (1 / 3))


def test_track_ids_are_stable():
  spec = bb.spec_from_config(_small(image_size=64, episode_length=30))
  ep = bb.generate_episode(spec, "train", 0)
  seg = ep["segmentation"]
  assert set(np.unique(seg[0])) == {0, 1, 2, 3, 4}
  yy, xx = np.mgrid[:64, :64]
  for i in range(1, 5):  # Each id's centroid moves by at most ~max speed.
    cents = []
    for t in range(30):
      m = seg[t] == i
      if m.sum() > 10:
        cents.append((t, yy[m].mean(), xx[m].mean()))
    steps = [np.hypot(b[1] - a[1], b[2] - a[2]) / (b[0] - a[0])
             for a, b in zip(cents, cents[1:])]
    assert max(steps) < 6.0


def test_generalisation_and_colour_variants():
  c = _small(variant="colour", num_colours=8, test_num_balls=(6, 8),
             image_size=64)
  spec = bb.spec_from_config(c)
  for i in range(4):
    ep = bb.generate_episode(spec, "test", i)
    n = ep["num_objects"]
    assert 6 <= n <= 8
    colours = [tuple(ep["video"][0][ep["segmentation"][0] == k][0])
               for k in range(1, n + 1) if (ep["segmentation"][0] == k).any()]
    assert len(set(colours)) == len(colours)  # 8 colours: all distinct.
    assert set(colours) <= {tuple(p) for p in bb.PALETTE}
  c4 = _small(variant="colour", num_colours=4, test_num_balls=(6, 8),
              image_size=64)
  spec4 = bb.spec_from_config(c4)
  ep = bb.generate_episode(spec4, "test", 0)
  used = {tuple(v) for v in ep["video"].reshape(-1, 3)} - {(0, 0, 0)}
  assert used <= {tuple(p) for p in bb.PALETTE[:4]}  # Colours repeat.
  assert bb.generate_episode(spec4, "train", 0)["num_objects"] == 4


def test_presets_and_validation():
  assert bb.preset_config("binary678").test_num_balls == (6, 8)
  with pytest.raises(ValueError, match="preset"):
    bb.preset_config("nope")
  with pytest.raises(ValueError, match="data.variant"):
    bb.spec_from_config(_small(variant="rainbow"))
  with pytest.raises(ValueError, match="do not fit"):
    bb.spec_from_config(_small(radius=20.0))
  with pytest.raises(ValueError, match="num_frames"):
    _batches(_small(num_frames=11), "train", 1)


def test_resume_and_process_shards_are_exact():
  c = _small()
  full = _batches(c, "train", 7)
  resumed = _batches(c, "train", 2, start_step=5)
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(a["video"], b["video"])
  halves = [_batches(c, "train", 7, process_index=p, process_count=2)
            for p in range(2)]
  for s in (0, 6):
    np.testing.assert_array_equal(
        np.concatenate([halves[0][s]["segmentation"],
                        halves[1][s]["segmentation"]]),
        full[s]["segmentation"])


def test_evaluation_is_finite_and_padded():
  out = _batches(_small(), "test", 100, batch_size=4)
  assert len(out) == 2  # 6 test videos.
  np.testing.assert_array_equal(out[1]["valid"], [True, True, False, False])
  assert out[1]["video"][2:].max() == 0


# ---------------------------------------------------------------- R-NEM HDF5


def _write_rnem(path, t=7, n=(5, 3, 4), size=16, feat_dtype=np.float32,
                group_dtype=np.float32, seed=0):
  """A tiny file in R-NEM's layout: time-major [T, N, H, W, 1]."""
  import h5py  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  truth = {}
  with h5py.File(path, "w") as f:
    for group, count in zip(("training", "validation", "test"), n):
      ids = np.zeros((t, count, size, size, 1), np.int64)
      for v in range(count):
        for ball in range(1, 4):
          y, x = rng.integers(2, size - 4, 2)
          dy, dx = rng.integers(-1, 2, 2)
          for s in range(t):
            yy, xx = np.clip(y + dy * s, 0, size - 3), np.clip(
                x + dx * s, 0, size - 3)
            ids[s, v, yy:yy + 3, xx:xx + 3, 0] = ball
      feats = (ids > 0)
      g = f.create_group(group)
      g.create_dataset("features", data=feats.astype(feat_dtype))
      g.create_dataset("groups", data=ids.astype(group_dtype))
      g.create_dataset("collisions", data=np.zeros((t, count, 1)))
      truth[group] = ids[..., 0]
  return truth


def _rnem_config(data_dir, **kw):
  c = rnem.default_config()
  c.update(dict(data_dir=str(data_dir), file="balls4mass64.h5",
                num_frames=5))
  c.update(kw)
  return c


@pytest.mark.parametrize("feat_dtype,group_dtype", [
    (np.float32, np.float32), (bool, np.uint8), (np.uint8, np.int64)])
def test_rnem_reader(tmp_path, feat_dtype, group_dtype):
  truth = _write_rnem(tmp_path / "balls4mass64.h5", feat_dtype=feat_dtype,
                      group_dtype=group_dtype)
  c = _rnem_config(tmp_path)
  assert data_pipelines.num_examples(c, "train") == 5
  assert data_pipelines.num_examples(c, "test") == 4
  (b,) = _batches(c, "validation", 5, batch_size=3)
  np.testing.assert_array_equal(b["valid"], [True, True, True])
  want = np.moveaxis(truth["validation"], 1, 0)[:, :5]  # [N, 5, H, W]
  np.testing.assert_array_equal(b["segmentation"], want)
  np.testing.assert_array_equal(b["video"][..., 1], (want > 0) * 1.0)


def test_rnem_colour_variant_and_test_file(tmp_path):
  _write_rnem(tmp_path / "balls4mass64.h5")
  truth678 = _write_rnem(tmp_path / "balls678mass64.h5", n=(1, 1, 2), seed=5)
  c = _rnem_config(tmp_path, variant="colour", num_colours=4,
                   test_file="balls678mass64.h5")
  (b,) = _batches(c, "test", 1, batch_size=2)
  np.testing.assert_array_equal(
      b["segmentation"], np.moveaxis(truth678["test"], 1, 0)[:, :5])
  video = np.round(b["video"] * 255).astype(np.uint8)
  fg = b["segmentation"] > 0
  assert {tuple(v) for v in video[fg]} <= {tuple(p) for p in bb.PALETTE[:4]}
  assert video[~fg].max() == 0
  again = _batches(c, "test", 1, batch_size=2)[0]
  np.testing.assert_array_equal(again["video"], b["video"])


def test_rnem_errors(tmp_path):
  with pytest.raises(ValueError, match="data_dir is empty"):
    data_pipelines.num_examples(rnem.default_config(), "train")
  with pytest.raises(FileNotFoundError, match="balls4mass64.h5"):
    data_pipelines.num_examples(_rnem_config(tmp_path), "train")
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(tmp_path / "balls4mass64.h5", "w") as f:
    f.create_group("training").create_dataset("features",
                                              data=np.zeros((3, 2, 4, 4, 1)))
  with pytest.raises(ValueError, match="training/groups is missing"):
    data_pipelines.num_examples(_rnem_config(tmp_path), "train")
  with pytest.raises(ValueError, match="group 'test' is missing"):
    data_pipelines.num_examples(_rnem_config(tmp_path), "test")
  _write_rnem(tmp_path / "other.h5", t=4)
  with pytest.raises(ValueError, match="num_frames=5 exceeds"):
    _batches(_rnem_config(tmp_path, file="other.h5"), "train", 1)
