"""Tests of the CLEVRER-like generator and the real CLEVRER reader."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import data_pipelines
from data_pipelines import clevrer
from data_pipelines import clevrer_like as cl

# ffmpeg runs in a subprocess (fork + exec), which JAX warns about.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def _batches(config, split, n, **kw):
  kw.setdefault("batch_size", 2)
  kw.setdefault("seed", 0)
  ds = data_pipelines.get_dataset(config, split, process_index=0,
                                  process_count=1, **kw)
  return list(ds.take(n).as_numpy_iterator())


# ------------------------------------------------------------ CLEVRER-like


def _small(**kw):
  c = cl.default_config()
  c.update(dict(image_size=24, episode_length=6, num_frames=5,
                supersampling=1, num_train=4, num_validation=2, num_test=2))
  c.update(kw)
  return c


def test_clevrer_like_batch_contract():
  (b,) = _batches(_small(), "train", 1)
  assert b["video"].shape == (2, 5, 24, 24, 3)
  assert b["segmentation"].shape == (2, 5, 24, 24)
  assert b["video"].dtype == np.float32 and b["segmentation"].dtype == np.int32
  assert 0 <= b["video"].min() and b["video"].max() <= 1


def test_clevrer_like_scene():
  spec = cl.spec_from_config(_small(image_size=48, episode_length=12,
                                    supersampling=2, num_objects=(4, 4),
                                    enter_probability=0.0,
                                    moving_probability=1.0))
  ep = cl.generate_episode(spec, "train", 2)
  video, seg = ep["video"].astype(float), ep["segmentation"]
  assert ep["num_objects"] == 4
  assert set(np.unique(seg)) <= {0, 1, 2, 3, 4}
  assert len(set(np.unique(seg[0])) - {0}) >= 3  # Objects start in view.
  # Distinct attribute triples; the floor is grey where no object is.
  assert len(ep["attributes"]) == 4
  assert len(set(map(tuple, ep["attributes"]))) == 4
  floor = video[seg == 0]
  assert np.abs(floor[:, 0] - floor[:, 1]).mean() < 10
  # Objects slide: masks change over time.
  assert (seg[0] != seg[-1]).mean() > 0.005
  np.testing.assert_array_equal(
      ep["video"], cl.generate_episode(spec, "train", 2)["video"])


def test_clevrer_like_objects_leave_and_enter():
  spec = cl.spec_from_config(_small(image_size=32, episode_length=40,
                                    enter_probability=1.0,
                                    num_objects=(3, 3)))
  ep = cl.generate_episode(spec, "train", 0)
  counts = [len(set(np.unique(s)) - {0}) for s in ep["segmentation"]]
  assert counts[0] < max(counts)  # Someone slides into view.


def test_clevrer_like_validation():
  with pytest.raises(ValueError, match="data.num_objects"):
    cl.spec_from_config(_small(num_objects=(5, 2)))
  with pytest.raises(ValueError, match="data.restitution"):
    cl.spec_from_config(_small(restitution=2.0))


# ---------------------------------------------------------------- COCO RLE


def test_coco_rle_known_and_round_trip():
  # Strings produced by pycocotools.mask.encode for these masks.
  m = np.array([[0, 1], [1, 1], [0, 0]], bool)
  assert clevrer.encode_coco_rle(m)["counts"] == "11110"
  np.testing.assert_array_equal(clevrer.decode_coco_rle("11110", [3, 2]), m)
  full = np.ones((4, 5), bool)
  assert clevrer.encode_coco_rle(full)["counts"] == "0d0"
  rng = np.random.default_rng(0)
  for _ in range(30):
    h, w = rng.integers(1, 30, 2)
    m = rng.uniform(size=(h, w)) < rng.uniform()
    rle = clevrer.encode_coco_rle(m)
    np.testing.assert_array_equal(
        clevrer.decode_coco_rle(rle["counts"], rle["size"]), m)
  with pytest.raises(ValueError, match="sum"):
    clevrer.decode_coco_rle("11110", [4, 4])


# ------------------------------------------------------------ real CLEVRER

FRAMES = 12
_ATTRS = [("green", "rubber", "cube"), ("yellow", "metal", "sphere"),
          ("red", "rubber", "cylinder")]


def _frame_and_ids(t, n_objects):
  """A 320x480 frame and its id map (ids = object_id + 1)."""
  img = np.full((320, 480, 3), 128, np.uint8)
  img[:, :40] = (255, 0, 0)  # Cropped away by the pre-processing.
  img[:, -40:] = (0, 0, 255)
  img[:40, 40:-40] = 20 * t  # Frame-order marker.
  ids = np.zeros((320, 480), np.uint8)
  if t >= 3:  # Object 0 enters at t = 3 and moves right.
    ids[100:180, 100 + 8 * t:180 + 8 * t] = 1
  ids[200:280, 300:380] = 2  # Object 1: static.
  if n_objects > 2:
    ids[60:90, 300:330] = 3
  colours = {1: (0, 200, 0), 2: (230, 230, 0), 3: (200, 0, 0)}
  for k, c in colours.items():
    img[ids == k] = c
  return img, ids


def _write_video(path, n_objects):
  import imageio_ffmpeg as ffmpeg  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  w = ffmpeg.write_frames(path, (480, 320), fps=25, codec="libx264",
                          pix_fmt_out="yuv420p", quality=10,
                          macro_block_size=16)
  w.send(None)
  for t in range(FRAMES):
    w.send(_frame_and_ids(t, n_objects)[0].tobytes())
  w.close()


def _write_annotation(path, video_id, n_objects):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  traj = []
  for t in range(FRAMES):
    objs = [{"object_id": k, "location": [0, 0, 0], "orientation": [0, 0, 0],
             "velocity": [0.5 if k == 0 else 0.0, 0, 0],
             "angular_velocity": [0, 0, 0],
             "inside_camera_view": not (k == 0 and t < 3)}
            for k in range(n_objects)]
    traj.append({"frame_id": t, "objects": objs})
  ann = {"scene_index": video_id, "video_filename": f"video_{video_id}.mp4",
         "object_property": [
             {"object_id": k, "color": _ATTRS[k][0],
              "material": _ATTRS[k][1], "shape": _ATTRS[k][2]}
             for k in range(n_objects)],
         "motion_trajectory": traj, "collision": []}
  with open(path, "w") as f:
    json.dump(ann, f)


def _write_proposals(path, video_id, n_objects):
  frames = []
  for t in range(FRAMES):
    _, ids = _frame_and_ids(t, n_objects)
    objs = []
    for k in range(1, n_objects + 1):
      if (ids == k).any():
        c, m, s = _ATTRS[k - 1]
        objs.append({"mask": clevrer.encode_coco_rle(ids == k),
                     "color": c, "material": m, "shape": s, "score": 0.99,
                     "frame_index": t, "video_index": video_id})
    spurious = np.zeros((320, 480), bool)
    spurious[0:50, 200:260] = True
    objs.append({"mask": clevrer.encode_coco_rle(spurious), "color": "blue",
                 "material": "metal", "shape": "cube", "score": 0.1})
    objs.append({"mask": clevrer.encode_coco_rle(spurious), "color": "purple",
                 "material": "metal", "shape": "cube", "score": 0.9})
    frames.append({"frame_filename": f"sim_{video_id:05d}/frame_{t:05d}.png",
                   "frame_index": t, "objects": objs})
  with open(path, "w") as f:
    json.dump({"video_index": video_id, "video_name": f"sim_{video_id:05d}",
               "frames": frames}, f)


@pytest.fixture(scope="module")
def clevrer_root(tmp_path_factory):
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top,unused-import
  root = tmp_path_factory.mktemp("clevrer")
  masks = root / "proposals"
  masks.mkdir()
  for which, ids in (("train", (0, 1)), ("validation", (10000, 10001))):
    for vid in ids:
      n = 3 if vid == 10001 else 2
      lo = vid // 1000 * 1000
      _write_video(str(root / f"video_{which}" /
                       f"video_{lo:05d}-{lo + 1000:05d}" /
                       f"video_{vid:05d}.mp4"), n)
      _write_annotation(clevrer._annotation_path(str(root), which, vid), vid,
                        n)
      _write_proposals(str(masks / f"sim_{vid:05d}.json"), vid, n)
  return root


def _clevrer_config(root, **kw):
  c = clevrer.default_config()
  c.update(dict(data_dir=str(root), frames_per_video=FRAMES, num_frames=4,
                clip_stride=4, test_num_objects=(2, 2), test_min_visible=2))
  c.update(kw)
  return c


def test_clevrer_train_clips(clevrer_root):
  c = _clevrer_config(clevrer_root)
  assert data_pipelines.num_examples(c, "train") == 6  # 2 videos x 3 clips.
  (b,) = _batches(c, "train", 1, batch_size=6, repeat=False)
  assert set(b) == {"video", "valid"}
  assert b["video"].shape == (6, 4, 64, 64, 3)
  # No red/blue border survives the 40-pixel crop: the edge columns are
  # the grey floor.
  v = b["video"]
  edges = v[:, :, 10:, [0, 63]]  # [6, 4, 54, 2, 3]
  assert np.abs(edges - 128 / 255).max() < 0.08
  # Clip k of a video starts at frame 4k: the marker band says which.
  band = v[:, :, :7, 10:54].mean(axis=(2, 3, 4)) * 255  # [6, 4]
  np.testing.assert_allclose(band[1], 20 * np.arange(4, 8), atol=6)
  np.testing.assert_allclose(band[5], 20 * np.arange(8, 12), atol=6)


def test_clevrer_validation_masks_and_test_windows(clevrer_root):
  c = _clevrer_config(clevrer_root, mask_dir=str(clevrer_root / "proposals"))
  (b,) = _batches(c, "validation", 1, batch_size=6, repeat=False)
  seg = b["segmentation"]
  assert seg.shape == (6, 4, 64, 64)
  # The static yellow object (object_id 1) is track 2 at the same place.
  assert np.all(seg[:, :, 48, 48] == 2)
  # Spurious proposals (low score / unknown attributes) are ignored.
  assert set(np.unique(seg[:3])) <= {0, 1, 2}
  # Object 0 (track 1) is present only from frame 3 on.
  assert not (seg[0, :3] == 1).any() and (seg[0, 3] == 1).any()
  # Frame 5's id map, cropped and resized as written out here (not with the
  # module's function): 40 px off each side of the width, then nearest
  # neighbour at the output pixels' centres, (i + 0.5) * in / out; the id
  # of object_id k is its track k + 1.
  _, ids = _frame_and_ids(5, 2)
  rows = np.floor((np.arange(64) + 0.5) * 320 / 64).astype(int)
  cols = 40 + np.floor((np.arange(64) + 0.5) * 400 / 64).astype(int)
  np.testing.assert_array_equal(seg[1, 1], ids[rows][:, cols])
  # Test: 2-object videos only (10000), trimmed to the first window with 2
  # visible objects in every frame and motion: frames 3..6.
  assert data_pipelines.num_examples(c, "test") == 1
  (t,) = _batches(c, "test", 1, batch_size=2)
  np.testing.assert_array_equal(t["valid"], [True, False])
  band = t["video"][0, :, :7, 10:54].mean(axis=(1, 2, 3)) * 255
  np.testing.assert_allclose(band, 20 * np.arange(3, 7), atol=6)
  assert np.all([(s == 1).any() and (s == 2).any()
                 for s in t["segmentation"][0]])
  c6 = _clevrer_config(clevrer_root, mask_dir=str(clevrer_root / "proposals"),
                       test_num_objects=(3, 3), test_min_visible=3)
  assert data_pipelines.num_examples(c6, "test") == 1  # Video 10001.


def test_clevrer_errors(clevrer_root, tmp_path):
  c = _clevrer_config(clevrer_root)
  with pytest.raises(ValueError, match="mask_dir is empty"):
    data_pipelines.get_dataset(c, "test", batch_size=1, seed=0,
                               process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match="video_train"):
    data_pipelines.num_examples(_clevrer_config(tmp_path), "train")
  with pytest.raises(ValueError, match="spans"):
    data_pipelines.num_examples(_clevrer_config(clevrer_root, num_frames=13),
                                "train")
  c = _clevrer_config(clevrer_root, mask_dir=str(tmp_path))
  with pytest.raises(Exception, match=r"sim_0000\d.json is missing"):
    _batches(c, "train", 1, batch_size=1)
