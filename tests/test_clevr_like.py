"""The procedural CLEVR-like scenes: determinism, ground truth, streams."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import data_pipelines
from data_pipelines import clevr_like as cll
from data_pipelines import clevrer_like as cl
from data_pipelines import generate
from data_pipelines import video_common as vc
from test_data_utils import batches
from test_data_utils import check_contract
from test_data_utils import check_resume
from test_data_utils import check_sharding


def _config(**overrides):
  c = cll.default_config()
  c.update(dict(image_size=24, supersampling=1, num_train=12,
                num_validation=4, num_test=6))
  c.update(overrides)
  return c


def _scenes(config, split, indices):
  spec = cll.spec_from_config(config)
  return spec, [cll.render_scene(spec, split, i) for i in indices]


def test_default_config_presets_and_registry():
  c = cll.default_config()
  assert (c.image_size, c.min_objects, c.max_objects) == (64, 3, 10)
  assert c.data_dir == "" and c.content_seed == 0
  assert data_pipelines.DATASETS["clevr_like"] == "data_pipelines.clevr_like"
  six = data_pipelines.dataset_config("clevr_like", preset="clevr6")
  assert (six.name, six.min_objects, six.max_objects) == ("clevr_like", 3, 6)
  assert data_pipelines.num_examples(_config(), "test") == 6
  with pytest.raises(ValueError, match="Unknown preset"):
    cll.preset_config("clevr7")


def test_batch_contract_and_eval_padding():
  config = _config()
  (b,) = batches(config, "train", batch_size=4, num=1)
  check_contract(b, batch_size=4, size=24, valid=False)
  out = batches(config, "test", batch_size=4)
  assert [int(x["valid"].sum()) for x in out] == [4, 2]
  check_contract(out[1], batch_size=4, size=24, valid=True)
  assert not out[1]["image"][2:].any() and not out[1]["segmentation"][2:].any()


def test_determinism():
  config = _config()
  a, sa = cll.render_batch(config, "test", [0, 1, 2])
  b, sb = cll.render_batch(config, "test", [0, 1, 2])
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(sa, sb)
  assert not np.array_equal(a[0], a[1])  # Another index, another scene.
  # The evaluation stream is the split in order; its seed only shuffles.
  for seed in (0, 5):
    (first, _) = batches(config, "test", batch_size=3, seed=seed)
    np.testing.assert_array_equal(first["image"], a)
    np.testing.assert_array_equal(first["segmentation"], sa)
  # Splits and content seeds give other scenes; None follows the seed.
  v, _ = cll.render_batch(config, "validation", [0])
  assert not np.array_equal(v[0], a[0])
  c7, _ = cll.render_batch(_config(content_seed=7), "test", [0])
  assert not np.array_equal(c7[0], a[0])
  none = _config(content_seed=None)
  (n7, _) = batches(none, "test", batch_size=3, seed=7)
  np.testing.assert_array_equal(n7["image"][:1], c7)


@pytest.mark.parametrize("image_size,supersampling,preset", [
    (24, 1, "clevr10"), (32, 2, "clevr6"), (128, 1, "clevr6")])
def test_ground_truth(image_size, supersampling, preset):
  config = cll.preset_config(preset)
  config.update(dict(image_size=image_size, supersampling=supersampling))
  num = 2 if image_size > 64 else 8
  spec, scenes = _scenes(config, "train", range(num))
  assert spec.min_visible_pixels == max(
      1, round(22 * (image_size / 64) ** 2))
  az = math.radians(spec.camera_azimuth)
  axes = np.array([[-math.sin(az), math.cos(az)],
                   [-math.cos(az), -math.sin(az)]])
  for scene in scenes:
    n, seg = scene["num_objects"], scene["segmentation"]
    assert config.min_objects <= n <= config.max_objects
    assert scene["image"].shape == (image_size, image_size, 3)
    counts = np.bincount(seg.ravel(), minlength=n + 1)
    assert len(counts) == n + 1  # Labels are in 0..n ...
    assert np.all(counts[1:] >= spec.min_visible_pixels)  # ... all visible.
    objects = scene["objects"]
    assert [o["visible_pixels"] for o in objects] == counts[1:].tolist()
    for o in objects:
      assert o["shape"] in cl.SHAPES and o["material"] in cl.MATERIALS
      assert o["colour"] in cl.COLOURS and o["r"] in spec.sizes
      assert max(abs(o["x"]), abs(o["y"])) <= spec.floor_extent
    for o, p in itertools.combinations(objects, 2):
      d = np.array([o["x"] - p["x"], o["y"] - p["y"]])
      # Apart by min_distance (no interpenetration) and CLEVR's margin.
      assert np.linalg.norm(d) - o["r"] - p["r"] >= spec.min_distance
      assert np.all(np.abs(axes @ d) >= spec.margin)
    assert np.all(np.abs(scene["eye"] - cll._camera(spec)[0])
                  <= spec.camera_jitter)


def test_mask_is_where_the_object_colour_is():
  # One ray per pixel: every pixel is floor (grey) or one object's surface.
  config = _config(image_size=32, min_objects=1, max_objects=1)
  _, scenes = _scenes(config, "train", range(12))
  checked = 0
  for scene in scenes:
    (obj,) = scene["objects"]
    image = scene["image"] / 255.0
    seg = scene["segmentation"]
    floor = image[seg == 0]
    assert np.all(floor.max(-1) - floor.min(-1) < 0.03)  # Grey floor.
    if obj["material"] != "rubber" or obj["colour"] == "gray":
      continue
    # A coloured rubber object: coloured pixels are exactly its mask ...
    chroma = image.max(-1) - image.min(-1)
    np.testing.assert_array_equal(chroma > 0.07, seg == 1)
    # ... and they have its hue (shading scales the colour).
    mean = image[seg == 1].mean(0)
    colour = np.asarray(cl.COLOURS[obj["colour"]], float)
    cosine = mean @ colour / np.linalg.norm(mean) / np.linalg.norm(colour)
    assert cosine > 0.98, (obj, mean)
    checked += 1
  assert checked >= 2


def test_stream_resumes_and_shards():
  config = _config()
  check_resume(config, "train", batch_size=4, start_step=4, repeat=True)
  check_sharding(config, "train", batch_size=4, steps=2, repeat=True)


def test_generate_once_then_read(tmp_path):
  out = str(tmp_path / "clevr")
  assert generate.main([
      "clevr_like", f"--out={out}", "--episodes=3", "--splits=test",
      "--workers=1", "--set", "image_size=16", "--set", "supersampling=1",
      "--no_progress"]) == 0
  on_the_fly = _config(image_size=16, num_test=3)
  stored = _config(image_size=16, num_test=3, data_dir=out)
  assert data_pipelines.num_examples(stored, "test") == 3
  a = batches(on_the_fly, "test", batch_size=2)
  b = batches(stored, "test", batch_size=2)
  assert len(a) == len(b) == 2
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)
  vc.sharded_episodes.cache_clear()


@pytest.mark.parametrize("field,value,match", [
    ("image_size", 4, r"data\.image_size=4.*>= 8"),
    ("min_objects", 0, r"data\.min_objects"),
    ("max_objects", 2, r"data\.max_objects=2.*min_objects=3"),
    ("shapes", ("sphere", "torus"), r"data\.shapes.*subset"),
    ("sizes", (), r"data\.sizes"),
    ("floor_extent", 0.1, r"data\.floor_extent"),
    ("min_visible_pixels", -1, r"data\.min_visible_pixels"),
    ("supersampling", 0, r"data\.supersampling"),
    ("camera_jitter", -0.5, r"data\.camera_jitter"),
    ("field_of_view", 200.0, r"data\.field_of_view"),
    ("num_train", 0, r"data\.num_train"),
])
def test_bad_config_raises(field, value, match):
  config = _config()
  config[field] = value
  with pytest.raises(ValueError, match=match):
    data_pipelines.get_dataset(config, "train", batch_size=2, seed=0,
                               process_index=0, process_count=1)


def test_impossible_scene_names_the_fields():
  config = _config(min_objects=30, max_objects=30, floor_extent=0.5)
  with pytest.raises(RuntimeError, match="max_objects"):
    cll.render_batch(config, "train", [0])
