"""APC 2016 (MIT-Princeton training set): layout, resizes, scene splits."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from PIL import Image

import data_pipelines
from data_pipelines import apc
from data_pipelines import stream
import test_data_utils as u

OBJECTS = ("crayola_24_ct", "dasani_water_bottle", "kleenex_tissue_box")
FRAMES = 2


def write_apc(root, scenes_per_object=3):
  """training/<shelf|tote>/<object>/scene-XXXX/ with frames and masks."""
  rng = np.random.default_rng(0)
  frames = {}
  scenes = []
  tag = 0
  for location in ("shelf", "tote"):
    for obj in OBJECTS:
      for s in range(scenes_per_object):
        scenes.append(f"{location}/{obj}/scene-{s:04d}")
  scenes.append("tote/empty/scene-empty")  # No masks/: all background.
  for scene in scenes:
    d = os.path.join(root, "training", scene)
    for f in range(FRAMES):
      img = rng.integers(0, 256, (480, 640, 3)).astype(np.uint8)
      img[:60, :200] = (tag, 17, 99)  # Survives the crop at its corner.
      tag += 1
      name = f"frame-{f:06d}"
      u.write_png(os.path.join(d, f"{name}.color.png"), img)
      mask = np.zeros((480, 640), np.uint8)
      if "empty" not in scene:
        y, x = rng.integers(0, 300), rng.integers(100, 450)
        mask[y:y + 150, x:x + 173] = 255
        u.write_png(os.path.join(d, "masks", f"{name}.mask.png"), mask)
      # Other files of the published scenes.
      u.write_png(os.path.join(d, f"{name}.depth.png"),
                  np.zeros((480, 640), np.uint16))
      frames[os.path.join(d, f"{name}.color.png")] = (img, mask)
    open(os.path.join(d, "cam.info.txt"), "w").close()
  return sorted(scenes), frames


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("apc"))
  return (root,) + write_apc(root)


def _config(root, **kw):
  c = apc.default_config()
  c.data_dir = root
  for k, v in kw.items():
    c[k] = v
  return c


def test_scene_split(data):
  root, scenes, _ = data
  c = _config(root)
  got = {s: apc.split_scenes(c, s) for s in ("train", "validation", "test")}
  # GENESIS: sorted scenes, random.seed(0); random.shuffle; 10% / 10% / rest.
  order = sorted(scenes)
  random.Random(0).shuffle(order)
  assert got["validation"] == sorted(order[:1])
  assert got["test"] == sorted(order[1:2])
  assert got["train"] == sorted(order[2:])
  assert data_pipelines.num_examples(c, "train") == 17 * FRAMES
  other = {s: apc.split_scenes(_config(root, split_seed=5), s)
           for s in ("train", "validation", "test")}
  assert other != got
  assert sorted(sum(other.values(), [])) == sorted(scenes)


def test_resize_crop_and_binary_mask(data):
  root, _, frames = data
  c = _config(root)
  assert apc.resize_geometry(128) == ((128, 170), 0, 21)
  files = apc.split_images(c, "train")
  b = u.batches(c, "train", batch_size=8, repeat=False, num=1)[0]
  u.check_contract(b, batch_size=8, size=128, valid=True)
  for row in range(8):
    img, mask = frames[files[row]]
    # torchvision Resize(128) + CenterCrop(128), PIL bilinear / nearest.
    want = np.asarray(Image.fromarray(img).resize(
        (170, 128), Image.BILINEAR).crop((21, 0, 149, 128))) / 255.0
    np.testing.assert_allclose(b["image"][row], want, atol=1.01 / 255)
    want_mask = np.asarray(Image.fromarray(mask).resize(
        (170, 128), Image.NEAREST).crop((21, 0, 149, 128))) > 0
    np.testing.assert_array_equal(b["segmentation"][row], want_mask)
  assert set(np.unique(b["segmentation"])) == {0, 1}


def test_empty_scene_is_background(data):
  root, scenes, _ = data
  for seed in range(50):  # A seed that puts the empty scene in validation.
    c = _config(root, split_seed=seed)
    if apc.split_scenes(c, "validation") == ["tote/empty/scene-empty"]:
      break
  b = u.batches(c, "validation", batch_size=2)[0]
  assert b["valid"].all() and not b["segmentation"].any()


def test_sharding_and_resume(data):
  root, _, _ = data
  c = _config(root)
  u.check_sharding(c, "train", batch_size=4, steps=3, repeat=True)
  u.check_resume(c, "train", batch_size=4, start_step=9, repeat=True)
  u.check_sharding(c, "test", batch_size=4, steps=None, repeat=False)


def test_clear_errors(tmp_path, data):
  root, _, _ = data
  with pytest.raises(FileNotFoundError, match="(?s)training.*training.zip"):
    apc.num_examples(_config(str(tmp_path)), "train")
  bad = tmp_path / "bad"
  _, frames = write_apc(str(bad), scenes_per_object=1)
  some = sorted(frames)[3]
  os.remove(some.replace("frame-", "masks/frame-").replace("color", "mask"))
  c = _config(str(bad), eval_fraction=0.0)
  with pytest.raises(FileNotFoundError, match="mask.png"):
    apc.num_examples(c, "train")
  small = tmp_path / "small"
  u.write_png(str(small / "training" / "shelf" / "a" / "scene-0000" /
                  "frame-000000.color.png"), np.zeros((240, 320, 3), np.uint8))
  with pytest.raises(stream.DatasetFormatError, match="is 240x320.*480x640"):
    data_pipelines.get_dataset(_config(str(small), eval_fraction=0.0),
                               "train", batch_size=1, seed=0)
