"""`python -m ocjax.segment`: a trained run applied to a folder of images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

import data_pipelines
import test_eval_grid
from data_pipelines import clevrtex
from data_pipelines import multi_object
from data_pipelines import shapestacks
from ocjax import segment
from ocjax.viz import grids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return test_eval_grid.make_run(tmp_path_factory)


def _save(path, array):
  Image.fromarray(array).save(path)
  return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)

  def rand(*shape):
    return (rng.random(shape) * 255).astype(np.uint8)

  _save(d / "wide.png", rand(50, 80, 3))  # crop 50x50 at left 15
  _save(d / "exact.png", rand(32, 32, 3))  # the model's size: no resize
  _save(d / "grey.png", rand(100, 60))  # greyscale, tall
  _save(d / "alpha.png", rand(40, 40, 4))  # RGBA
  _save(d / "wide.jpg", rand(20, 30, 3))  # the same stem
  (d / "broken.png").write_bytes(b"this is not a PNG")
  (d / "notes.txt").write_text("not an image")
  return str(d)


@pytest.fixture(scope="module")
def segmented(run, folder, tmp_path_factory):
  _, workdir = run
  out = str(tmp_path_factory.mktemp("out"))
  summary = segment.segment(workdir, folder, out, batch_size=2)
  return summary, out


def test_every_readable_image_is_segmented(segmented, folder, run):
  config, _ = run
  summary, out = segmented
  assert summary["num_images"] == 5
  assert [os.path.basename(e["file"]) for e in summary["errors"]] == [
      "broken.png"]
  assert "broken.png" in summary["errors"][0]["error"]
  assert {e["output"] for e in summary["images"]} == {
      "alpha", "exact", "grey", "wide", "wide_png"}  # wide.jpg sorts first
  assert "sprites" in summary["preprocessing"]
  with open(os.path.join(out, "segment.json"), encoding="utf-8") as f:
    assert json.load(f)["num_images"] == 5
  k, size = config.model.num_slots, config.data.image_size
  for entry in summary["images"]:
    d = os.path.join(out, entry["output"])
    with Image.open(os.path.join(d, "segmentation.png")) as seg:
      assert seg.mode == "P" and seg.size == (size, size)
      labels = np.asarray(seg)
      palette = np.asarray(seg.getpalette()[:3 * k]).reshape(k, 3)
    with np.load(os.path.join(d, "latents.npz")) as z:
      arrays = {n: z[n] for n in z.files}
    assert arrays["latents"].shape == (k, config.model.feat_dim)
    assert arrays["latent_mean"].shape == arrays["latent_std"].shape == (
        k, config.model.feat_dim)
    assert arrays["masks"].shape == (k, size, size)
    assert arrays["segmentation_attention"].shape == (k, size, size)
    np.testing.assert_allclose(arrays["masks"].sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(labels, np.argmax(arrays["masks"], 0))
    np.testing.assert_array_equal(arrays["segmentation"], labels)
    # Slot k is drawn in the figures' colour of slot k.
    np.testing.assert_array_equal(palette, grids.PALETTE[1:k + 1])
    with open(os.path.join(d, "summary.json"), encoding="utf-8") as f:
      info = json.load(f)
    assert sum(s["area"] for s in info["slots"]) == size * size
    for s in info["slots"]:
      if not s["area"]:
        continue
      with Image.open(os.path.join(d, s["crop"])) as crop:
        assert crop.mode == "RGBA"
        t, l, b, r = s["bbox"]
        assert crop.size == (r - l, b - t)
        alpha = np.asarray(crop)[..., 3]
        want = np.round(arrays["masks"][s["slot"], t:b, l:r] * 255)
        np.testing.assert_allclose(alpha, want, atol=1)
    with Image.open(os.path.join(d, "overlay.png")) as overlay:
      assert overlay.mode == "RGB" and overlay.size == (size, size)


def test_crop_boxes_and_unresized_input(segmented, folder):
  _, out = segmented
  with open(os.path.join(out, "wide_png", "summary.json"),
            encoding="utf-8") as f:
    info = json.load(f)
  assert info["original_size"] == [50, 80]
  assert info["crop_box"] == {"top": 0, "left": 15, "height": 50,
                              "width": 50}
  with open(os.path.join(out, "grey", "summary.json"), encoding="utf-8") as f:
    assert json.load(f)["crop_box"] == {"top": 20, "left": 0, "height": 60,
                                        "width": 60}
  # An image of the model's size reaches the model unchanged.
  src = np.asarray(Image.open(os.path.join(folder, "exact.png")))
  seen = np.asarray(Image.open(os.path.join(out, "exact", "input.png")))
  np.testing.assert_array_equal(src, seen)


def test_results_do_not_depend_on_batch_position(run, folder, segmented,
                                                 tmp_path):
  # A single image: same batch shape (padded), first row: same outputs as
  # the folder run gave it in the same row of its batch.
  _, workdir = run
  _, out = segmented
  single = segment.segment(workdir, os.path.join(folder, "alpha.png"),
                           str(tmp_path), batch_size=2)
  assert single["num_images"] == 1 and not single["errors"]
  a = np.load(os.path.join(out, "alpha", "latents.npz"))["masks"]
  b = np.load(os.path.join(tmp_path, "alpha", "latents.npz"))["masks"]
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_clear_errors(run, tmp_path):
  _, workdir = run
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG truncated")
  with pytest.raises(segment.SegmentError, match="Cannot read image.*bad.png"):
    segment.segment(workdir, str(bad), str(tmp_path / "o1"))
  with pytest.raises(segment.SegmentError, match="neither a file nor"):
    segment.segment(workdir, str(tmp_path / "missing"), None)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "a.txt").write_text("x")
  with pytest.raises(segment.SegmentError, match="No image files"):
    segment.segment(workdir, str(empty), None)
  with pytest.raises(FileNotFoundError, match="config.json"):
    segment.segment(str(tmp_path), str(bad), None)
  good = _save(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
  out_file = tmp_path / "out.txt"
  out_file.write_text("x")
  with pytest.raises(segment.SegmentError, match="out.txt is a file"):
    segment.segment(workdir, str(good), str(out_file))


def test_a_tiny_image_is_segmented_with_a_warning(run, tmp_path, capsys):
  _, workdir = run
  dot = _save(tmp_path / "dot.png", np.full((1, 1, 3), 200, np.uint8))
  summary = segment.segment(workdir, str(dot), str(tmp_path / "o"))
  assert summary["num_images"] == 1
  assert "dot.png is only 1x1 pixels" in capsys.readouterr().err


def _data(module, **overrides):
  c = module.default_config()
  for k, v in overrides.items():
    c[k] = v
  return c


def test_preprocessing_follows_the_dataset():
  sprites = ml_collections.ConfigDict({"name": "sprites", "image_size": 64})
  p = data_pipelines.preprocessing_for(sprites)
  assert (p.size, p.crop_fraction, p.resize) == (64, 1.0, "bilinear")
  assert p.crop_box(48, 64) == (0, 8, 48, 48)
  # CLEVR (with masks): GENESIS's 192 of 240x320, nearest, to 128.
  clevr = _data(multi_object, name="clevr_with_masks", image_size=128)
  p = data_pipelines.preprocessing_for(clevr)
  assert p.crop_box(240, 320) == (24, 64, 192, 192)
  assert p.resize == "nearest_torch"
  assert p.crop_box(480, 640) == (48, 128, 384, 384)  # same proportions
  # ShapeStacks: 196 of 224, bilinear.
  p = data_pipelines.preprocessing_for(_data(shapestacks))
  assert p.crop_box(224, 224) == (14, 14, 196, 196)
  # CLEVRTEX: 0.8 of the shorter side.
  p = data_pipelines.preprocessing_for(_data(clevrtex))
  assert p.crop_box(240, 320) == (24, 64, 192, 192)
  unknown = ml_collections.ConfigDict({"name": "mine", "image_size": 32})
  p = data_pipelines.preprocessing_for(unknown)
  assert "default" in p.description and p.crop_fraction == 1.0
  x = np.arange(240 * 320 * 3, dtype=np.uint8).reshape(240, 320, 3)
  image, box = data_pipelines.preprocessing_for(clevr)(x)
  assert image.shape == (128, 128, 3) and image.dtype == np.float32
  assert box == (24, 64, 192, 192)


def test_cli_reports_a_bad_workdir(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  img = _save(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
  r = subprocess.run(
      [sys.executable, "-m", "ocjax.segment", f"--workdir={tmp_path}",
       f"--input={img}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=120)
  assert r.returncode == 1
  assert "config.json" in r.stderr and "Traceback" not in r.stderr
