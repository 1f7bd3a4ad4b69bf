"""Sketchy: JPEG episode TFRecords, App. D crops, episode-level splits."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import data_pipelines
from data_pipelines import sketchy
from data_pipelines import stream
import test_data_utils as u

NUM_EPISODES = 10
FRAMES = 2


def _frame(rng, tag):
  yy, xx = np.mgrid[:600, :960]
  img = np.stack([(np.sin(xx / (9.0 + tag)) * 100 + 128),
                  (np.cos(yy / 7.0) * 100 + 128),
                  ((xx + yy + 13 * tag) % 256)], -1)
  img = img + rng.integers(0, 8, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def _timestep(rng, tag):
  """A timestep with the published features (sketchy.py's _FEATURES)."""
  t = stream.tf()
  fl, fr = _frame(rng, tag), _frame(rng, tag + 1)[::-1]
  small = u.jpeg_bytes(np.zeros((8, 8, 3), np.uint8))
  floats = {"actions": 7, "gripper/joints/velocity": 1,
            "gripper/joints/torque": 1, "gripper/joints/angle": 1,
            "sawyer/joints/velocity": 7, "sawyer/pinch/pose": 7,
            "sawyer/tcp/pose": 7, "sawyer/tcp/effort": 6,
            "sawyer/joints/torque": 7, "sawyer/tcp/velocity": 6,
            "sawyer/joints/angle": 7, "wrist/torque": 3, "wrist/force": 3}
  feats = {k: u.float_feature(rng.random(n)) for k, n in floats.items()}
  feats["gripper/grasp"] = t.train.Feature(
      int64_list=t.train.Int64List(value=[1]))
  feats["pixels/royale_camera_driver_depth"] = u.float_feature(
      rng.random((171, 224, 1)))
  feats["pixels/basket_front_left"] = u.bytes_feature([u.jpeg_bytes(fl)])
  feats["pixels/basket_front_right"] = u.bytes_feature([u.jpeg_bytes(fr)])
  for k in ("pixels/basket_back_left", "pixels/royale_camera_driver_gray",
            "pixels/usbcam0", "pixels/usbcam1"):
    feats[k] = u.bytes_feature([small])
  return u.example(feats)


def write_sketchy(root):
  """Episode files (names like the published ones) under root/records/."""
  rng = np.random.default_rng(0)
  names = []
  for e in range(NUM_EPISODES):
    name = f"{10000313341320364033 + 7919 * (e * 37 % 11)}_b615a417-{e:04d}"
    u.write_tfrecord(os.path.join(root, "records", name),
                     [_timestep(rng, e * FRAMES + t) for t in range(FRAMES)])
    names.append(name)
  open(os.path.join(root, "records", "metadata.sqlite"), "w").close()
  return sorted(names)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("sketchy"))
  return root, write_sketchy(root)


def _config(root, **kw):
  c = sketchy.default_config()
  c.data_dir = root
  for k, v in kw.items():
    c[k] = v
  return c


def test_episode_split_as_genesis(data):
  root, names = data
  c = _config(root)
  split = {s: [os.path.basename(f) for f in sketchy.split_episodes(c, s)]
           for s in ("train", "validation", "test")}
  # Sorted episodes: first 10% validation, next 10% test, the rest train.
  assert split["validation"] == names[:1]
  assert split["test"] == names[1:2]
  assert split["train"] == names[2:]
  assert data_pipelines.num_examples(c, "train") == 8 * FRAMES * 14
  assert data_pipelines.num_examples(c, "test") == FRAMES * 14
  # With a seed: still 1/1/8 episodes, disjoint, covering all.
  c.split_seed = 3
  seeded = {s: [os.path.basename(f) for f in sketchy.split_episodes(c, s)]
            for s in ("train", "validation", "test")}
  assert sorted(sum(seeded.values(), [])) == names
  assert [len(seeded[s]) for s in ("train", "validation", "test")] == [8, 1, 1]


def test_app_d_crops():
  w = sketchy.crop_windows()
  # Front-left: rows 71..518, cols 144..815 (448x672); centre 448 square.
  assert w[0, 0].tolist() == [71, 144 + 112, 448]
  assert w[1, 0].tolist() == [91, 144 + 112, 448]
  # Six 352 squares: top/bottom x left/centre/right of the 448x672 crop.
  assert [tuple(x) for x in w[0, 1:]] == [
      (71, 144, 352), (71, 304, 352), (71, 464, 352),
      (167, 144, 352), (167, 304, 352), (167, 464, 352)]


def test_images_match_genesis_preparation(data):
  root, names = data
  c = _config(root)
  b = u.batches(c, "validation", batch_size=28)[0]
  u.check_contract(b, batch_size=28, size=128, has_seg=False, valid=True)
  assert b["valid"].all()
  # Re-derive from the record: full decode (as sketchy.load_frames), the
  # GENESIS crops, PIL bilinear resize to 128.
  t = stream.tf()
  records = list(t.data.TFRecordDataset(
      os.path.join(root, "records", names[0])).as_numpy_iterator())
  for frame, record in enumerate(records):
    ex = t.io.parse_single_example(record, {
        k: t.io.FixedLenFeature([1], t.string) for k in sketchy.CAMERAS})
    ims = [t.io.decode_jpeg(ex[k][0]).numpy() for k in sketchy.CAMERAS]
    views = [ims[0][71:-81, 144:-144], ims[1][91:-61, 144:-144]]
    for v, im in enumerate(views):
      crops = [im[:, 112:560]]
      for r0, r1 in ((0, 352), (-352, 449)):
        for c0, c1 in ((0, 352), (160, 512), (-352, 673)):
          crops.append(im[r0:r1, c0:c1])
      for k, crop in enumerate(crops):
        want = np.asarray(Image.fromarray(crop).resize(
            (128, 128), Image.BILINEAR)) / 255.0
        got = b["image"][frame * 14 + v * 7 + k]
        np.testing.assert_allclose(got, want, atol=1.01 / 255)


def test_sharding_and_resume(data):
  root, _ = data
  c = _config(root)
  u.check_sharding(c, "train", batch_size=4, steps=2, repeat=True)
  u.check_resume(c, "train", batch_size=2, start_step=3, repeat=True)
  u.check_sharding(c, "test", batch_size=10, steps=None, repeat=False)


def test_clear_errors(tmp_path, data):
  root, names = data
  with pytest.raises(FileNotFoundError, match="(?s)no episode files.*"
                     "deepmind-research"):
    sketchy.num_examples(_config(str(tmp_path)), "train")
  # A truncated episode file.
  bad = tmp_path / "bad"
  write_sketchy(str(bad))
  path = bad / "records" / names[5]
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(stream.DatasetFormatError, match=f"{names[5]}: truncated"):
    sketchy.num_examples(_config(str(bad)), "train")
  # Wrong image size.
  small = tmp_path / "small"
  u.write_tfrecord(str(small / "records" / "ep0"), [u.example({
      k: u.bytes_feature([u.jpeg_bytes(np.zeros((60, 96, 3), np.uint8))])
      for k in sketchy.CAMERAS})] * 2)
  c = _config(str(small), eval_fraction=0.0)
  with pytest.raises(stream.DatasetFormatError, match="is 60x96.*600x960"):
    data_pipelines.get_dataset(c, "train", batch_size=2, seed=0)
