"""CLEVRTEX: published layout, palette index masks, benchmark crops/splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import data_pipelines
from data_pipelines import clevrtex
from data_pipelines import stream
import test_data_utils as u


def write_clevrtex(root, variant, n, per_bucket=8):
  """clevrtex_<variant>/<bucket>/CLEVRTEX_<variant>_NNNNNN{.png,_flat.png}."""
  rng = np.random.default_rng(n)
  out = {}
  for i in range(n):
    d = os.path.join(root, f"clevrtex_{variant}", str(i // per_bucket))
    stem = os.path.join(d, f"CLEVRTEX_{variant}_{i:06d}")
    rgba = rng.integers(0, 256, (240, 320, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[24:48, 64:100, :3] = (i, 3, 200)  # Tag at the crop's corner.
    mask = np.zeros((240, 320), np.uint8)
    for k in range(1, 1 + i % 10):
      y, x = rng.integers(30, 200), rng.integers(70, 240)
      mask[y:y + 20, x:x + 25] = k
    u.write_png(stem + ".png", rgba)
    u.write_png(stem + "_flat.png", mask, palette=True)
    with open(stem + ".json", "w") as f:
      json.dump({"ground_material": "x", "objects": []}, f)
    out[stem + ".png"] = (rgba, mask)
  return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("clevrtex"))
  files = write_clevrtex(root, "full", 20)
  files.update(write_clevrtex(root, "outd", 5))
  files.update(write_clevrtex(root, "camo", 10))
  return root, files


def _config(root, **kw):
  c = clevrtex.default_config()
  c.data_dir = root
  for k, v in kw.items():
    c[k] = v
  return c


def test_index_splits(data):
  root, _ = data
  c = _config(root)
  ids = {s: u.ids_of(u.batches(c, s, batch_size=4, repeat=False))
         for s in ("train", "validation", "test")}
  # Benchmark: test [0, 0.1N), validation [0.1N, 0.2N), train [0.2N, N).
  assert ids == {"test": [0, 1], "validation": [2, 3],
                 "train": list(range(4, 20))}
  assert data_pipelines.num_examples(c, "train") == 16
  outd = _config(root, variant="outd")
  assert u.ids_of(u.batches(outd, "test", batch_size=4)) == list(range(5))
  with pytest.raises(ValueError, match="only split 'test'"):
    data_pipelines.num_examples(outd, "train")
  camo = _config(root, variant="camo")
  assert u.ids_of(u.batches(camo, "test", batch_size=4)) == [0]


def test_crop_resize_and_index_masks(data):
  root, files = data
  c = _config(root)
  b = u.batches(c, "train", batch_size=8, repeat=False, num=1)[0]
  u.check_contract(b, batch_size=8, size=128, valid=True)
  for row in range(8):
    i = 4 + row
    path = os.path.join(root, "clevrtex_full", str(i // 8),
                        f"CLEVRTEX_full_{i:06d}.png")
    rgba, mask = files[path]
    box = (64, 24, 256, 216)  # int(0.8 * 240) = 192, centred.
    want = np.asarray(Image.fromarray(rgba[..., :3]).crop(box).resize(
        (128, 128), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(b["image"][row], want, atol=1.01 / 255)
    flat = Image.open(path.replace(".png", "_flat.png"))
    assert flat.mode == "P"  # Colours in the palette, labels in the index.
    want_mask = np.asarray(flat.crop(box).resize((128, 128), Image.NEAREST))
    np.testing.assert_array_equal(b["segmentation"][row], want_mask)
  assert b["segmentation"].max() >= 5


def test_sharding_and_resume(data):
  root, _ = data
  c = _config(root)
  u.check_sharding(c, "train", batch_size=4, steps=5, repeat=True)
  u.check_resume(c, "train", batch_size=4, start_step=6, repeat=True)


def test_clear_errors(tmp_path, data):
  root, _ = data
  with pytest.raises(FileNotFoundError, match="(?s)clevrtex_full.*robots"):
    clevrtex.num_examples(_config(str(tmp_path)), "train")
  with pytest.raises(ValueError, match="data.variant='ood'"):
    clevrtex.num_examples(_config(root, variant="ood"), "test")
  bad = tmp_path / "bad"
  write_clevrtex(str(bad), "full", 12)
  os.remove(bad / "clevrtex_full" / "0" / "CLEVRTEX_full_000003.png")
  with pytest.raises(FileNotFoundError, match=r"\[3\]"):
    clevrtex.num_examples(_config(str(bad)), "train")
  os.remove(bad / "clevrtex_full" / "1" / "CLEVRTEX_full_000009_flat.png")
  with pytest.raises(FileNotFoundError, match="000009_flat.png"):
    clevrtex.num_examples(_config(str(bad)), "train")
  small = tmp_path / "small"
  write_clevrtex(str(small), "camo", 10)
  first = small / "clevrtex_camo" / "0" / "CLEVRTEX_camo_000000.png"
  u.write_png(str(first), np.zeros((120, 160, 3), np.uint8))
  with pytest.raises(stream.DatasetFormatError, match="is 120x160"):
    data_pipelines.get_dataset(_config(str(small), variant="camo"), "test",
                               batch_size=1, seed=0)
