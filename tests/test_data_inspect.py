"""python -m data_pipelines.inspect: counts, shapes and the grid PNG."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import data_pipelines
from data_pipelines import inspect as inspect_lib
from data_pipelines import palette
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
    data_pipelines.dataset_config("apc", overrides=["no_field=1"])
  with pytest.raises(ValueError, match="image_size is a int"):
    data_pipelines.dataset_config("apc", overrides=["image_size=big"])
  with pytest.raises(ValueError, match="no presets"):
    data_pipelines.dataset_config("apc", preset="x")
  with pytest.raises(ValueError, match="Unknown preset 'x'"):
    data_pipelines.dataset_config("bouncing_balls", preset="x")


def test_dataset_config():
  c = data_pipelines.dataset_config(
      "multi_dsprites", variant="binarized", data_dir="/d",
      overrides=["image_size=32", "data.crop_size=0"])
  assert (c.name, c.variant, c.data_dir, c.image_size, c.crop_size) == (
      "multi_dsprites", "binarized", "/d", 32, 0)
  c = data_pipelines.dataset_config(
      "bouncing_balls", preset="colour678_8colours",
      overrides=["num_balls=(2, 3)"])
  assert (c.variant, c.num_colours, c.test_num_balls, c.num_balls) == (
      "colour", 8, (6, 8), (2, 3))


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
  assert inspect_lib.write_grid(video, path) == path
  assert Image.open(path).size[0] > 0


def test_one_palette():
  pal = palette.palette()
  assert pal.shape == (256, 3) and pal.dtype == np.uint8
  np.testing.assert_array_equal(pal[0], [0, 0, 0])  # Background.
  colours = {tuple(c) for c in pal[1:21]}
  assert len(colours) == 20 and (0, 0, 0) not in colours
  np.testing.assert_array_equal(pal[21:41], pal[1:21])  # Cycles after 20.
  # The colours ocjax's figures have always used for labels 0..19.
  np.testing.assert_array_equal(palette.PALETTE[[0, 1, 2, 19, 20]], [
      [0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 0, 128], [128, 128, 128]])
  labels = np.array([[0, 1, 20], [21, 300, -1]])
  np.testing.assert_array_equal(palette.labels_to_rgb(labels),
                                [pal[[0, 1, 20]], pal[[1, 20, 0]]])
  # The grid's segmentation row is drawn with it.
  seg = np.arange(4 * 64).reshape(4, 8, 8) % 23
  batch = {"image": np.zeros((4, 8, 8, 3), np.float32), "segmentation": seg}
  grid = inspect_lib.grid_image(batch, gap=0)
  np.testing.assert_array_equal(grid[8:16, :8], palette.labels_to_rgb(seg[0]))


def test_no_import_cycle():
  code = ("import sys, data_pipelines.video_strip\n"
          "assert 'data_pipelines.inspect' not in sys.modules\n"
          "assert 'tensorflow' not in sys.modules\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", code], cwd=root,
                          capture_output=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr.decode()[-2000:]
