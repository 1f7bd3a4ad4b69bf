"""Tests of the Sketchy video reader on episodes in the published format."""

from __future__ import annotations

import io

import numpy as np
import pytest

import data_pipelines
from data_pipelines import sketchy_video as sk

STEPS = 5


def _jpeg(img):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _camera(t, episode, view):
  """600x960 frame: the region GENESIS-V2 keeps is flat, the rest white."""
  img = np.full((600, 960, 3), 255, np.uint8)
  r0 = 71 if view == "front_left" else 91
  # Kept: rows r0:r0+448, columns 144+112 : 144+112+448 = 256:704.
  img[r0:r0 + 448, 256:704] = (30 * t, 40 * episode + 20,
                               200 if view == "front_left" else 60)
  return img


def _write_episode(path, episode):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  floats = {"actions": 7, "gripper/joints/velocity": 1,
            "gripper/joints/torque": 1, "gripper/joints/angle": 1,
            "sawyer/joints/velocity": 7, "sawyer/pinch/pose": 7,
            "sawyer/tcp/pose": 7, "sawyer/tcp/effort": 6,
            "sawyer/joints/torque": 7, "sawyer/tcp/velocity": 6,
            "sawyer/joints/angle": 7, "wrist/torque": 3, "wrist/force": 3,
            "pixels/royale_camera_driver_depth": 171 * 224}
  grey = _jpeg(np.zeros((8, 8, 3), np.uint8))
  with tf.io.TFRecordWriter(path) as w:
    for t in range(STEPS):
      f = {k: tf.train.Feature(float_list=tf.train.FloatList(
          value=np.zeros(n, np.float32))) for k, n in floats.items()}
      f["gripper/grasp"] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=[0]))
      for view in ("front_left", "front_right"):
        f[f"pixels/basket_{view}"] = tf.train.Feature(
            bytes_list=tf.train.BytesList(
                value=[_jpeg(_camera(t, episode, view))]))
      for key in ("pixels/basket_back_left",
                  "pixels/royale_camera_driver_gray", "pixels/usbcam0",
                  "pixels/usbcam1"):
        f[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[grey]))
      w.write(tf.train.Example(features=tf.train.Features(
          feature=f)).SerializeToString())


@pytest.fixture(scope="module")
def sketchy_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("sketchy")
  (root / "records").mkdir()
  for e in range(3):
    _write_episode(str(root / "records" / f"episode_{e}.tfrecords"), e)
  return root


def _config(root, **kw):
  c = sk.default_config()
  c.update(dict(data_dir=str(root), num_frames=2, clip_stride=2,
                image_size=32, eval_fraction=0.34))
  c.update(kw)
  return c


def test_split_by_file_and_clips(sketchy_dir):
  c = _config(sketchy_dir)
  # 3 files: validation = file 0, test = file 1, train = file 2; 2 clips
  # (starts 0, 2) x 2 views per file.
  for split in ("train", "validation", "test"):
    assert data_pipelines.num_examples(c, split) == 4
  ds = data_pipelines.get_dataset(c, "validation", batch_size=4, seed=0,
                                  process_index=0, process_count=1)
  (b,) = list(ds.as_numpy_iterator())
  assert set(b) == {"video", "valid"}  # No masks in Sketchy.
  assert b["video"].shape == (4, 2, 32, 32, 3)
  v = b["video"] * 255
  # Row order: (clip 0: fl, fr), (clip 1: fl, fr); every kept pixel is the
  # flat crop colour, so no white border survives the crop.
  want = np.array([[[30 * t, 20, blue] for t in (s, s + 1)]
                   for s in (0, 2) for blue in (200, 60)], float)
  np.testing.assert_allclose(v.mean(axis=(2, 3)), want, atol=4)
  assert v.max() < 230


def test_train_stream_and_views(sketchy_dir):
  c = _config(sketchy_dir, views=("front_right",), num_frames=3,
              clip_stride=1)
  assert data_pipelines.num_examples(c, "train") == 3  # Starts 0, 1, 2.
  ds = data_pipelines.get_dataset(c, "train", batch_size=2, seed=0,
                                  process_index=0, process_count=1)
  b = next(iter(ds.as_numpy_iterator()))
  assert b["video"].shape == (2, 3, 32, 32, 3)
  g = b["video"][..., 1].mean(axis=(1, 2, 3)) * 255
  np.testing.assert_allclose(g, 100, atol=4)  # Episode 2's green.


def test_errors(sketchy_dir, tmp_path):
  with pytest.raises(ValueError, match="data_dir is empty"):
    data_pipelines.num_examples(sk.default_config(), "train")
  with pytest.raises(FileNotFoundError, match="No episode files"):
    data_pipelines.num_examples(_config(tmp_path), "train")
  with pytest.raises(ValueError, match="unknown views"):
    data_pipelines.num_examples(_config(sketchy_dir, views=("top",)),
                                "train")
  with pytest.raises(ValueError, match="RAW|600, 960|shape"):
    sk.preprocess_frame(_jpeg(np.zeros((64, 64, 3), np.uint8)),
                        "front_left", 32, "x")
