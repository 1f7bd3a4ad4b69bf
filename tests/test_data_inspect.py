"""python -m data_pipelines.inspect: counts, shapes and the grid PNG."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from PIL import Image

from data_pipelines import inspect as inspect_lib
import test_data_utils as u


def test_real_dataset(tmp_path, capsys):
  u.write_multi_object(str(tmp_path), "objects_room", "train", 12)
  out = tmp_path / "grid.png"
  rc = inspect_lib.main([
      "--dataset=objects_room", f"--data_dir={tmp_path}", f"--out={out}",
      "--split=test", "--num=4", "--set", "num_records=12", "--set",
      "num_test=3", "--set", "num_validation=2"])
  text = capsys.readouterr().out
  assert rc == 0, text
  assert "train: 7" in text and "validation: 2" in text and "test: 3" in text
  assert "image: float32 (4, 64, 64, 3)" in text
  assert "segmentation: int32 (4, 64, 64)" in text
  grid = np.asarray(Image.open(out))
  # 3 rows (image, segmentation, overlay) x 3 valid examples, upscaled x1.
  assert grid.shape == (3 * 64 + 2 * 2, 3 * 64 + 2 * 2, 3)


def test_procedural_dataset(tmp_path, capsys):
  pytest.importorskip("data_pipelines.sprites")
  out = tmp_path / "sprites.png"
  rc = inspect_lib.main(["--dataset=sprites", f"--out={out}", "--num=3",
                         "--set", "image_size=32"])
  text = capsys.readouterr().out
  assert rc == 0, text
  assert "image: float32 (3, 32, 32, 3)" in text
  assert Image.open(out).size == (3 * 96 + 2 * 2, 3 * 96 + 2 * 2)


def test_errors(tmp_path, capsys):
  assert inspect_lib.main(["--dataset=no_such", f"--out={tmp_path}/x.png"]) \
      == 1
  assert "Unknown dataset 'no_such'" in capsys.readouterr().err
  assert inspect_lib.main(["--dataset=apc", f"--data_dir={tmp_path}/none",
                           f"--out={tmp_path}/x.png"]) == 1
  err = capsys.readouterr().err
  assert "training.zip" in err and "Traceback" not in err
  with pytest.raises(ValueError, match="no_field"):
    inspect_lib.dataset_config("apc", overrides=["no_field=1"])


def test_grid_and_video_strip(tmp_path):
  batch = {"image": np.random.default_rng(0).random((4, 8, 8, 3),
                                                    np.float32),
           "segmentation": np.arange(4 * 64).reshape(4, 8, 8) % 3,
           "valid": np.array([True, True, False, False])}
  grid = inspect_lib.grid_image(batch, scale=2)
  assert grid.shape == (3 * 16 + 4, 2 * 16 + 2, 3)
  np.testing.assert_array_equal(grid[16 + 2, 0], [0, 0, 0])  # Label 0.
  video = {"video": np.zeros((2, 3, 8, 8, 3), np.float32),
           "segmentation": np.zeros((2, 3, 8, 8), np.int32)}
  path = str(tmp_path / "strip.png")
  try:
    importlib.import_module("data_pipelines.video_strip")
  except ImportError:
    with pytest.raises(RuntimeError, match="video_strip"):
      inspect_lib.write_grid(video, path)
  else:
    assert inspect_lib.write_grid(video, path) == path
    assert Image.open(path).size[0] > 0
