"""ShapeStacks: published layout, GENESIS crops, integer label maps."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import data_pipelines
from data_pipelines import shapestacks
from data_pipelines import stream
import test_data_utils as u

SPLITS = {"train": ["env_ccs-easy-h=2-vcom=0-vpsf=0-v=1",
                    "env_ccs-easy-h=3-vcom=1-vpsf=0-v=2",
                    "env_blocks-hard-h=4-vcom=0-vpsf=0-v=3"],
          "eval": ["env_ccs-hard-h=5-vcom=0-vpsf=0-v=4"],
          "test": ["env_blocks-easy-h=2-vcom=2-vpsf=1-v=5",
                   "env_ccs-easy-h=6-vcom=0-vpsf=0-v=6"]}
CAMS = (1, 7)


def _scene(tag, cam):
  """A 224x224 view tagged in its top-left corner, and its label map."""
  image = np.zeros((224, 224, 3), np.uint8)
  image[..., 0], image[..., 1], image[..., 2] = tag, 100, 50
  labels = np.zeros((224, 224), np.uint8)
  for k in range(1, 3 if cam == 1 else 7):  # 2 or 6 objects, stacked.
    y0 = 190 - 25 * k
    labels[y0:y0 + 25, 80 + 3 * k:150 - 2 * k] = k
    image[y0:y0 + 25, 80 + 3 * k:150 - 2 * k] = (30 * k, 255 - 30 * k, 9 * k)
  return image, labels


def write_shapestacks(root):
  """The published layout; returns {image path: (image, labels)}."""
  views = {}
  tag = 0
  for split, scenarios in SPLITS.items():
    os.makedirs(os.path.join(root, "splits", "default"), exist_ok=True)
    with open(os.path.join(root, "splits", "default", f"{split}.txt"),
              "w") as f:
      f.write("".join(s + "\n" for s in scenarios))
    for scenario in scenarios:
      rec = os.path.join(root, "recordings", scenario)
      iseg = os.path.join(root, "iseg", scenario)
      for cam in CAMS:
        image, labels = _scene(tag, cam)
        # Two renderings of the camera share one instance map.
        for variant in ("w=0-f=0-l=0-c=original", "w=3-f=1-l=2-c=random"):
          path = os.path.join(rec, f"rgb-{variant}-cam_{cam}-mono-0.png")
          u.write_png(path, image)
          views[path] = (image, labels)
          image = image.copy()
          image[..., 0] = tag + 1
        tag += 2
        # Map: red = label * 32 (green/blue carry other data).
        m = np.stack([labels * 32, labels * 7, np.full_like(labels, 3)], -1)
        u.write_png(os.path.join(
            iseg, f"iseg-w=0-f=0-l=0-c=original-cam_{cam}-mono-0.map"),
                    m.astype(np.uint8))
      # Files that are not RGB views.
      u.write_png(os.path.join(rec, "vseg-w=0-f=0-l=0-c=original-cam_1-mono-"
                               "0.map"), np.zeros((224, 224, 3), np.uint8))
      open(os.path.join(rec, "log.txt"), "w").close()
  return views


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("shapestacks"))
  return root, write_shapestacks(root)


def _config(root, **kw):
  c = shapestacks.default_config()
  c.data_dir = root
  for k, v in kw.items():
    c[k] = v
  return c


def test_splits_and_counts(data):
  root, _ = data
  c = _config(root)
  counts = {s: data_pipelines.num_examples(c, s)
            for s in ("train", "validation", "test")}
  assert counts == {"train": 12, "validation": 4, "test": 8}
  ids = u.ids_of(u.batches(c, "validation", batch_size=3))
  scen = SPLITS["eval"][0]
  files = shapestacks.split_files(c, "validation")
  assert all(f"/recordings/{scen}/" in f and f"/iseg/{scen}/" in m
             for f, m in files)
  assert len(ids) == 4 and len(set(ids)) == 4
  train_ids = u.ids_of(u.batches(c, "train", batch_size=4, num=3))
  assert not set(train_ids) & set(ids)
  assert len(set(train_ids)) == 12  # One epoch visits every view once.


def test_crop_resize_and_labels(data):
  root, views = data
  c = _config(root)
  files = [f for f, _ in shapestacks.split_files(c, "test")]
  b = u.batches(c, "test", batch_size=8)[0]
  u.check_contract(b, batch_size=8, size=64, valid=True)
  idx = np.floor(np.arange(64) * 196 / 64).astype(int)
  for row, path in enumerate(files):
    image, labels = views[path]
    # torchvision CenterCrop(196) + Resize(64): PIL bilinear, antialiased.
    want = np.asarray(Image.fromarray(image).crop((14, 14, 210, 210)).resize(
        (64, 64), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(b["image"][row], want, atol=1.01 / 255)
    # Labels: integers (red // 32), cropped, F.interpolate nearest.
    np.testing.assert_array_equal(b["segmentation"][row],
                                  labels[14:210, 14:210][idx][:, idx])
  assert set(np.unique(b["segmentation"])) == set(range(7))


def test_label_decoding_is_integer():
  """The .map PNG decodes to small integers, never zeroed floats."""
  labels = np.arange(224 * 224).reshape(224, 224) % 7
  m = np.stack([labels * 32] * 3, -1).astype(np.uint8)
  got = shapestacks.decode_label_map(u.png_bytes(m)).numpy()
  np.testing.assert_array_equal(got, labels)
  assert got.dtype == np.int32


def test_sharding_and_resume(data):
  root, _ = data
  c = _config(root)
  u.check_sharding(c, "train", batch_size=4, steps=4, repeat=True)
  u.check_sharding(c, "test", batch_size=6, steps=None, repeat=False)
  u.check_resume(c, "train", batch_size=4, start_step=5, repeat=True)


def test_clear_errors(tmp_path, data):
  root, views = data
  with pytest.raises(FileNotFoundError, match="(?s)recordings.*shapestacks"):
    shapestacks.num_examples(_config(str(tmp_path)), "train")
  with pytest.raises(FileNotFoundError, match="split file.*css_all"):
    shapestacks.num_examples(_config(root, split_name="css_all"), "train")
  # A missing instance map names the file and where to get it.
  broken = tmp_path / "broken"
  write_shapestacks(str(broken))
  scen = SPLITS["test"][0]
  os.remove(broken / "iseg" / scen /
            "iseg-w=0-f=0-l=0-c=original-cam_7-mono-0.map")
  with pytest.raises(FileNotFoundError, match="(?s)cam_7-mono-0.map.*GENESIS"):
    shapestacks.num_examples(_config(str(broken)), "test")
  # Wrong image size: found up front for the first view ...
  first = shapestacks.split_files(_config(str(broken)), "train")[0][0]
  u.write_png(first, np.zeros((100, 120, 3), np.uint8))
  with pytest.raises(stream.DatasetFormatError, match="is 120x100.*224x224"):
    data_pipelines.get_dataset(_config(str(broken)), "train", batch_size=2,
                               seed=0)
  # ... and while reading for the others, naming the file.
  scen = SPLITS["eval"][0]
  bad = str(broken / "recordings" / scen /
            "rgb-w=3-f=1-l=2-c=random-cam_7-mono-0.png")
  u.write_png(bad, np.zeros((200, 224, 3), np.uint8))
  ds = data_pipelines.get_dataset(_config(str(broken)), "validation",
                                  batch_size=4, seed=0)
  with pytest.raises(stream.DatasetReadError, match="cam_7-mono-0.png"):
    list(stream.iterate(ds))
